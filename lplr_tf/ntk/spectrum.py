"""Spectra of NTK matrices: a dense float64 eigensolve, and the summary the probes report.

The kernel is symmetrized, (K + Kᵀ)/2, and diagonalized in float64 (a float32 eigensolve
loses the small eigenvalues that set the PL constant μ = λ_min(K)). Whether the caller
passes Θ or K = Θ/n is up to them; `scale` multiplies the kernel first (scale = 1/n turns
Θ into K). The matrix-free counterpart, for kernels too large to form, is
`matfree.matrix_free_spectrum`.

Effective rank is defined as trace / λ_max: the number of eigenvalues of size λ_max that
would make up the trace (1 for a rank-one kernel, d for a multiple of the identity). It
needs no eigendecomposition, so the dense and matrix-free paths report the same quantity.
"""

import dataclasses
import warnings

import numpy as np


@dataclasses.dataclass(frozen=True)
class NTKSpectrum:
    """Summary of the spectrum of a symmetric PSD kernel (already scaled as requested).

    Attributes:
      lambda_min: Smallest eigenvalue (an upper estimate of it on the matrix-free path).
      lambda_max: Largest eigenvalue.
      condition_number: lambda_max / lambda_min; inf when lambda_min <= 0.
      trace: Sum of the eigenvalues (a Hutchinson estimate on the matrix-free path).
      effective_rank: trace / lambda_max (see the module docstring).
      eigenvalues: float64 (d,), ascending; None on the matrix-free path.
      eigenvectors: float64 (d, d), column k for eigenvalues[k]; None unless requested.
      method: "dense" or "lanczos".
    """

    lambda_min: float
    lambda_max: float
    condition_number: float
    trace: float
    effective_rank: float
    eigenvalues: np.ndarray | None = None
    eigenvectors: np.ndarray | None = None
    method: str = "dense"


def summarize(lambda_min, lambda_max, trace, **kwargs):
    """An NTKSpectrum from its three defining numbers."""
    lambda_min, lambda_max, trace = float(lambda_min), float(lambda_max), float(trace)
    condition = lambda_max / lambda_min if lambda_min > 0 else float("inf")
    effective_rank = trace / lambda_max if lambda_max > 0 else 0.0
    return NTKSpectrum(lambda_min, lambda_max, condition, trace, effective_rank, **kwargs)


def default_psd_rtol(dtype, dim):
    """Tolerance on λ_min/λ_max below zero that still counts as PSD rounding.

    A Gram matrix computed in precision ε has eigenvalue errors of order ε·√d·λ_max.
    """
    eps = np.finfo(dtype).eps if np.issubdtype(dtype, np.floating) else np.finfo(float).eps
    return max(10.0 * eps * np.sqrt(dim), 1e-12)


def ntk_spectrum(kernel, *, scale=1.0, return_eigenvectors=False, psd_rtol=None):
    """Float64 eigendecomposition of a symmetric kernel, summarized.

    Args:
      kernel: Square array-like (d, d), e.g. Θ from `empirical_ntk` ("full": d = n·O) or
        an already normalized K.
      scale: Multiplies the kernel first; 1/n turns Θ into K = Θ/n.
      return_eigenvectors: Also return the (d, d) float64 eigenvectors.
      psd_rtol: Eigenvalues below -psd_rtol·max|λ| trigger a warning (the kernel is not
        PSD beyond rounding). Default: 10·ε·√d for the input dtype's ε.

    Returns:
      NTKSpectrum with float64 eigenvalues sorted ascending.

    Raises:
      ValueError: the kernel is not a finite square matrix.
    """
    matrix = np.asarray(kernel)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(
            f"ntk_spectrum: kernel has shape {matrix.shape}; expected a non-empty square "
            "matrix (d, d). Pass output_mode='full' or 'trace' kernels, not flattened ones."
        )
    input_dtype = matrix.dtype
    matrix = matrix.astype(np.float64) * float(scale)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(
            "ntk_spectrum: kernel contains NaN or inf entries; expected a finite matrix. "
            "Check the model's outputs (a diverged run gives non-finite kernels)."
        )
    dim = matrix.shape[0]
    rtol = default_psd_rtol(input_dtype, dim) if psd_rtol is None else float(psd_rtol)
    scale_abs = float(np.max(np.abs(matrix))) or 1.0
    asymmetry = float(np.max(np.abs(matrix - matrix.T))) / scale_abs
    matrix = 0.5 * (matrix + matrix.T)
    if return_eigenvectors:
        eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    else:
        eigenvalues, eigenvectors = np.linalg.eigvalsh(matrix), None
    largest = float(np.max(np.abs(eigenvalues))) or 1.0
    if eigenvalues[0] < -rtol * largest or asymmetry > rtol * np.sqrt(dim):
        warnings.warn(
            f"ntk_spectrum: the kernel is not symmetric positive semi-definite beyond "
            f"rounding: lambda_min={eigenvalues[0]:.3e}, max|lambda|={largest:.3e} "
            f"(relative {eigenvalues[0] / largest:.2e} < -{rtol:.1e}), relative asymmetry "
            f"{asymmetry:.1e}. An NTK J Jᵀ is PSD; expect a bug or a kernel not computed "
            "in float32/float64 with TF32 off.",
            RuntimeWarning,
            stacklevel=2,
        )
    return summarize(
        eigenvalues[0],
        eigenvalues[-1],
        float(np.trace(matrix)),
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        method="dense",
    )


def linearized_loss_curve(kernel0, residual0, learning_rate, steps, n):
    """Kernel-regime loss L_t^lin = ‖(I − ηK_0)^t r_0‖² / (2n) at the given steps.

    Computed in float64 from the eigendecomposition of the symmetrized K_0:
    L_t^lin = Σ_k (1 − ηλ_k)^{2t} (v_kᵀ r_0)² / (2n).

    Args:
      kernel0: K_0 = Θ_0 / n, shape (m, m) with m = n·O.
      residual0: r_0 = vec(f(X) − Y) at initialization, shape (m,).
      learning_rate: The GD step size η.
      steps: Iterable of non-negative integer steps t.
      n: Number of training examples (the 1/(2n) of the loss).

    Returns:
      float64 array of shape (len(steps),); +inf where the linearized dynamics overflow
      (some η·λ_k > 2).
    """
    kernel0 = np.asarray(kernel0, dtype=np.float64)
    residual0 = np.asarray(residual0, dtype=np.float64).reshape(-1)
    if (
        kernel0.ndim != 2
        or kernel0.shape[0] != kernel0.shape[1]
        or kernel0.shape[0] != residual0.shape[0]
    ):
        raise ValueError(
            f"linearized_loss_curve: kernel0 shape {kernel0.shape} and residual0 "
            f"shape {residual0.shape}; expected (m, m) and (m,) with the same m = "
            "n·O. Pass the full normalized kernel K_0 and vec(f(X) − Y)."
        )
    if n <= 0:
        raise ValueError(
            f"linearized_loss_curve: n={n}; expected the positive number of training examples."
        )
    steps = np.asarray(list(steps), dtype=np.int64)
    if np.any(steps < 0):
        raise ValueError(
            f"linearized_loss_curve: steps contain {steps.min()}; expected non-negative integers."
        )
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (kernel0 + kernel0.T))
    weights = (eigenvectors.T @ residual0) ** 2
    factors = (1.0 - learning_rate * eigenvalues) ** 2
    with np.errstate(over="ignore"):  # η·λ > 2: the linearized dynamics diverge (→ inf)
        powers = factors[None, :] ** steps[:, None].astype(np.float64)
        return powers @ weights / (2.0 * n)
