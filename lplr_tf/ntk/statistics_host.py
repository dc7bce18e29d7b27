"""The host backend of `kernel_statistics`: NumPy/LAPACK in one float64 workspace.

The workspace (N² float64, the only N² allocation) holds K − K₀, then K, then its Cholesky
factor L, in turn. Every step is bounded and polls `should_stop`: conversions by row chunks
of a few MiB, the Cholesky by panels (`cholesky`), Lanczos by matrix-vector products. The
matrix is the symmetric one of K's lower triangle: what LAPACK's Cholesky and BLAS's symv
read, so no symmetrizing pass is needed. Small kernels run on single-threaded BLAS.
"""

import contextlib
import math

import numpy as np
import scipy.linalg
import tensorflow as tf
import threadpoolctl

from lplr_tf.ntk import cholesky, interrupt, lanczos, spectrum
from lplr_tf.ntk.statistics_result import finish, warn_if_not_psd

_CALLER = "kernel_statistics"
# Kernels up to this many rows are solved with single-threaded BLAS. Measured on 2 shared
# cores with TF in the process: the whole statistics of a 256² kernel took 6 ms on one
# thread against 175 ms on two (NumPy and SciPy each load an OpenBLAS with its own spinning
# thread pool, and a Lanczos iteration alternates between them); a 1024² Cholesky 17
# against 58 ms; at 8000², 2.7 against 3.6 s.
SINGLE_THREAD_ROWS = 4096
# The BLAS libraries of this process, found once at import (a scan of the loaded shared
# libraries takes ~5 ms with TF loaded; limiting threads through it takes ~10 µs).
_BLAS = threadpoolctl.ThreadpoolController()
# Kernels up to this many rows are factored by one in-place LAPACK call (about a second at
# 4096² on one loaded core: interruptible soon enough), larger ones in bounded panels.
SINGLE_CALL_ROWS = 4096
# Relative size of the random component mixed into a warm start (see _start).
WARM_NOISE = 0.01
# Bytes of one chunk of rows when the host path converts or reduces the kernel.
_CHUNK_BYTES = 1 << 22


def _host_array(matrix):
    """A NumPy view of the kernel (a tf.Tensor is copied once: TF → NumPy always copies)."""
    return matrix.numpy() if isinstance(matrix, tf.Tensor) else np.asarray(matrix)


def _row_chunks(size):
    rows = max(1, _CHUNK_BYTES // (8 * size))
    return [slice(start, min(start + rows, size)) for start in range(0, size, rows)]


def _fill(workspace, matrix, scale, should_stop, stage, subtract=None):
    """workspace ← scale·(matrix − subtract) in float64, one cache-sized chunk at a time.

    Returns:
      (‖workspace‖_F², ‖scale·subtract‖_F²), accumulated while each chunk is in cache.
    """
    written, subtracted = 0.0, 0.0
    chunks = _row_chunks(workspace.shape[0])
    buffer = None if subtract is None else np.empty((chunks[0].stop, workspace.shape[1]))
    for rows in chunks:
        interrupt.check(should_stop, stage)
        out = workspace[rows]
        np.multiply(matrix[rows], scale, out=out, dtype=np.float64)
        if subtract is not None:
            reference = buffer[: rows.stop - rows.start]
            np.multiply(subtract[rows], scale, out=reference, dtype=np.float64)
            subtracted += float(np.vdot(reference, reference))
            out -= reference
        written += float(np.vdot(out, out))
    return written, subtracted


def _eigenvalues_in_place(matrix):
    """All eigenvalues (ascending) of the symmetric matrix of `matrix`'s lower triangle.

    LAPACK's syevd on the Fortran-ordered view, overwriting it (no N² copy).
    """
    return scipy.linalg.eigh(
        matrix.T,
        lower=False,
        eigvals_only=True,
        overwrite_a=True,
        check_finite=False,
        driver="evd",
    )


def _symmetric_product(matrix):
    """v ↦ S v for the symmetric S whose lower triangle is `matrix`'s (BLAS dsymv).

    Reading one triangle halves the memory traffic of a product, and defines the one
    symmetric matrix that the Cholesky factorization (lower triangle) also sees.
    """
    transposed = matrix.T  # Fortran-ordered view: its upper triangle is our lower one

    def apply(vector):
        return scipy.linalg.blas.dsymv(1.0, transposed, vector, lower=0)

    return apply


def _start(size, rng, previous=None):
    """A seeded random start, or the previous probe's Ritz vector plus a little of it.

    The random part (WARM_NOISE of the norm) keeps every eigenvector in the Krylov space,
    so that one that overtook the previous extreme is still found.
    """
    random = rng.standard_normal(size)
    previous = None if previous is None else np.asarray(previous, dtype=np.float64)
    if previous is None or previous.shape != (size,) or not np.linalg.norm(previous) > 0:
        return random
    return previous / np.linalg.norm(previous) + WARM_NOISE * random / np.linalg.norm(random)


def host_statistics(kernel, kernel0, **options):
    """`kernel_statistics` with backend="host" (arguments as there)."""
    small = int(kernel.shape[0]) <= SINGLE_THREAD_ROWS
    with _BLAS.limit(limits=1, user_api="blas") if small else contextlib.nullcontext():
        return _statistics(kernel, kernel0, **options)


def _statistics(
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
    start_vectors,
):
    matrix = _host_array(kernel)
    starts, vectors = dict(start_vectors or {}), {}
    size = matrix.shape[0]
    rng = np.random.default_rng(seed)
    workspace = np.empty((size, size), dtype=np.float64)
    iterations, converged, fields = {}, True, {}
    solve = dict(tolerance=tolerance, max_iterations=max_iterations, should_stop=should_stop)
    if "kernel_drift" in quantities:
        reference = _host_array(kernel0)
        drift_sq, reference_sq = _fill(
            workspace, matrix, scale, should_stop, "kernel drift", subtract=reference
        )
        fields["kernel_drift"] = math.sqrt(drift_sq / reference_sq) if reference_sq > 0 else None
        if drift_sq == 0:
            fields["kernel_drift_op"] = 0.0
        else:
            result = lanczos.lanczos(
                _symmetric_product(workspace),
                _start(size, rng, starts.get("kernel_drift_op")),
                which="largest_magnitude",
                stage="kernel drift",
                return_vector=True,
                **solve,
            )
            vectors["kernel_drift_op"] = result.vector
            fields["kernel_drift_op"] = abs(result.value)
            iterations["kernel_drift_op"] = result.iterations
            converged &= result.converged
    lambda_min = lambda_max = trace = eigenvalues = method = None
    if full_spectrum or "lambda_min" in quantities or "lambda_max" in quantities:
        squared, _ = _fill(workspace, matrix, scale, should_stop, "kernel statistics")
        trace = float(np.sum(np.diagonal(workspace)))
        if not (math.isfinite(squared) and math.isfinite(trace)):
            raise ValueError(
                f"{_CALLER}: the kernel contains NaN or inf entries; expected a finite "
                "matrix. Check the model's outputs (a diverged run gives non-finite kernels)."
            )
        rtol = spectrum.default_psd_rtol(matrix.dtype, size)
        if full_spectrum:
            interrupt.check(should_stop, "eigvalsh")
            eigenvalues = _eigenvalues_in_place(workspace)
            lambda_min, lambda_max = float(eigenvalues[0]), float(eigenvalues[-1])
            method = "eigvalsh"
        if not full_spectrum and "lambda_max" in quantities:
            top = lanczos.lanczos(
                _symmetric_product(workspace),
                _start(size, rng, starts.get("lambda_max")),
                which="largest",
                stage="lambda_max",
                return_vector=True,
                **solve,
            )
            vectors["lambda_max"] = top.vector
            lambda_max = top.value
            iterations["lambda_max"] = top.iterations
            converged &= top.converged
        if not full_spectrum and "lambda_min" in quantities:
            # ‖K‖_F >= λ_max scales the Cholesky shifts when λ_max was not asked for.
            bound = math.sqrt(squared) if lambda_max is None else lambda_max
            start = _start(size, rng, starts.get("lambda_min"))
            lambda_min, bottom, method = _host_lambda_min(
                workspace, matrix, scale, bound, rtol, start, should_stop, solve
            )
            if bottom is not None:
                vectors["lambda_min"] = bottom.vector
                iterations["lambda_min"] = bottom.iterations
                converged &= bottom.converged
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
        backend="host",
        vectors=vectors,
        **fields,
    )


def _host_lambda_min(workspace, matrix, scale, lambda_max, rtol, start, should_stop, solve):
    """λ_min by shift-invert Lanczos on the Cholesky factor of K − σI, in the workspace.

    The first shift σ = −N·ε₆₄·λ_max factors any K whose λ_min is above float64 rounding;
    when it fails (a singular or float32-rounded kernel), σ = −2·rtol·λ_max, the PSD rounding
    level of the input. A second failure means a kernel indefinite beyond rounding (a bug
    signal): the full float64 eigvalsh then gives λ_min, and the caller warns.
    """
    size = workspace.shape[0]
    scale_max = max(abs(lambda_max), np.finfo(np.float64).tiny)
    for shift in (-size * np.finfo(np.float64).eps * scale_max, -2.0 * rtol * scale_max):
        workspace.flat[:: size + 1] -= shift
        block = size if size <= SINGLE_CALL_ROWS else cholesky.DEFAULT_BLOCK
        if cholesky.cholesky_in_place(workspace, block_size=block, should_stop=should_stop):
            result = lanczos.lanczos(
                cholesky.inverse_operator(workspace),
                start,
                which="largest",
                stage="lambda_min",
                return_vector=True,
                **solve,
            )
            return shift + 1.0 / result.value, result, "cholesky"
        _fill(workspace, matrix, scale, should_stop, "kernel statistics")
    interrupt.check(should_stop, "eigvalsh")
    eigenvalues = _eigenvalues_in_place(workspace)
    return float(eigenvalues[0]), None, "eigvalsh"
