"""Scalar statistics of a kernel K = scale·Θ (and of its drift K − K₀) without an eigvalsh.

What a probe reports, at the cost of one Cholesky factorization and a few dozen O(N²)
matrix-vector products instead of a full eigendecomposition (`eigvalsh` tridiagonalizes:
~4N³/3 flops plus the QR sweeps; and ‖K − K₀‖₂ by a full SVD another ~10N³):

* λ_max(K): Lanczos on Kv.
* ‖K − K₀‖₂: Lanczos on (K − K₀)v for the eigenvalue of largest magnitude (the difference
  of two symmetric kernels is symmetric and indefinite: its 2-norm is max |λ|).
* ‖K − K₀‖_F / ‖K₀‖_F and trace(K): one pass over the entries.
* λ_min(K), exact: a Cholesky factor K − σI = L Lᵀ with σ ≤ 0 just below zero (N³/3
  flops; a failure proves λ_min ≤ σ, and σ is lowered once to the float32 rounding level),
  then Lanczos on (K − σI)⁻¹ = L⁻ᵀL⁻¹ (two triangular solves per product), whose largest
  eigenvalue is 1/(λ_min − σ).

All solves run in float64 on a symmetric matrix, to the relative `tolerance` of the
Lanczos convergence test (`lanczos`); with the default 1e-8 the relative error of λ_min is
below 1e-6 up to condition numbers of 1e6 and beyond (tests compare with `eigvalsh`). The
host backend uses the symmetric matrix of K's lower triangle (what LAPACK's Cholesky and
BLAS's symv read: no symmetrizing pass), the device backend (K + Kᵀ)/2; the two coincide
for the exactly symmetric kernels `empirical_ntk` assembles, and differ by the asymmetry
(float32 rounding) otherwise.

Where: `backend="host"` runs on NumPy/LAPACK in one float64 workspace of N² floats, reused
for K − K₀, K and L in turn, every step bounded and interruptible (`should_stop`).
`backend="device"` keeps everything on the kernel's device as TF ops (the kernel comes back
only as scalars); it is meant for GPUs (float64, cuSOLVER). "auto" picks "device" for a
kernel on a GPU and "host" otherwise: on a CPU the host *is* the device and LAPACK's
multithreaded Cholesky was measured 5× faster than TF's; a TPU has no float64.

Full eigenvalues (`full_spectrum=True`) cost one float64 `eigvalsh` (in place on the
workspace): a TensorBoard histogram of the spectrum should ask for them only every k-th
probe (or at the first and last probe), not at every probe.
"""

import contextlib
import dataclasses
import math
import warnings

import numpy as np
import scipy.linalg
import tensorflow as tf
import threadpoolctl

from lplr_tf.ntk import cholesky, interrupt, lanczos, spectrum

BACKENDS = ("auto", "host", "device")
QUANTITIES = ("lambda_min", "lambda_max", "kernel_drift")
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
# Bytes of one chunk of rows when the host path converts or reduces the kernel.
_CHUNK_BYTES = 1 << 22


@dataclasses.dataclass(frozen=True)
class KernelStatistics:
    """Scalars of the (already scaled) kernel K and of its drift from K₀.

    Fields of quantities that were not asked for (`quantities`) are None.

    Attributes:
      lambda_min: Smallest eigenvalue of K (exact to the tolerance, or an upper estimate on
        the matrix-free path: see `estimates`).
      lambda_max: Largest eigenvalue of K.
      trace: trace(K).
      condition_number: lambda_max / lambda_min; inf when lambda_min <= 0.
      effective_rank: trace / lambda_max.
      kernel_drift: ‖K − K₀‖_F / ‖K₀‖_F, None without K₀.
      kernel_drift_op: ‖K − K₀‖₂, None without K₀.
      eigenvalues: float64 (N,) ascending when full_spectrum was asked, else None.
      iterations: Matrix-vector products per solve, e.g. {"lambda_max": 14, ...}.
      converged: Whether every Lanczos solve passed its convergence test.
      method: How λ_min was found: "cholesky" (shift-invert), "eigvalsh" (full spectrum,
        or the fallback for an indefinite kernel) or "matrix_free" (Lanczos on NTK-vector
        products); None when λ_min was not asked for.
      backend: "host" or "device", where the solves ran.
      estimates: Names of the fields that are estimates rather than exact to tolerance.
    """

    lambda_min: float | None
    lambda_max: float | None
    trace: float | None
    condition_number: float | None
    effective_rank: float | None
    kernel_drift: float | None = None
    kernel_drift_op: float | None = None
    eigenvalues: np.ndarray | None = None
    iterations: dict = dataclasses.field(default_factory=dict)
    converged: bool = True
    method: str | None = "cholesky"
    backend: str = "host"
    estimates: tuple = ()


def finish(lambda_min, lambda_max, trace, **fields):
    """KernelStatistics from the three defining numbers (condition, effective rank).

    Any of them may be None (not computed); what depends on it is None too.
    """
    lambda_min, lambda_max, trace = (
        None if v is None else float(v) for v in (lambda_min, lambda_max, trace)
    )
    condition = effective_rank = None
    if lambda_min is not None and lambda_max is not None:
        condition = lambda_max / lambda_min if lambda_min > 0 else math.inf
    if trace is not None and lambda_max is not None:
        effective_rank = trace / lambda_max if lambda_max > 0 else 0.0
    return KernelStatistics(lambda_min, lambda_max, trace, condition, effective_rank, **fields)


def kernel_statistics(
    kernel,
    kernel0=None,
    *,
    scale,
    full_spectrum=False,
    quantities=None,
    tolerance=1e-8,
    max_iterations=128,
    backend="auto",
    seed=0,
    should_stop=None,
    jit_compile=False,
):
    """λ_min, λ_max, trace, condition number of K = scale·kernel, and its drift from K₀.

    Args:
      kernel: Θ from `empirical_ntk`, (N, N): a NumPy array (what `as_numpy=True` returns
        on the host: no copy is made of it) or a tf.Tensor (on a GPU: solved there).
      kernel0: Θ₀ at initialization, same shape and scale convention, or None (no drift).
      scale: Multiplies both kernels first; 1/n turns Θ into K = Θ/n.
      full_spectrum: Also return all eigenvalues (one float64 eigvalsh; see module doc).
      quantities: Which of QUANTITIES to compute ("lambda_min", "lambda_max",
        "kernel_drift"); default all of them ("kernel_drift" when kernel0 is given). The
        trace comes with either eigenvalue. Fields not computed are None.
      tolerance: Relative tolerance of the Lanczos convergence tests.
      max_iterations: Cap on matrix-vector products per solve.
      backend: "auto", "host" or "device" (module docstring).
      seed: Seed of the Lanczos start vectors.
      should_stop: Optional callable polled between steps; True raises ProbeInterrupted.
      jit_compile: XLA-compile the device functions ("device" backend only).

    Returns:
      KernelStatistics (float64 scalars as Python floats).

    Raises:
      ValueError: a non-square or non-finite kernel, mismatched K₀, or a bad option.
      ProbeInterrupted: should_stop() returned True.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"{_CALLER}: backend={backend!r}; expected one of {BACKENDS}. Use 'auto' "
            "(device on a GPU, host otherwise)."
        )
    if not (isinstance(scale, (int, float, np.floating)) and scale > 0 and math.isfinite(scale)):
        raise ValueError(
            f"{_CALLER}: scale={scale!r}; expected a positive finite number (1/n for K = Θ/n)."
        )
    if not 0 < tolerance < 1 or int(max_iterations) < 1:
        raise ValueError(
            f"{_CALLER}: tolerance={tolerance!r}, max_iterations={max_iterations!r}; "
            "expected 0 < tolerance < 1 and max_iterations >= 1."
        )
    _check_square(kernel, "kernel")
    if kernel0 is not None:
        _check_square(kernel0, "kernel0")
        if tuple(kernel0.shape) != tuple(kernel.shape):
            raise ValueError(
                f"{_CALLER}: kernel0 has shape {tuple(kernel0.shape)} but kernel has "
                f"{tuple(kernel.shape)}; expected the same (N, N). Pass the initial kernel "
                "of the same probe set and output mode."
            )
    if quantities is None:
        quantities = QUANTITIES if kernel0 is not None else QUANTITIES[:2]
    quantities = tuple(quantities)
    if not set(quantities) <= set(QUANTITIES) or ("kernel_drift" in quantities and kernel0 is None):
        raise ValueError(
            f"{_CALLER}: quantities={quantities!r}; expected a subset of {QUANTITIES}, "
            "with 'kernel_drift' only when kernel0 is given."
        )
    if backend == "auto":
        backend = "device" if _on_gpu(kernel) else "host"
    options = dict(
        scale=float(scale),
        full_spectrum=full_spectrum,
        quantities=quantities,
        tolerance=float(tolerance),
        max_iterations=int(max_iterations),
        seed=seed,
    )
    if backend == "device":
        from lplr_tf.ntk import statistics_device  # TF graph code, only needed here

        return statistics_device.device_statistics(
            kernel, kernel0, jit_compile=jit_compile, should_stop=should_stop, **options
        )
    small = int(kernel.shape[0]) <= SINGLE_THREAD_ROWS
    with _BLAS.limit(limits=1, user_api="blas") if small else contextlib.nullcontext():
        return _host_statistics(kernel, kernel0, should_stop=should_stop, **options)


def _check_square(matrix, name):
    shape = tuple(matrix.shape)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(
            f"{_CALLER}: {name} has shape {shape}; expected a non-empty square matrix "
            "(N, N), e.g. Θ from empirical_ntk."
        )


def _on_gpu(kernel):
    return isinstance(kernel, tf.Tensor) and "GPU" in (kernel.device or "").upper()


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


def _start(size, rng):
    return rng.standard_normal(size)


def _host_statistics(
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
):
    matrix = _host_array(kernel)
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
                _start(size, rng),
                which="largest_magnitude",
                stage="kernel drift",
                **solve,
            )
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
                _start(size, rng),
                which="largest",
                stage="lambda_max",
                **solve,
            )
            lambda_max = top.value
            iterations["lambda_max"] = top.iterations
            converged &= top.converged
        if not full_spectrum and "lambda_min" in quantities:
            # ‖K‖_F >= λ_max scales the Cholesky shifts when λ_max was not asked for.
            bound = math.sqrt(squared) if lambda_max is None else lambda_max
            lambda_min, bottom, method = _host_lambda_min(
                workspace, matrix, scale, bound, rtol, rng, should_stop, solve
            )
            if bottom is not None:
                iterations["lambda_min"] = bottom.iterations
                converged &= bottom.converged
        if lambda_min is not None:
            _warn_if_not_psd(
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
        **fields,
    )


def _host_lambda_min(workspace, matrix, scale, lambda_max, rtol, rng, should_stop, solve):
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
        block = cholesky.DEFAULT_BLOCK if size > 4 * cholesky.DEFAULT_BLOCK else size
        if cholesky.cholesky_in_place(workspace, block_size=block, should_stop=should_stop):
            result = lanczos.lanczos(
                cholesky.inverse_operator(workspace),
                _start(size, rng),
                which="largest",
                stage="lambda_min",
                **solve,
            )
            return shift + 1.0 / result.value, result, "cholesky"
        _fill(workspace, matrix, scale, should_stop, "kernel statistics")
    interrupt.check(should_stop, "eigvalsh")
    eigenvalues = _eigenvalues_in_place(workspace)
    return float(eigenvalues[0]), None, "eigvalsh"


def _warn_if_not_psd(lambda_min, lambda_max, rtol):
    largest = max(abs(lambda_min), abs(lambda_max)) or 1.0
    if lambda_min < -rtol * largest:
        warnings.warn(
            f"{_CALLER}: the kernel is not positive semi-definite beyond rounding: "
            f"lambda_min={lambda_min:.3e}, lambda_max={lambda_max:.3e} (relative "
            f"{lambda_min / largest:.2e} < -{rtol:.1e}). An NTK J Jᵀ is PSD; expect a bug or "
            "a kernel not computed in float32/float64 with TF32 off.",
            RuntimeWarning,
            stacklevel=3,
        )
