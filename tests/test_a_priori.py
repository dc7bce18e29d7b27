"""Tests of lplr_tf.a_priori: the sampled check of the ball B(θ₀, R₀) at initialization."""

import json

import numpy as np
import pytest
import tensorflow as tf

from lplr_tf import a_priori
from lplr_tf.models.fc import build_model

BIAS_STD = 0.1


def linear_problem(n=6, d=12, outputs=2, seed=0):
    """A linear model f(x) = x W / √d + 0.1·b (NTK parameterization), whose kernel is
    K = (X Xᵀ / d + 0.1²) / n ⊗ I_O everywhere (it does not depend on θ)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.standard_normal((n, outputs)).astype(np.float32)
    network = build_model(input_shape=(d,), output_dim=outputs, depth=0, bias_std=BIAS_STD)
    x64 = x.astype(np.float64)
    kernel = np.kron((x64 @ x64.T / d + BIAS_STD**2) / n, np.eye(outputs))
    return network, x, y, kernel


def weights(network):
    return [v.numpy().copy() for v in network.trainable_variables]


def test_linear_model_holds_with_closed_form_numbers():
    network, x, y, kernel = linear_problem()
    eigenvalues = np.linalg.eigvalsh(kernel)
    lambda0, beta0 = eigenvalues[0], eigenvalues[-1]  # the Hessian JᵀJ/n shares K's spectrum
    residual = (np.asarray(network(x), np.float64) - y).reshape(-1)
    loss0 = residual @ residual / (2 * x.shape[0])
    before = weights(network)
    result = a_priori.check(network, x, y, learning_rate=0.5 / beta0)
    json.dumps(result, allow_nan=False)
    assert result["lambda0"] == pytest.approx(lambda0, rel=1e-5)
    assert result["mu0"] == pytest.approx(lambda0 / 2, rel=1e-5)
    assert result["beta0"] == pytest.approx(beta0, rel=1e-5)
    assert result["loss0"] == pytest.approx(loss0, rel=1e-6)
    assert result["radius"] == pytest.approx(2 * np.sqrt(2 * beta0 * loss0) / (lambda0 / 2), 1e-4)
    # Gradient, bottom and top eigenvector, each at R₀, R₀/2, R₀/4: K never moves.
    assert result["num_samples"] == 9
    assert {s["direction"] for s in result["samples"]} == {"gradient", "bottom_0", "top_0"}
    radii = sorted({round(s["radius"] / result["radius"], 6) for s in result["samples"]})
    assert radii == [0.25, 0.5, 1.0]
    assert result["min_lambda_min"] == pytest.approx(lambda0, rel=1e-4)
    assert result["lipschitz_ball"] * result["radius"] < 1e-5 * beta0
    assert result["lambda_ok"] is True and result["step_size_ok"] is True
    assert result["holds"] is True
    assert result["kind"] == "sampled check, not a proof"
    for saved, variable in zip(before, network.trainable_variables):
        assert np.array_equal(saved, variable.numpy())  # restored bit for bit
    too_large = a_priori.check(network, x, y, learning_rate=1.5 / beta0, sharpness=beta0)
    assert too_large["lambda_ok"] is True and too_large["step_size_ok"] is False
    assert too_large["holds"] is False


def test_narrow_net_with_large_step_fails():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = np.sign(rng.standard_normal((8, 1))).astype(np.float32)
    network = build_model(input_shape=(4,), output_dim=1, depth=1, width=16, activation="tanh")
    before = weights(network)
    result = a_priori.check(network, x, y, learning_rate=2.0)
    # Far out in the ball the narrow net's kernel loses its smallest eigenvalue ...
    assert result["lambda_ok"] is False
    assert result["min_lambda_min"] < result["mu0"]
    worst = min(result["samples"], key=lambda s: s["lambda_min"])
    assert worst["radius_fraction"] > 0.25
    assert result["lipschitz_ball"] > 0
    # ... and the step is past 1/β₀.
    assert result["beta0"] * 2.0 > 1.0 and result["step_size_ok"] is False
    assert result["holds"] is False
    for saved, variable in zip(before, network.trainable_variables):
        assert np.array_equal(saved, variable.numpy())


def test_parameter_directions_match_explicit_jacobian():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2)).astype(np.float32)
    network = build_model(input_shape=(2,), output_dim=2, depth=1, width=3, activation="tanh")
    variables = network.trainable_variables
    with tf.GradientTape() as tape:
        outputs = tf.reshape(network(x, training=False), [-1])  # example-major, (n·O,)
    jacobians = tape.jacobian(outputs, variables)
    jacobian = np.concatenate(
        [np.asarray(j, np.float64).reshape(outputs.shape[0], -1) for j in jacobians], axis=1
    )
    vectors = rng.standard_normal((2, 6))
    directions = a_priori.parameter_directions(network, x, vectors)
    np.testing.assert_allclose(directions, vectors @ jacobian, rtol=1e-5, atol=1e-6)


def test_large_kernels_take_fewer_samples_and_budget_skips(monkeypatch):
    network, x, y, kernel = linear_problem()
    monkeypatch.setattr(a_priori, "LARGE_KERNEL_DIM", 4)  # the 12 × 12 kernel counts as large
    reduced = a_priori.check(network, x, y, learning_rate=0.1)
    assert [(s["direction"], s["radius_fraction"]) for s in reduced["samples"]] == [
        ("gradient", 1.0),
        ("bottom_0", 1.0),
    ]
    skipped = a_priori.check(network, x, y, learning_rate=0.1, memory_budget_bytes=1000)
    assert skipped["holds"] is None and skipped["num_samples"] == 0
    assert "12×12" in skipped["skipped"] and skipped["lambda0"] is None


def test_trace_kernel_with_several_outputs_is_skipped_and_bad_input():
    network, x, y, _ = linear_problem(outputs=2)
    result = a_priori.check(network, x, y, learning_rate=0.1, output_mode="trace")
    assert result["holds"] is None and "O = 2" in result["skipped"]
    with pytest.raises(ValueError, match="learning_rate=0"):
        a_priori.check(network, x, y, learning_rate=0)
    with pytest.raises(ValueError, match="radii=\\(\\)"):
        a_priori.check(network, x, y, learning_rate=0.1, radii=())
    with pytest.raises(ValueError, match="output_mode='diag'"):
        a_priori.check(network, x, y, learning_rate=0.1, output_mode="diag")
