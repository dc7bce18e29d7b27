"""The empirical Neural Tangent Kernel of Keras models, and its spectrum.

A library with no gin and no files: call it on any Keras model and batch.

    theta = empirical_ntk(model, x)             # Θ = J Jᵀ, shape (n·O, n·O), unnormalized
    spec = ntk_spectrum(theta, scale=1 / n)     # spectrum of K = Θ / n, float64
    big = matrix_free_spectrum(model, x_large, scale=1 / n_large)  # Lanczos on Θv

Modules: `empirical` (API, dispatch, caching), `structured` (layer-wise contraction),
`per_example` (per-example conv/BN/sequence-dense gradients for it), `jacobian` (general
per-example Jacobians), `matfree` (NTK-vector products, Lanczos),
`blocking` (memory-bounded block assembly), `spectrum` (float64 eigensolve, summary),
`common` (input checks, TF32 policy).
"""

from lplr_tf.ntk.common import tf32_disabled
from lplr_tf.ntk.empirical import IMPLEMENTATIONS, NTKEngine, empirical_ntk, get_engine
from lplr_tf.ntk.matfree import matrix_free_spectrum, ntk_vector_product
from lplr_tf.ntk.spectrum import NTKSpectrum, linearized_loss_curve, ntk_spectrum

__all__ = [
    "IMPLEMENTATIONS",
    "NTKEngine",
    "NTKSpectrum",
    "empirical_ntk",
    "get_engine",
    "linearized_loss_curve",
    "matrix_free_spectrum",
    "ntk_spectrum",
    "ntk_vector_product",
    "tf32_disabled",
]
