"""Linearized residuals (I − ηK₀)^t r₀ against explicit matrix powers, with O > 1."""

import keras
import numpy as np
import pytest

from lplr_tf.ntk import (
    LinearizedDynamics,
    empirical_ntk,
    linearized_loss_curve,
    linearized_residuals,
)


@pytest.fixture(scope="module")
def problem():
    """A 3-output network's full kernel Θ₀ and its residual r₀ = f(X) − Y, (n, O)."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(3)]
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4)).astype(np.float32)
    y = rng.standard_normal((7, 3))
    theta0 = empirical_ntk(model, x, as_numpy=True).astype(np.float64)
    residual0 = np.asarray(model(x), np.float64) - y
    return theta0, residual0


def test_matches_explicit_matrix_powers_in_example_major_order(problem):
    theta0, residual0 = problem
    n = residual0.shape[0]
    kernel0 = theta0 / n
    eta = 0.9 / np.linalg.eigvalsh(kernel0)[-1]
    steps = [0, 1, 2, 7, 40]
    got = linearized_residuals(theta0, residual0, eta, steps, scale=1 / n)
    assert got.shape == (len(steps), residual0.size)
    step_matrix = np.eye(residual0.size) - eta * kernel0
    for row, t in zip(got, steps):
        expected = np.linalg.matrix_power(step_matrix, t) @ residual0.reshape(-1)
        np.testing.assert_allclose(row, expected, rtol=1e-9, atol=1e-12)
    # Example-major: entry i·O + o is output o of example i, so row 0 is r₀ itself.
    np.testing.assert_allclose(got[0].reshape(n, 3), residual0, atol=1e-12)


def test_deviation_and_the_loss_curve_agree_with_the_residuals(problem):
    theta0, residual0 = problem
    n = residual0.shape[0]
    eta = 0.5
    dynamics = LinearizedDynamics(theta0, residual0, eta, scale=1 / n)
    linear = dynamics.residuals([5])[0]
    assert dynamics.deviation(5, linear) == 0.0
    observed = linear + 0.1 * residual0.reshape(-1)
    assert dynamics.deviation(5, observed) == pytest.approx(0.1, rel=1e-12)
    losses = linearized_loss_curve(theta0 / n, residual0.reshape(-1), eta, [0, 5, 11], n)
    expected = [np.sum(r**2) / (2 * n) for r in dynamics.residuals([0, 5, 11])]
    np.testing.assert_allclose(losses, expected, rtol=1e-9)


def test_diverging_dynamics_overflow_to_inf_without_warnings(problem):
    theta0, residual0 = problem
    n = residual0.shape[0]
    eta = 3.0 / np.linalg.eigvalsh(theta0 / n)[-1]  # η·λ_max = 3 > 2
    with np.errstate(all="raise"):
        far = linearized_residuals(theta0, residual0, eta, [10**6], scale=1 / n)
    assert not np.all(np.isfinite(far))


@pytest.mark.parametrize(
    "kernel0, residual0, eta, steps, message",
    [
        (np.eye(4), np.ones(3), 0.1, [1], r"kernel0 shape \(4, 4\) and residual0 of 3"),
        (np.eye(3), np.ones(3), -0.1, [1], "learning_rate=-0.1"),
        (np.eye(3), np.ones(3), 0.1, [2, -1], "steps contain -1"),
    ],
)
def test_bad_input_names_the_value(kernel0, residual0, eta, steps, message):
    with pytest.raises(ValueError, match=message):
        linearized_residuals(kernel0, residual0, eta, steps)
