"""kernel_statistics against NumPy's float64 eigvalsh, norms and SVD, on constructed kernels."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from lplr_tf.ntk import (
    empirical_ntk,
    kernel_statistics,
    matrix_free_statistics,
    ntk_spectrum,
)
from lplr_tf.ntk.layers import NTKDense


def constructed(size, condition, seed, bottom_gap=1.002):
    """A symmetric PD matrix with a geometric spectrum from 1/condition to 1.

    The two smallest eigenvalues are 0.2% apart (a hard case for inverse iteration),
    eigenvectors random orthogonal.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((size, size)))
    eigenvalues = np.geomspace(1.0 / condition, 1.0, size)
    eigenvalues[1] = eigenvalues[0] * bottom_gap
    matrix = (q * eigenvalues) @ q.T
    return 0.5 * (matrix + matrix.T)


def reference(kernel, kernel0, scale):
    k = scale * np.asarray(kernel, np.float64)
    k = 0.5 * (k + k.T)
    eigenvalues = np.linalg.eigvalsh(k)
    out = {"lambda_min": eigenvalues[0], "lambda_max": eigenvalues[-1], "trace": np.trace(k)}
    if kernel0 is not None:
        k0 = scale * np.asarray(kernel0, np.float64)
        difference = k - 0.5 * (k0 + k0.T)
        out["kernel_drift"] = np.linalg.norm(difference) / np.linalg.norm(k0)
        out["kernel_drift_op"] = np.linalg.norm(difference, 2)  # full SVD: the old path
    return out


@pytest.mark.parametrize("backend", ["host", "device"])
@pytest.mark.parametrize("condition", [1e2, 1e4, 1e6])
def test_matches_eigvalsh_svd_and_norms(backend, condition):
    size = 160
    kernel = constructed(size, condition, seed=int(np.log10(condition)))
    kernel0 = kernel + 1e-3 * constructed(size, 10.0, seed=7)
    expected = reference(kernel, kernel0, scale=0.5)
    stats = kernel_statistics(kernel, kernel0, scale=0.5, backend=backend)
    assert stats.lambda_min == pytest.approx(expected["lambda_min"], rel=1e-6)
    assert stats.lambda_max == pytest.approx(expected["lambda_max"], rel=1e-6)
    assert stats.trace == pytest.approx(expected["trace"], rel=1e-12)
    assert stats.kernel_drift == pytest.approx(expected["kernel_drift"], rel=1e-10)
    assert stats.kernel_drift_op == pytest.approx(expected["kernel_drift_op"], rel=1e-6)
    assert stats.condition_number == pytest.approx(condition, rel=1e-5)
    assert stats.method == "cholesky" and stats.backend == backend and stats.converged
    # Far fewer products than dimensions: the solves converge, they do not exhaust.
    assert max(stats.iterations.values()) < size / 2
    assert stats.estimates == () and stats.eigenvalues is None


@pytest.mark.parametrize("backend", ["host", "device"])
def test_warm_start_from_the_previous_probe_needs_fewer_products(backend):
    # Two probes of a slowly moving kernel, as in training: the second one starts from the
    # first one's Ritz vectors and finds the same values as a cold start.
    size = 200
    kernel0 = constructed(size, 1e4, seed=10)
    first = kernel0 + 1e-3 * constructed(size, 10.0, seed=11)
    second = first + 1e-4 * constructed(size, 10.0, seed=12)
    previous = kernel_statistics(first, kernel0, scale=1.0, backend=backend)
    assert set(previous.vectors) == {"lambda_max", "lambda_min", "kernel_drift_op"}
    cold = kernel_statistics(second, kernel0, scale=1.0, backend=backend)
    warm = kernel_statistics(
        second, kernel0, scale=1.0, backend=backend, start_vectors=previous.vectors
    )
    for name in ("lambda_min", "lambda_max", "kernel_drift_op"):
        assert getattr(warm, name) == pytest.approx(getattr(cold, name), rel=1e-7), name
    assert sum(warm.iterations.values()) < 0.7 * sum(cold.iterations.values())
    # A start vector of another size (the probe set changed) falls back to a random one.
    other = kernel_statistics(
        first[:150, :150], scale=1.0, backend=backend, start_vectors=previous.vectors
    )
    assert other.lambda_min == pytest.approx(np.linalg.eigvalsh(first[:150, :150])[0], rel=1e-6)


def test_device_functions_compile_with_xla_and_agree():
    size = 40
    kernel = constructed(size, 1e5, seed=3)
    kernel0 = kernel + 1e-2 * constructed(size, 10.0, seed=4)
    host = kernel_statistics(kernel, kernel0, scale=1.0, backend="host")
    compiled = kernel_statistics(
        tf.constant(kernel),
        tf.constant(kernel0),
        scale=1.0,
        backend="device",
        jit_compile=True,
        max_iterations=30,
    )
    for name in ("lambda_min", "lambda_max", "kernel_drift", "kernel_drift_op", "trace"):
        assert getattr(compiled, name) == pytest.approx(getattr(host, name), rel=1e-6), name
    # The optional full spectrum is never XLA-compiled (XLA's eigensolver is not accurate
    # enough for small eigenvalues), but it is asked for through the same call.
    full = kernel_statistics(
        tf.constant(kernel), scale=1.0, backend="device", jit_compile=True, full_spectrum=True
    )
    np.testing.assert_allclose(full.eigenvalues, np.linalg.eigvalsh(kernel), rtol=1e-9)


def test_float32_ntk_of_a_network_agrees_with_the_dense_spectrum():
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            NTKDense(64, bias_std=0.1, seed=1),
            keras.layers.Activation("relu"),
            NTKDense(3, seed=2),
        ]
    )
    x = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
    theta = empirical_ntk(model, x, as_numpy=True)
    assert isinstance(theta, np.ndarray) and theta.dtype == np.float32
    dense = ntk_spectrum(theta, scale=1 / 40)
    stats = kernel_statistics(theta, theta, scale=1 / 40)
    assert stats.lambda_min == pytest.approx(dense.lambda_min, rel=1e-6)
    assert stats.lambda_max == pytest.approx(dense.lambda_max, rel=1e-6)
    assert stats.trace == pytest.approx(dense.trace, rel=1e-9)
    assert stats.kernel_drift == 0.0 and stats.kernel_drift_op == 0.0
    free = matrix_free_statistics(model, x, scale=1 / 40, max_iterations=120)
    assert free.lambda_max == pytest.approx(dense.lambda_max, rel=1e-4)
    assert free.lambda_min >= dense.lambda_min * (1 - 1e-4)  # a Ritz value: an upper bound
    assert free.method == "matrix_free" and "lambda_min" in free.estimates
    assert "lambda_max" not in free.estimates and free.kernel_drift is None


@pytest.mark.parametrize("backend", ["host", "device"])
def test_each_quantity_alone_equals_the_whole_and_leaves_the_rest_none(backend):
    kernel = constructed(80, 1e4, seed=8)
    kernel0 = kernel + 1e-3 * constructed(80, 10.0, seed=9)
    whole = kernel_statistics(kernel, kernel0, scale=1.0, backend=backend)
    drift = kernel_statistics(
        kernel, kernel0, scale=1.0, quantities=["kernel_drift"], backend=backend
    )
    assert drift.kernel_drift_op == pytest.approx(whole.kernel_drift_op, rel=1e-9)
    assert drift.lambda_min is None and drift.trace is None and drift.method is None
    top = kernel_statistics(kernel, scale=1.0, quantities=["lambda_max"], backend=backend)
    assert top.lambda_max == pytest.approx(whole.lambda_max, rel=1e-9)
    assert top.lambda_min is None and top.condition_number is None
    assert top.effective_rank == pytest.approx(whole.effective_rank, rel=1e-9)
    bottom = kernel_statistics(kernel, scale=1.0, quantities=["lambda_min"], backend=backend)
    assert bottom.lambda_min == pytest.approx(whole.lambda_min, rel=1e-7)
    assert bottom.lambda_max is None and bottom.kernel_drift is None
    with pytest.raises(ValueError, match=r"quantities=\('kernel_drift',\)"):
        kernel_statistics(kernel, scale=1.0, quantities=["kernel_drift"])


def test_full_spectrum_equals_eigvalsh():
    kernel = constructed(50, 1e3, seed=5).astype(np.float32)
    stats = kernel_statistics(kernel, scale=2.0, full_spectrum=True)
    expected = np.linalg.eigvalsh(2.0 * kernel.astype(np.float64))
    np.testing.assert_allclose(stats.eigenvalues, expected, rtol=1e-10, atol=1e-14)
    assert stats.method == "eigvalsh"
    assert stats.lambda_min == pytest.approx(expected[0], rel=1e-10)


@pytest.mark.parametrize("backend", ["host", "device"])
def test_rank_deficient_float32_kernel_is_psd_to_rounding(backend):
    # J Jᵀ with 60 rows and 20 columns: 40 eigenvalues are zero up to float32 rounding, so
    # the first Cholesky shift fails and the rounding-level shift takes over.
    jacobian = np.random.default_rng(1).standard_normal((60, 20)).astype(np.float32)
    kernel = jacobian @ jacobian.T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = kernel_statistics(kernel, scale=1.0, backend=backend)
    largest = np.linalg.eigvalsh(kernel.astype(np.float64))[-1]
    assert abs(stats.lambda_min) < 1e-5 * largest
    assert stats.method == "cholesky" and stats.condition_number > 1e4


@pytest.mark.parametrize("backend", ["host", "device"])
def test_indefinite_kernel_warns_and_reports_the_negative_eigenvalue(backend):
    kernel = constructed(30, 10.0, seed=6)
    kernel -= 0.5 * np.eye(30)  # eigenvalues from -0.4 to 0.5
    with pytest.warns(RuntimeWarning, match="not positive semi-definite"):
        stats = kernel_statistics(kernel, scale=1.0, backend=backend)
    assert stats.lambda_min == pytest.approx(np.linalg.eigvalsh(kernel)[0], rel=1e-10)
    assert stats.method == "eigvalsh" and stats.condition_number == float("inf")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel": np.zeros((2, 3))}, r"kernel has shape \(2, 3\)"),
        ({"kernel0": np.eye(4)}, r"kernel0 has shape \(4, 4\) but kernel has \(3, 3\)"),
        ({"scale": 0.0}, "scale=0.0"),
        ({"backend": "gpu"}, "backend='gpu'"),
        ({"tolerance": 2.0}, "tolerance=2.0"),
        ({"kernel": np.full((3, 3), np.nan)}, "NaN or inf"),
    ],
)
def test_bad_input_names_the_value(kwargs, message):
    arguments = {"kernel": np.eye(3), "scale": 1.0, **kwargs}
    kernel = arguments.pop("kernel")
    with pytest.raises(ValueError, match=message):
        kernel_statistics(kernel, **arguments)
