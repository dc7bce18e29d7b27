"""Tests of lplr_tf.phases and of the phase-driven rate window, on curves with known truth."""

import math

import numpy as np
import pytest

from lplr_tf import analysis, phases

EVERY = 10
STEPS = np.arange(0, 1001, EVERY, dtype=np.float64)


def noisy(gaps, noise, seed=0):
    """Multiplies g_t by exp(noise·N(0, 1)), as float32 losses and SGD noise perturb them."""
    rng = np.random.default_rng(seed)
    return gaps * np.exp(noise * rng.standard_normal(gaps.shape))


def power_law(p=1.0, scale=2.0):
    return scale * (1.0 + STEPS) ** -p


def exponential(rate=0.99):
    return 0.5 * rate**STEPS


def power_then_exponential(tau=300, p=1.0, rate=0.99):
    at_tau = (1.0 + tau) ** -p
    return np.where(STEPS <= tau, (1.0 + STEPS) ** -p, at_tau * rate ** (STEPS - tau))


def two_exponentials(tau=400, first=0.98, second=0.995):
    return np.where(STEPS <= tau, first**STEPS, first**tau * second ** (STEPS - tau))


CASES = [
    ("power law", power_law(), "sublinear", None),
    ("exponential", exponential(), "linear", None),
    ("power law then exponential", power_then_exponential(tau=300), "sublinear_then_linear", 300),
    ("two exponentials", two_exponentials(tau=400), "two_rate", 400),
    (
        "late switch",
        power_then_exponential(tau=730, p=0.7, rate=0.98),
        "sublinear_then_linear",
        730,
    ),
]


@pytest.mark.parametrize("noise", [0.0, 0.02])
@pytest.mark.parametrize("name, gaps, model, tau", CASES, ids=[c[0] for c in CASES])
def test_selection_and_transition_step(name, gaps, model, tau, noise):
    result = phases.fit_phases(list(zip(STEPS, noisy(gaps, noise))))
    assert result["model"] == model, (name, {k: v["bic"] for k, v in result["models"].items()})
    if tau is None:
        assert result["transition_step"] is None
    else:
        assert abs(result["transition_step"] - tau) <= EVERY  # within one log interval
    assert result["points"] == STEPS.size and result["window"] == [0, 1000]
    assert set(result["models"]) == set(phases.MODELS)
    selected = result["models"][model]
    assert all(selected["bic"] <= fit["bic"] for fit in result["models"].values())


def test_parameters_of_the_true_models():
    exact = phases.fit_phases(list(zip(STEPS, power_then_exponential(tau=300, p=1.3))))
    assert exact["exponent"] == pytest.approx(1.3, rel=1e-6)
    assert exact["rate"] == pytest.approx(0.99, rel=1e-9)
    assert exact["models"]["sublinear_then_linear"]["r2"] == pytest.approx(1.0, abs=1e-12)
    two = phases.fit_phases(list(zip(STEPS, two_exponentials(first=0.97, second=0.996))))
    assert two["rate_before"] == pytest.approx(0.97, rel=1e-9)
    assert two["rate"] == pytest.approx(0.996, rel=1e-9)
    law = phases.fit_phases(list(zip(STEPS, power_law(p=0.5))))
    assert law["exponent"] == pytest.approx(0.5, rel=1e-9) and law["rate"] is None
    # BIC = m·log(RSS/m) + k·log m, by hand for the linear model on the power law.
    logs = np.log(power_law(p=0.5))
    slope, intercept = np.polyfit(STEPS, logs, 1)
    rss = float(np.sum((logs - intercept - slope * STEPS) ** 2))
    m = STEPS.size
    assert law["models"]["linear"]["bic"] == pytest.approx(m * math.log(rss / m) + 2 * math.log(m))
    assert law["models"]["linear"]["parameters"]["rate"] == pytest.approx(math.exp(slope))


def test_segments_keep_three_points_and_few_points():
    points = list(zip(STEPS[:5], two_exponentials()[:5]))
    result = phases.fit_phases(points)
    # With 5 points τ can only be the middle step (3 points on each side, sharing τ).
    assert result["models"]["two_rate"]["parameters"]["transition_step"] == 20
    assert "two_rate" not in phases.fit_phases(points[:4])["models"]
    assert phases.fit_phases(points[:2])["model"] is None


def test_local_rates_are_exact():
    points = [(0, 1.0), (10, 0.5), (30, 0.125), (35, 0.25)]
    rates = phases.local_rates(points)
    assert [s for s, _ in rates] == [10, 30, 35]
    np.testing.assert_allclose([r for _, r in rates], [0.5**0.1, 0.5**0.1, 2**0.2], rtol=1e-14)


def test_rate_fit_standard_error_and_interval():
    rng = np.random.default_rng(4)
    steps = np.arange(0, 100, 10, dtype=np.float64)
    logs = -0.02 * steps + 0.05 * rng.standard_normal(steps.size)
    fit = phases.fit_rate(list(zip(steps, np.exp(logs))))
    coefficients, covariance = np.polyfit(steps, logs, 1, cov=True)
    assert fit["rate"] == pytest.approx(math.exp(coefficients[0]))
    assert fit["log_rate_std_error"] == pytest.approx(math.sqrt(covariance[0, 0]))
    t_quantile = 2.306004135  # Student t, 97.5 %, 8 degrees of freedom
    low, high = fit["rate_interval_95"]
    half = t_quantile * math.sqrt(covariance[0, 0])
    assert low == pytest.approx(math.exp(coefficients[0] - half))
    assert high == pytest.approx(math.exp(coefficients[0] + half))
    assert low < 0.98**1 < high or low < math.exp(-0.02) < high


def rows_from(gaps):
    return [{"step": int(s), "loss": float(g)} for s, g in zip(STEPS, gaps)]


def test_rate_window_becomes_the_last_segment():
    rows = rows_from(power_then_exponential(tau=300, rate=0.99))
    settings = analysis.Settings(tolerance=1e-30)
    summary = analysis.summarize(rows, learning_rate=0.1, settings=settings)
    assert summary["phases"]["model"] == "sublinear_then_linear"
    assert summary["phases"]["transition_step"] == 300
    assert summary["fit"]["window"] == [300, 1000] and summary["fit"]["window_source"] == "phases"
    assert summary["fit"]["rate"] == pytest.approx(0.99, rel=1e-9)
    assert "sublinearly (p = 1) until step 300, then linearly at ρ̂ = 0.99" in summary["verdict"]
    forced = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-30, fit_window=(0, 200))
    )
    assert forced["fit"]["window"] == [0, 200] and forced["fit"]["window_source"] == "settings"
    assert forced["phases"]["transition_step"] == 300  # the phases do not depend on the window
    plain = analysis.summarize(rows_from(exponential()), learning_rate=0.1, settings=settings)
    assert plain["phases"]["model"] == "linear"
    assert plain["fit"]["window"] == [250, 1000] and plain["fit"]["window_source"] == "automatic"


def test_local_rates_of_a_summary_stop_at_floor_and_divergence():
    rows = rows_from(exponential(0.9))
    summary = analysis.summarize(rows, learning_rate=0.1, settings=analysis.Settings())
    rates = analysis.local_rates(rows, summary)
    floor_step = summary["status_step"]
    assert summary["status"] == "converged"
    assert rates[-1][0] < floor_step
    assert all(r == pytest.approx(0.9) for _, r in rates)
    rows = rows_from(exponential(0.99))
    rows[20]["loss"] = float("nan")
    diverged = analysis.summarize(rows, learning_rate=0.1)
    assert diverged["status_step"] == 200
    assert [s for s, _ in analysis.local_rates(rows, diverged)] == list(range(10, 200, 10))


def test_every_model_reports_r2_and_rss_of_its_own_fit_in_log_space():
    """R² = 1 − RSS/Σ(log g − mean log g)² for each model, against NumPy on a noisy curve."""
    rng = np.random.default_rng(3)
    steps = np.arange(0, 400, 10)
    logs = -0.02 * steps + 0.3 * rng.standard_normal(steps.size)  # no model is exact
    result = phases.fit_phases([(int(s), float(math.exp(v))) for s, v in zip(steps, logs)])
    total = np.sum((logs - logs.mean()) ** 2)
    assert len(result["models"]) == 4
    for name, model in result["models"].items():
        assert 0.0 < model["rss"] < total, name
        assert model["r2"] == pytest.approx(1.0 - model["rss"] / total, rel=1e-9), name
    # The linear model's RSS is that of NumPy's least-squares line.
    slope, intercept = np.polyfit(steps, logs, 1)
    rss = np.sum((logs - (intercept + slope * steps)) ** 2)
    assert result["models"]["linear"]["rss"] == pytest.approx(rss, rel=1e-9)
