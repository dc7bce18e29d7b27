"""Spectra (dense float64 and matrix-free Lanczos) and NTK-vector products."""

import warnings

import keras
import numpy as np
import pytest

from lplr_tf.ntk import (
    empirical_ntk,
    matrix_free_spectrum,
    ntk_spectrum,
    ntk_vector_product,
)
from lplr_tf.ntk.layers import NTKDense


@pytest.fixture(scope="module")
def net_and_kernel():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,))
    h = NTKDense(16, bias_std=0.2, seed=1)(inputs)
    h = keras.layers.Activation("tanh")(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    x = np.random.default_rng(2).normal(size=(12, 3)).astype(np.float32)
    return model, x, empirical_ntk(model, x).numpy().astype(np.float64)


def test_ntvp_equals_dense_kernel_times_vector(net_and_kernel):
    model, x, theta = net_and_kernel
    v = np.random.default_rng(3).normal(size=theta.shape[0]).astype(np.float32)
    expected = theta @ v
    for block_size in (None, 5):
        product = ntk_vector_product(model, x, v, block_size=block_size).numpy()
        np.testing.assert_allclose(product, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    as_matrix = ntk_vector_product(model, x, v.reshape(12, 2), scale=1 / 12).numpy()
    np.testing.assert_allclose(
        as_matrix.ravel(), expected / 12, rtol=1e-4, atol=1e-5 * np.abs(expected).max()
    )


def test_ntvp_rejects_wrong_vector_length(net_and_kernel):
    model, x, _ = net_and_kernel
    with pytest.raises(ValueError, match=r"v has shape \(23,\); expected \(24,\)"):
        ntk_vector_product(model, x, np.zeros(23, np.float32))


def test_dense_spectrum_of_psd_kernel(net_and_kernel):
    _, x, theta = net_and_kernel
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = ntk_spectrum(theta.astype(np.float32), scale=1 / x.shape[0])
    k = theta / x.shape[0]
    reference = np.linalg.eigvalsh(k)
    assert spec.eigenvalues.dtype == np.float64
    assert np.all(np.diff(spec.eigenvalues) >= 0)
    np.testing.assert_allclose(spec.eigenvalues, reference, atol=1e-5 * reference[-1])
    assert spec.lambda_min >= -1e-6 * spec.lambda_max
    assert spec.lambda_max == pytest.approx(reference[-1], rel=1e-6)
    assert spec.trace == pytest.approx(np.trace(k), rel=1e-6)
    assert spec.effective_rank == pytest.approx(np.trace(k) / reference[-1], rel=1e-6)
    assert spec.condition_number == pytest.approx(spec.lambda_max / spec.lambda_min)
    assert spec.eigenvectors is None


def test_eigenvectors_diagonalize_the_kernel():
    a = np.random.default_rng(5).normal(size=(6, 4))
    spec = ntk_spectrum(a @ a.T, return_eigenvectors=True)
    v = spec.eigenvectors
    np.testing.assert_allclose(v @ np.diag(spec.eigenvalues) @ v.T, a @ a.T, atol=1e-10)
    assert spec.condition_number == float("inf") or spec.lambda_min < 1e-10


def test_known_spectrum_and_effective_rank():
    spec = ntk_spectrum(np.diag([4.0, 1.0, 1.0, 2.0]))
    np.testing.assert_array_equal(spec.eigenvalues, [1.0, 1.0, 2.0, 4.0])
    assert (spec.lambda_min, spec.lambda_max, spec.trace) == (1.0, 4.0, 8.0)
    assert spec.condition_number == 4.0
    assert spec.effective_rank == 2.0


def test_indefinite_matrix_warns():
    indefinite = np.array([[1.0, 0.0], [0.0, -0.5]])
    with pytest.warns(RuntimeWarning, match="not symmetric positive semi-definite"):
        spec = ntk_spectrum(indefinite)
    assert spec.lambda_min == -0.5


def test_rounding_level_negative_eigenvalue_does_not_warn():
    a = np.random.default_rng(6).normal(size=(8, 3))
    kernel = (a @ a.T).astype(np.float32)  # rank 3: five eigenvalues at rounding level
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ntk_spectrum(kernel)


def test_spectrum_rejects_non_square():
    with pytest.raises(ValueError, match=r"kernel has shape \(2, 3\)"):
        ntk_spectrum(np.zeros((2, 3)))


def test_matrix_free_spectrum_agrees_with_dense(net_and_kernel):
    model, x, theta = net_and_kernel
    n = x.shape[0]
    dense = ntk_spectrum(theta, scale=1 / n)
    free = matrix_free_spectrum(model, x, scale=1 / n, num_iterations=24, num_probes=64)
    assert free.method == "lanczos" and free.eigenvalues is None
    assert free.lambda_max == pytest.approx(dense.lambda_max, rel=1e-4)
    # With as many Lanczos steps as dimensions the Ritz values are the eigenvalues.
    assert free.lambda_min == pytest.approx(dense.lambda_min, abs=1e-3 * dense.lambda_max)
    assert free.trace == pytest.approx(dense.trace, rel=0.3)  # Hutchinson, 64 probes
    blocked = matrix_free_spectrum(
        model, x, scale=1 / n, num_iterations=10, num_probes=4, block_size=5
    )
    assert blocked.lambda_max == pytest.approx(dense.lambda_max, rel=1e-3)
