"""The device backend of `kernel_statistics`: the same solves as TF ops on the kernel's device.

For a kernel on a GPU: the float64 copy, the drift, the Cholesky factor (cuSOLVER) and the
Lanczos loops (`lanczos.lanczos_graph`, one compiled call per solve) stay on the device, and
only scalars come back. Each function here compiles with `jit_compile=True` (tests run
that on the CPU), which is what an XLA-only device needs, except the optional full
eigvalsh (see DeviceFunctions). `should_stop` is polled between
solves: on a GPU a whole Lanczos solve on an 18,000² kernel takes milliseconds.
"""

import math

import numpy as np
import tensorflow as tf

from lplr_tf.ntk import interrupt, lanczos, spectrum, statistics_host
from lplr_tf.ntk.statistics_result import finish, warn_if_not_psd

_DTYPE = tf.float64


def _symmetrized(matrix):
    return 0.5 * (matrix + tf.transpose(matrix))


class DeviceFunctions:
    """The compiled pieces, one tf.function each (traced per shape and static option)."""

    def __init__(self, jit_compile):
        compile_ = lambda fn: tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)
        self._static = jit_compile
        self.prepare = compile_(self._prepare)
        self.difference = compile_(self._difference)
        self.extreme = compile_(self._extreme)
        self.cholesky = compile_(self._cholesky)
        self.inverse_extreme = compile_(self._inverse_extreme)
        # Never XLA: its Jacobi eigensolver was measured at ~1e-8·‖K‖ absolute accuracy on
        # CPU (relative error 1e-3 on eigenvalues of 1e-5); TF's LAPACK/cuSOLVER kernel is
        # accurate to rounding. (Inside Lanczos only extreme Ritz values of the small
        # tridiagonal matrix are used, which XLA's eigh resolves to that relative accuracy.)
        self.eigenvalues = tf.function(tf.linalg.eigvalsh, jit_compile=False)

    @staticmethod
    def _prepare(kernel, scale):
        """K = scale·kernel in float64, symmetrized; its trace and squared Frobenius norm."""
        matrix = _symmetrized(tf.cast(kernel, _DTYPE) * scale)
        return matrix, tf.linalg.trace(matrix), tf.reduce_sum(tf.square(matrix))

    @staticmethod
    def _difference(kernel, kernel0, scale):
        """D = scale·(kernel − kernel0) in float64, symmetrized; ‖D‖_F² and ‖scale·K₀‖_F²."""
        reference = tf.cast(kernel0, _DTYPE) * scale
        difference = _symmetrized(tf.cast(kernel, _DTYPE) * scale - reference)
        return (
            difference,
            tf.reduce_sum(tf.square(difference)),
            tf.reduce_sum(tf.square(reference)),
        )

    def _extreme(self, matrix, start, tolerance, which, max_iterations):
        return lanczos.lanczos_graph(
            lambda v: tf.linalg.matvec(matrix, v),
            start,
            which=which,
            tolerance=tolerance,
            max_iterations=max_iterations,
            static_shapes=self._static,
        )

    @staticmethod
    def _cholesky(matrix, shift):
        """L with L Lᵀ = matrix − shift·I, and whether it succeeded (finite, positive diagonal)."""
        factor = tf.linalg.cholesky(matrix - shift * tf.eye(tf.shape(matrix)[0], dtype=_DTYPE))
        diagonal = tf.linalg.diag_part(factor)
        return factor, tf.reduce_all(tf.math.is_finite(diagonal) & (diagonal > 0))

    def _inverse_extreme(self, factor, start, tolerance, max_iterations):
        return lanczos.lanczos_graph(
            lambda v: tf.linalg.cholesky_solve(factor, v[:, None])[:, 0],
            start,
            which="largest",
            tolerance=tolerance,
            max_iterations=max_iterations,
            static_shapes=self._static,
        )


_FUNCTIONS = {False: DeviceFunctions(False), True: DeviceFunctions(True)}


def device_statistics(
    kernel,
    kernel0,
    *,
    scale,
    full_spectrum,
    quantities,
    tolerance,
    max_iterations,
    seed,
    should_stop,
    jit_compile,
    start_vectors,
):
    """`kernel_statistics` with backend="device" (arguments as there)."""
    functions = _FUNCTIONS[bool(jit_compile)]
    kernel = tf.convert_to_tensor(kernel)
    size = int(kernel.shape[0])
    iterations, converged, fields = {}, True, {}
    tolerance = tf.constant(tolerance, _DTYPE)
    m = int(min(max_iterations, size))
    scale_t = tf.constant(scale, _DTYPE)
    previous, vectors = dict(start_vectors or {}), {}

    def start(name, k):
        random = tf.random.stateless_normal((size,), seed=[seed, k], dtype=_DTYPE)
        warm = previous.get(name)
        if warm is None or tuple(warm.shape) != (size,):
            return random
        warm = tf.cast(warm, _DTYPE)
        return warm / tf.norm(warm) + statistics_host.WARM_NOISE * random / tf.norm(random)

    lambda_min = lambda_max = trace = eigenvalues = method = None
    # On the kernel's GPU; a host tensor (backend="device" asked for explicitly) goes to the
    # default device, TF's first GPU when there is one.
    device = kernel.device if "GPU" in (kernel.device or "").upper() else None
    with tf.device(device):
        if "kernel_drift" in quantities:
            interrupt.check(should_stop, "kernel drift")
            difference, drift_sq, reference_sq = functions.difference(
                kernel, tf.convert_to_tensor(kernel0), scale_t
            )
            drift_sq, reference_sq = float(drift_sq), float(reference_sq)
            fields["kernel_drift"] = (
                math.sqrt(drift_sq / reference_sq) if reference_sq > 0 else None
            )
            if drift_sq == 0:
                fields["kernel_drift_op"] = 0.0
            else:
                interrupt.check(should_stop, "kernel drift")
                result = functions.extreme(
                    difference, start("kernel_drift_op", 0), tolerance, "largest_magnitude", m
                )
                vectors["kernel_drift_op"] = result["vector"]
                fields["kernel_drift_op"] = abs(float(result["value"]))
                iterations["kernel_drift_op"] = int(result["iterations"])
                converged &= bool(result["converged"])
            del difference
        if full_spectrum or "lambda_min" in quantities or "lambda_max" in quantities:
            interrupt.check(should_stop, "kernel statistics")
            matrix, trace, squared = functions.prepare(kernel, scale_t)
            trace, squared = float(trace), float(squared)
            if not (math.isfinite(trace) and math.isfinite(squared)):
                raise ValueError(
                    "kernel_statistics: the kernel contains NaN or inf entries; expected a "
                    "finite matrix. Check the model's outputs (a diverged run gives "
                    "non-finite kernels)."
                )
            rtol = spectrum.default_psd_rtol(kernel.dtype.as_numpy_dtype, size)
            if full_spectrum:
                interrupt.check(should_stop, "eigvalsh")
                eigenvalues = functions.eigenvalues(matrix).numpy()
                lambda_min, lambda_max = float(eigenvalues[0]), float(eigenvalues[-1])
                method = "eigvalsh"
            if not full_spectrum and "lambda_max" in quantities:
                interrupt.check(should_stop, "lambda_max")
                top = functions.extreme(matrix, start("lambda_max", 1), tolerance, "largest", m)
                vectors["lambda_max"] = top["vector"]
                lambda_max = float(top["value"])
                iterations["lambda_max"] = int(top["iterations"])
                converged &= bool(top["converged"])
            if not full_spectrum and "lambda_min" in quantities:
                bound = math.sqrt(squared) if lambda_max is None else lambda_max
                lambda_min, bottom, method = _lambda_min(
                    functions,
                    matrix,
                    bound,
                    rtol,
                    start("lambda_min", 2),
                    tolerance,
                    m,
                    should_stop,
                )
                if bottom is not None:
                    vectors["lambda_min"] = bottom["vector"]
                    iterations["lambda_min"] = int(bottom["iterations"])
                    converged &= bool(bottom["converged"])
            if lambda_min is not None:
                warn_if_not_psd(
                    lambda_min, math.sqrt(squared) if lambda_max is None else lambda_max, rtol
                )
    return finish(
        lambda_min,
        lambda_max,
        trace,
        eigenvalues=eigenvalues,
        iterations=iterations,
        converged=bool(converged),
        method=method,
        backend="device",
        vectors=vectors,
        **fields,
    )


def _lambda_min(functions, matrix, bound, rtol, start, tolerance, m, should_stop):
    """λ_min by shift-invert Lanczos on a device Cholesky factor (shifts as on the host)."""
    size = int(matrix.shape[0])
    bound = max(abs(bound), np.finfo(np.float64).tiny)
    for shift in (-size * np.finfo(np.float64).eps * bound, -2.0 * rtol * bound):
        interrupt.check(should_stop, "cholesky")
        try:
            factor, ok = functions.cholesky(matrix, tf.constant(shift, _DTYPE))
            ok = bool(ok)
        except tf.errors.InvalidArgumentError:  # TF's CPU kernel raises; GPU/XLA: NaN
            ok = False
        if ok:
            interrupt.check(should_stop, "lambda_min")
            bottom = functions.inverse_extreme(factor, start, tolerance, m)
            return shift + 1.0 / float(bottom["value"]), bottom, "cholesky"
    interrupt.check(should_stop, "eigvalsh")
    return float(functions.eigenvalues(matrix)[0]), None, "eigvalsh"
