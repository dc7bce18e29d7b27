"""The empirical Neural Tangent Kernel of Keras models, and its spectrum.

A library with no gin and no files: call it on any Keras model and batch.

    theta = empirical_ntk(model, x, as_numpy=True)      # Θ = J Jᵀ, (n·O, n·O), unnormalized
    stats = kernel_statistics(theta, theta0, scale=1 / n)  # λ_min, λ_max, drift of K = Θ/n
    plan = choose_probe_path(model, x)                  # dense / matrix-free / refuse, up front
    big = matrix_free_statistics(model, x_large, scale=1 / n_large)  # Lanczos on Θv

Modules: `empirical` (API, dispatch), `structured` (layer-wise contraction), `per_example`
(per-example conv/BN/sequence-dense gradients for it), `jacobian` (general per-example
Jacobians), `matfree` (NTK-vector products, Lanczos), `blocking` (memory- and time-bounded
block assembly), `statistics` (λ_min by Cholesky + shift-invert Lanczos, λ_max and drift
by Lanczos; its backends `statistics_host` and `statistics_device`, its record
`statistics_result`), `cholesky` (blocked in-place factorization), `lanczos` (host and
compiled Lanczos), `spectrum` (full float64 eigensolve), `linearized` (kernel-regime
residuals), `memory` (probe memory estimate and budget), `interrupt` (should_stop),
`cache` (the per-model cache of compiled functions), `common` (input checks, TF32 policy).
"""

from lplr_tf.ntk.common import tf32_disabled
from lplr_tf.ntk.empirical import IMPLEMENTATIONS, NTKEngine, empirical_ntk, get_engine
from lplr_tf.ntk.interrupt import ProbeInterrupted
from lplr_tf.ntk.linearized import LinearizedDynamics, linearized_residuals
from lplr_tf.ntk.matfree import (
    matrix_free_spectrum,
    matrix_free_statistics,
    ntk_vector_product,
)
from lplr_tf.ntk.memory import (
    MemoryBudgetError,
    ProbeMemory,
    ProbePlan,
    choose_probe_path,
    memory_budget,
    probe_memory_bytes,
)
from lplr_tf.ntk.spectrum import NTKSpectrum, linearized_loss_curve, ntk_spectrum
from lplr_tf.ntk.statistics import KernelStatistics, kernel_statistics

__all__ = [
    "IMPLEMENTATIONS",
    "KernelStatistics",
    "LinearizedDynamics",
    "MemoryBudgetError",
    "NTKEngine",
    "NTKSpectrum",
    "ProbeInterrupted",
    "ProbeMemory",
    "ProbePlan",
    "choose_probe_path",
    "empirical_ntk",
    "get_engine",
    "kernel_statistics",
    "linearized_loss_curve",
    "linearized_residuals",
    "matrix_free_spectrum",
    "matrix_free_statistics",
    "memory_budget",
    "ntk_vector_product",
    "ntk_spectrum",
    "probe_memory_bytes",
    "tf32_disabled",
]
