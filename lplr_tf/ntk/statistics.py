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

Where: `backend="host"` (`statistics_host`) runs on NumPy/LAPACK in one float64 workspace
of N² floats, reused for K − K₀, K and L in turn, every step bounded and interruptible
(`should_stop`). `backend="device"` (`statistics_device`) keeps everything on the kernel's
device as TF ops (the kernel comes back only as scalars); it is meant for GPUs (float64,
cuSOLVER). "auto" picks "device" for a
kernel on a GPU and "host" otherwise: on a CPU the host *is* the device and LAPACK's
multithreaded Cholesky was measured 5× faster than TF's; a TPU has no float64.

Full eigenvalues (`full_spectrum=True`) cost one float64 `eigvalsh` (in place on the
workspace): a TensorBoard histogram of the spectrum should ask for them only every k-th
probe (or at the first and last probe), not at every probe.
"""

import math

import numpy as np
import tensorflow as tf

from lplr_tf.ntk import statistics_device, statistics_host
from lplr_tf.ntk.statistics_result import KernelStatistics, finish

__all__ = ["BACKENDS", "QUANTITIES", "KernelStatistics", "finish", "kernel_statistics"]

BACKENDS = ("auto", "host", "device")
QUANTITIES = ("lambda_min", "lambda_max", "kernel_drift")
_CALLER = "kernel_statistics"


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
    start_vectors=None,
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
      start_vectors: The previous probe's `KernelStatistics.vectors`: each solve then
        starts from that Ritz vector (plus 10% of a random one). Between probes the
        extreme eigenvectors move little, so the solves need fewer products; the results
        do not depend on it beyond the tolerance.

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
        start_vectors=start_vectors,
    )
    if backend == "device":
        return statistics_device.device_statistics(
            kernel, kernel0, jit_compile=jit_compile, should_stop=should_stop, **options
        )
    return statistics_host.host_statistics(kernel, kernel0, should_stop=should_stop, **options)


def _check_square(matrix, name):
    shape = tuple(matrix.shape)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(
            f"{_CALLER}: {name} has shape {shape}; expected a non-empty square matrix "
            "(N, N), e.g. Θ from empirical_ntk."
        )


def _on_gpu(kernel):
    return isinstance(kernel, tf.Tensor) and "GPU" in (kernel.device or "").upper()
