"""Tests of lplr_tf.bounds (and the summary's bound section) on quadratics with closed forms.

In residual space GD on the squared loss of a linear model is r_{t+1} = (I − ηK) r_t with a
constant kernel K; here K = diag(λ), n examples, g_t = ‖r_t‖²/(2n), the PL ratio
q_t = r_tᵀ K r_t / ‖r_t‖² and the sharpness β = λ_max (the Hessian JᵀJ/n shares K's
nonzero spectrum).
"""

import math

import numpy as np
import pytest

from lplr_tf import analysis, bounds, stability, verdict

N = 4


def quadratic_rows(eigenvalues, residual0, learning_rate, steps=300, every=5):
    """Exact GD rows on the diagonal quadratic, with probes at every logged step."""
    eigenvalues = np.asarray(eigenvalues, np.float64)
    rows = []
    for step in range(0, steps + 1, every):
        residual = (1.0 - learning_rate * eigenvalues) ** step * residual0
        rows.append(
            {
                "step": step,
                "loss": float(residual @ residual / (2 * N)),
                "pl_ratio": float(residual @ (eigenvalues * residual) / (residual @ residual)),
                "ntk_lambda_min": float(eigenvalues.min()),
                "ntk_lambda_max": float(eigenvalues.max()),
                "sharpness": float(eigenvalues.max()),
            }
        )
    return rows


def test_one_mode_every_bound_in_closed_form():
    eigenvalues = np.array([0.05, 0.4, 1.0, 2.0])
    residual0 = np.array([1.0, 0.0, 0.0, 0.0])  # only the slowest mode
    eta, mu, beta = 0.3, 0.05, 2.0
    summary = analysis.summarize(
        quadratic_rows(eigenvalues, residual0, eta),
        learning_rate=eta,
        settings=analysis.Settings(tolerance=1e-30),
    )
    bound = summary["bound"]
    assert summary["fit"]["rate"] == pytest.approx((1 - eta * mu) ** 2, rel=1e-12)
    assert bound["rate_bound"] == pytest.approx(1 - eta * mu)
    assert bound["rate_descent"] == pytest.approx(1 - eta * (2 - eta * beta) * mu)
    # q_t = μ exactly, so the envelope bound equals the descent bound.
    assert bound["rate_envelope"] == pytest.approx(bound["rate_descent"])
    assert bound["tightness"] == pytest.approx(2.0, rel=1e-9)  # log (1−ημ)² / log (1−ημ)
    assert bound["descent_valid"] is True and bound["step_size_ok"] is True
    assert bound["holds"] is True and bound["kind"] == "estimate"
    # Ordering: observed ≤ descent ≤ theorem's bound when ηβ ≤ 1.
    assert summary["fit"]["rate"] <= bound["rate_descent"] <= bound["rate_bound"]


def test_two_modes_envelope_and_descent_lemma_per_step():
    eigenvalues = np.array([0.1, 0.1, 1.5, 1.5])
    residual0 = np.array([0.3, 0.0, 1.0, 0.0])
    eta, beta = 0.5, 1.5  # ηβ = 0.75
    rows = quadratic_rows(eigenvalues, residual0, eta, steps=200)
    summary = analysis.summarize(
        rows, learning_rate=eta, settings=analysis.Settings(tolerance=1e-30)
    )
    start, end = summary["fit"]["window"]
    # q_t falls toward λ_min: its envelope on the window is q at the window's last step.
    residual = (1 - eta * eigenvalues) ** end * residual0
    q_end = residual @ (eigenvalues * residual) / (residual @ residual)
    assert summary["pl_ratio"]["lower_envelope"] == pytest.approx(q_end, rel=1e-12)
    expected = 1 - eta * (2 - eta * beta) * q_end
    assert summary["bound"]["rate_envelope"] == pytest.approx(expected, rel=1e-12)
    # The descent lemma, step by step: g_{t+1} ≤ (1 − η(2 − ηβ) q_t) g_t.
    every_step = quadratic_rows(eigenvalues, residual0, eta, steps=60, every=1)
    for before, after in zip(every_step, every_step[1:]):
        allowed = 1 - eta * (2 - eta * beta) * before["pl_ratio"]
        assert after["loss"] <= allowed * before["loss"] * (1 + 1e-12)


def test_rate_bounds_function_edges():
    past_two = bounds.rate_bounds(
        learning_rate=1.0, mu=0.1, beta_max=2.5, pl_envelope=0.2, fitted_rate=0.95
    )
    assert past_two["rate_descent"] is None and past_two["rate_envelope"] is None
    assert past_two["descent_valid"] is False and past_two["step_size_ok"] is False
    assert past_two["rate_bound"] == pytest.approx(0.9)
    assert past_two["tightness"] == pytest.approx(math.log(0.95) / math.log(0.9))
    between = bounds.rate_bounds(
        learning_rate=1.0, mu=0.1, beta_max=1.5, pl_envelope=None, fitted_rate=1.01
    )
    # 1 < ηβ < 2: the descent bound is valid but looser than 1 − ημ.
    assert between["rate_descent"] == pytest.approx(1 - 0.5 * 0.1)
    assert between["rate_descent"] > between["rate_bound"]
    assert between["tightness"] is None  # the loss did not contract
    unmeasured = bounds.rate_bounds(
        learning_rate=1.0, mu=None, beta_max=None, pl_envelope=None, fitted_rate=0.9
    )
    assert set(unmeasured.values()) == {None}


def test_bound_violations_by_hand():
    points = [(0, 1.0), (10, 0.9**10), (20, 0.9**10 * 0.95**10), (25, 0.9**15 * 0.95**10)]
    assert bounds.bound_violations(points, 0.92) == [20]
    assert bounds.bound_violations(points, 0.96) == []
    assert bounds.bound_violations(points, -0.5) == [10, 20, 25]  # ρ clamped at 0


def test_interlacing_factor_against_a_kernel():
    rng = np.random.default_rng(2)
    n, m = 8, 3
    features = rng.standard_normal((n, 5))
    theta = features @ features.T + 0.1 * np.eye(n)
    probe = theta[:m, :m]  # Θ_probe: a principal submatrix of Θ
    lambda_train = np.linalg.eigvalsh(theta / n)[0]
    lambda_probe = np.linalg.eigvalsh(probe / m)[0]
    rows = [{"step": 0, "ntk_lambda_min": lambda_probe}]
    mu = bounds.pl_constant(rows, train_size=n, probe_size=m)
    assert mu["interlacing_factor"] == pytest.approx(n / m)
    assert mu["mu"] == pytest.approx(m / n * lambda_probe)
    assert lambda_train <= mu["mu"] <= lambda_probe  # Cauchy interlacing
    measured = bounds.pl_constant(
        rows + [{"step": 5, "train_ntk_lambda_min": lambda_train}], train_size=n, probe_size=m
    )
    assert measured["mu"] == pytest.approx(lambda_train)
    assert measured["mu_source"] == "training set"
    assert bounds.pl_constant(rows)["mu"] == pytest.approx(lambda_probe)


def test_step_size_hypothesis_has_the_sharpness_precision_as_slack():
    """η = 1/β₀ with β₀ measured twice (to ~1e-7 apart) meets η ≤ 1/β; 1e-3 past it does not."""
    beta = 0.8536747097969055
    assert bounds.step_size_ok(1.0 / 0.8536746209395244, beta)  # η·β = 1 + 1.04e-7
    assert bounds.step_size_ok(1.0 / beta, beta)
    assert not bounds.step_size_ok(1.001 / beta, beta)
    assert bounds.step_size_ok(1.0 + bounds.STEP_SIZE_RELATIVE_SLACK, 1.0)  # at the edge
    rows = [{"step": 0, "sharpness": beta}, {"step": 10, "sharpness": beta * (1 + 5e-5)}]
    assert stability.sharpness_section(rows, 1.0 / beta)["step_size_ok"] is True
    rows.append({"step": 20, "sharpness": beta * 1.01})
    assert stability.sharpness_section(rows, 1.0 / beta)["step_size_ok"] is False


def test_step_ratio_is_printed_with_the_digits_that_differ_from_the_threshold():
    assert verdict.format_step_ratio(1.0003) == "1.0003"
    assert verdict.format_step_ratio(2.00049) == "2.0005"
    assert verdict.format_step_ratio(1.5) == "1.5"
    assert verdict.format_step_ratio(1.0) == "1"
    assert verdict.format_step_ratio(1.23456) == "1.23"  # three digits when they suffice
    assert verdict.format_step_ratio(1.0012) == "1.001"  # one digit more at a time
    assert verdict.format_step_ratio(1 + 1e-8) == "1"  # at most 8 significant digits
