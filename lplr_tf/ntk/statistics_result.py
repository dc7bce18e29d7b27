"""What `kernel_statistics` returns: the KernelStatistics record and its shared helpers."""

import dataclasses
import math
import warnings

import numpy as np

_CALLER = "kernel_statistics"


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
      vectors: The unit Ritz vectors of the solves ("lambda_max", "lambda_min",
        "kernel_drift_op"; float64 (N,), NumPy on the host, tensors on the device), to pass
        as `start_vectors` to the next probe's call.
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
    vectors: dict = dataclasses.field(default_factory=dict, repr=False)


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


def warn_if_not_psd(lambda_min, lambda_max, rtol):
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
