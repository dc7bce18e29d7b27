"""Tests of lplr_tf.analysis on synthetic histories with closed-form answers."""

import json
import math

import numpy as np
import pytest

from lplr_tf import analysis, verdict
from lplr_tf.ntk import linearized_loss_curve


def geometric_rows(rate=0.99, steps=200, every=10, initial=1.0, **extra):
    """Rows with L_t = initial·rate^t logged every `every` steps, plus constant extras."""
    rows = []
    for step in range(0, steps + 1, every):
        row = {"step": step, "loss": initial * rate**step}
        row.update(extra)
        rows.append(row)
    return rows


def test_geometric_loss_gives_exact_rate_and_r2():
    summary = analysis.summarize(
        geometric_rows(rate=0.97), learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12)
    )
    assert summary["fit"]["rate"] == pytest.approx(0.97, abs=1e-6)
    assert summary["fit"]["r2"] == pytest.approx(1.0, abs=1e-12)
    # The first quarter of the step span is skipped as a transient.
    assert summary["fit"]["window"] == [50, 200]
    assert summary["status"] == "max_steps"
    assert summary["status_step"] is None
    assert summary["steps"] == 200
    assert summary["initial_loss"] == 1.0
    assert summary["final_loss"] == pytest.approx(0.97**200)


def test_transient_is_skipped_and_window_override():
    rows = geometric_rows(rate=0.98, steps=300, every=10)
    # A fast transient over the first 20 steps would bias the fit if included.
    rows[1]["loss"] = 0.3
    rows[2]["loss"] = 0.2
    auto = analysis.summarize(rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12))
    assert auto["fit"]["rate"] == pytest.approx(0.98, abs=1e-6)
    forced = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12, fit_window=(0, 300))
    )
    assert forced["fit"]["window"] == [0, 300]
    assert abs(forced["fit"]["rate"] - 0.98) > 1e-4
    assert forced["fit"]["r2"] < 1.0
    assert forced["settings"]["fit_window"] == [0, 300]
    with pytest.raises(ValueError, match="window"):
        analysis.summarize(rows, learning_rate=0.1, settings=analysis.Settings(fit_window=(50, 10)))


def test_converged_status_and_window_stops_at_floor():
    rows = geometric_rows(rate=0.9, steps=200, every=5)
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-6)
    )
    first = min(s for s in range(0, 201, 5) if 0.9**s <= 1e-6)
    assert summary["status"] == "converged"
    assert summary["status_step"] == first
    assert summary["fit"]["window"][1] < first
    assert summary["fit"]["rate"] == pytest.approx(0.9, abs=1e-6)


def test_l_star_is_subtracted():
    rows = [{"step": s, "loss": 0.5 + 0.95**s} for s in range(0, 101, 5)]
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(l_star=0.5, tolerance=1e-12)
    )
    assert summary["fit"]["rate"] == pytest.approx(0.95, abs=1e-6)
    assert summary["l_star"] == 0.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, 1e9])
def test_diverged_status_and_step(bad):
    rows = geometric_rows(rate=0.99, steps=100, every=10)
    rows[6]["loss"] = bad
    rows[7]["loss"] = bad
    summary = analysis.summarize(rows, learning_rate=0.1)
    assert summary["status"] == "diverged"
    assert summary["status_step"] == 60
    assert summary["loss_bound"] == pytest.approx(1e6)
    assert summary["verdict"].startswith("Diverged at step 60")
    assert summary["fit"]["window"][1] < 60
    json.dumps(summary, allow_nan=False)


def test_explicit_loss_bound_and_incomplete_status():
    rows = geometric_rows(rate=1.01, steps=100, every=10)
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(loss_bound=2.0)
    )
    assert summary["status"] == "diverged"
    assert summary["status_step"] == 70  # 1.01^70 ≈ 2.007 > 2
    running = analysis.summarize(geometric_rows(steps=100), learning_rate=0.1, num_steps=500)
    assert running["status"] == "incomplete"
    assert running["settings"]["num_steps"] == 500


def test_pl_ratio_statistics_against_numpy():
    rng = np.random.default_rng(0)
    rows = geometric_rows(rate=0.98, steps=200, every=10)
    values = rng.uniform(0.1, 2.0, size=len(rows))
    for row, value in zip(rows, values):
        row["pl_ratio"] = float(value)
    rows[3]["pl_ratio"] = None
    rows[4]["pl_ratio"] = float("nan")
    kept = np.array([v for i, v in enumerate(values) if i not in (3, 4)])
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12)
    )
    assert summary["pl_ratio"]["min"] == pytest.approx(kept.min())
    assert summary["pl_ratio"]["median"] == pytest.approx(np.median(kept))
    start, end = summary["fit"]["window"]
    envelope = min(
        v
        for row, v in zip(rows, values)
        if start <= row["step"] <= end
        and isinstance(row["pl_ratio"], float)
        and math.isfinite(row["pl_ratio"])
    )
    assert summary["pl_ratio"]["lower_envelope"] == pytest.approx(envelope)


def test_drift_fields():
    rows = geometric_rows(steps=40, every=10)
    for row, drift in zip(rows, [0.0, 0.3, 0.7, 0.5, 0.6]):
        row["drift"] = drift
        row["relative_drift"] = drift / 10
    summary = analysis.summarize(rows, learning_rate=0.1)
    assert summary["drift"] == {
        "final": 0.6,
        "max": 0.7,
        "relative_final": pytest.approx(0.06),
        "kind": "measured",
    }


def probe_rows(
    rate, lambda_min, steps=100, every=10, drift_step=0.01, op_step=0.0, kernel_drift=0.01
):
    """Geometric rows with NTK probes at every logged step."""
    rows = geometric_rows(rate=rate, steps=steps, every=every)
    for index, row in enumerate(rows):
        row.update(
            {
                "drift": drift_step * index,
                "ntk_lambda_min": lambda_min,
                "ntk_lambda_max": 10 * lambda_min,
                "kernel_drift": kernel_drift * index,
                "kernel_drift_op": op_step * index,
            }
        )
    return rows


def test_bound_holds_when_faster_than_bound():
    # rho_bound = 1 − 0.1·0.2 = 0.98 > observed 0.97.
    summary = analysis.summarize(
        probe_rows(0.97, 0.2), learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12)
    )
    bound = summary["bound"]
    assert bound["mu"] == pytest.approx(0.2)
    assert bound["rate_bound"] == pytest.approx(0.98)
    assert bound["holds"] is True and bound["violations"] == []
    assert bound["fitted_rate"] == pytest.approx(0.97, abs=1e-6)


def test_bound_lists_violating_steps():
    rows = probe_rows(0.97, 0.2)
    # A slow stretch: the loss between steps 50 and 60 contracts by 0.99^10 > 0.98^10.
    for row in rows[6:]:
        row["loss"] = 0.97**50 * 0.99**10 * 0.97 ** (row["step"] - 60)
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12)
    )
    assert summary["bound"]["holds"] is False
    assert summary["bound"]["violations"] == [60]
    slow = analysis.summarize(
        probe_rows(0.99, 0.2), learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12)
    )
    assert slow["bound"]["violations"] == list(range(10, 101, 10))


def test_a_posteriori_estimate_with_static_kernel():
    for lambda0, positive in [(0.2, True), (-1e-3, False)]:
        summary = analysis.summarize(probe_rows(0.97, lambda0), learning_rate=0.1)
        post = summary["a_posteriori"]
        assert post["lipschitz_estimate"] == 0.0
        assert post["lambda0"] == lambda0
        assert post["mu_post"] == pytest.approx(lambda0)
        assert post["positive"] is positive
        assert post["kind"] == "estimate" and "not a proof" in post["note"]
        assert summary["regime"]["in_local_regime"] is positive
        assert "certif" not in json.dumps(summary)


def test_a_posteriori_numbers_by_hand():
    rows = probe_rows(0.97, 0.2, steps=30, drift_step=0.1, op_step=0.05)
    rows[2]["kernel_drift_op"] = 0.3  # ratio 0.3/0.2 = 1.5 is the largest
    rows[3]["ntk_lambda_min"] = 0.15
    summary = analysis.summarize(rows, learning_rate=0.1)
    post = summary["a_posteriori"]
    assert post["lipschitz_estimate"] == pytest.approx(1.5)
    assert post["radius"] == pytest.approx(0.3)
    assert post["mu_post"] == pytest.approx(0.2 - 1.5 * 0.3)
    assert post["positive"] is False
    assert summary["regime"]["in_local_regime"] is True
    assert summary["ntk"] == {
        "lambda_min_init": 0.2,
        "lambda_min_min": 0.15,
        "lambda_max_max": pytest.approx(2.0),
        "kernel_drift_final": pytest.approx(0.03),
        "output_mode": "full",
        "path": None,  # the run facts say how the NTK was probed; none given here
        "estimates": [],
        "kind": "measured",
    }


def test_leaving_local_regime_on_kernel_drift():
    rows = probe_rows(0.97, 0.2, kernel_drift=0.2)
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(kernel_drift_bound=0.5)
    )
    regime = summary["regime"]
    assert regime["in_local_regime"] is False
    assert regime["left_step"] == 30  # 0.2·3 = 0.6 > 0.5
    assert summary["verdict"].startswith("Left the local regime at step 30: kernel drift 0.6")
    stayed = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(kernel_drift_bound=5.0)
    )
    assert stayed["verdict"].startswith("Stayed in a locally PL region")


def test_sharpness_section():
    rows = geometric_rows(steps=30, every=10)
    for row, beta in zip(rows, [5.0, 8.0, 25.0, 12.0]):
        row["sharpness"] = beta
    summary = analysis.summarize(rows, learning_rate=0.1)["sharpness"]
    assert summary["max"] == 25.0
    assert summary["eta_times_max"] == pytest.approx(2.5)
    assert summary["step_size_ok"] is False
    assert summary["edge_of_stability"] is True
    calm = analysis.summarize(rows, learning_rate=0.01)["sharpness"]
    assert calm["step_size_ok"] is True and calm["edge_of_stability"] is False


def test_linearized_departure_is_in_residual_space():
    rows = geometric_rows(rate=0.97, steps=100, every=10)
    deviations = [0.0, 0.01, 0.03, 0.08, 0.12, 0.3, 0.2, None, 0.25, 0.4, 0.35]
    for row, deviation in zip(rows, deviations):
        row["linearized_deviation"] = deviation
        # Late in the run the losses are tiny: a loss ratio would be huge, but only the
        # residual deviation counts.
        row["loss_linearized"] = row["loss"] * 50.0
    lin = analysis.summarize(rows, learning_rate=0.1)["linearized"]
    assert lin["departure_step"] == 40
    assert lin["max_deviation"] == pytest.approx(0.4)
    assert lin["threshold"] == 0.1
    strict = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(linearized_threshold=0.35)
    )["linearized"]
    assert strict["departure_step"] == 90
    assert strict["threshold"] == 0.35
    for row in rows:
        row["linearized_deviation"] = 0.005
    close = analysis.summarize(rows, learning_rate=0.1)["linearized"]
    assert close["departure_step"] is None
    assert close["max_deviation"] == pytest.approx(0.005)


def test_minimal_rows_are_none_safe():
    rows = [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]
    summary = analysis.summarize(rows, learning_rate=0.1)
    json.dumps(summary, allow_nan=False)
    assert summary["fit"] == {
        "rate": None,
        "r2": None,
        "window": None,
        "points": 2,
        "log_rate_std_error": None,
        "rate_interval_95": None,
        "window_source": "automatic",
        "kind": "estimate",
    }
    assert summary["phases"]["model"] is None and summary["phases"]["models"] == {}
    assert summary["pl_ratio"] == {
        "min": None,
        "median": None,
        "lower_envelope": None,
        "kind": "measured",
    }
    assert summary["drift"] == {
        "final": None,
        "max": None,
        "relative_final": None,
        "kind": "measured",
    }
    assert {k: v for k, v in summary["ntk"].items() if v is not None} == {
        "output_mode": "full",
        "estimates": [],
        "kind": "measured",
    }
    assert summary["sharpness"]["max"] is None and summary["sharpness"]["step_size_ok"] is None
    assert summary["sharpness"]["progressive_sharpening"]["detected"] is None
    assert summary["bound"]["holds"] is None and summary["bound"]["mu"] is None
    assert summary["bound"]["rate_descent"] is None and summary["bound"]["tightness"] is None
    assert summary["a_posteriori"]["positive"] is None
    assert summary["regime"]["in_local_regime"] is None
    assert summary["linearized"]["departure_step"] is None
    assert summary["a_priori"] is None and summary["run"] is None
    assert summary["verdict"].startswith("Local regime not measured")
    assert summary["settings"] == {
        "learning_rate": 0.1,
        "l_star": 0.0,
        "tolerance": 1e-6,
        "loss_bound": None,
        "fit_window": None,
        "kernel_drift_bound": 0.5,
        "linearized_threshold": 0.1,
        "num_steps": None,
    }


def test_rows_without_loss_key_and_bad_input():
    rows = [{"step": 0, "loss": 1.0}, {"step": 5, "ntk_lambda_min": 0.1}, {"step": 10, "loss": 0.5}]
    assert analysis.summarize(rows, learning_rate=0.1)["status"] == "max_steps"
    with pytest.raises(ValueError, match="rows=\\[\\]"):
        analysis.summarize([], learning_rate=0.1)
    with pytest.raises(ValueError, match="learning_rate=0"):
        analysis.summarize(rows, learning_rate=0)


def test_summary_is_reproducible_from_its_settings():
    rows = probe_rows(0.97, 0.2)
    first = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(fit_window=(20, 80), tolerance=1e-9)
    )
    stored = first["settings"]
    assert stored == {
        "learning_rate": 0.1,
        "num_steps": None,
        "l_star": 0.0,
        "tolerance": 1e-9,
        "loss_bound": None,
        "fit_window": [20, 80],
        "kernel_drift_bound": 0.5,
        "linearized_threshold": 0.1,
    }
    again = analysis.summarize(
        rows,
        learning_rate=stored["learning_rate"],
        num_steps=stored["num_steps"],
        settings=analysis.Settings.from_dict(stored),
    )
    # The stored settings select the same window: the fit over steps 20..80 of 0.97^t.
    assert again["fit"]["window"] == [20, 80] and again["fit"]["window_source"] == "settings"
    assert again["fit"]["rate"] == pytest.approx(0.97, abs=1e-9) and again["fit"]["points"] == 7
    assert again["bound"]["rate_bound"] == pytest.approx(0.98)


def test_linearized_loss_curve_against_matrix_powers():
    rng = np.random.default_rng(1)
    n, outputs = 4, 2
    m = n * outputs
    factor = rng.standard_normal((m, m))
    kernel0 = factor @ factor.T / m
    residual0 = rng.standard_normal(m)
    eta = 0.5 / np.linalg.eigvalsh(kernel0).max()
    steps = [0, 1, 3, 10, 25]
    expected = []
    for t in steps:
        r_t = np.linalg.matrix_power(np.eye(m) - eta * kernel0, t) @ residual0
        expected.append(r_t @ r_t / (2 * n))
    curve = linearized_loss_curve(kernel0, residual0, eta, steps, n)
    np.testing.assert_allclose(curve, expected, rtol=1e-10)
    assert curve[0] == pytest.approx(residual0 @ residual0 / (2 * n))
    with pytest.raises(ValueError, match="kernel0 shape"):
        linearized_loss_curve(kernel0, residual0[:-1], eta, steps, n)


def test_divergence_bound_default_and_explicit():
    assert analysis.divergence_bound(2.0, 1e-6) == pytest.approx(2e6)
    assert analysis.divergence_bound(0.0, 1e-6) == pytest.approx(1.0)
    assert analysis.divergence_bound(2.0, 1e-6, loss_bound=5.0) == 5.0
    assert analysis.divergence_bound(None, 1e-6) == math.inf


def test_format_rate_is_readable_near_one():
    assert verdict.format_rate(0.9912) == "0.9912"
    assert verdict.format_rate(1 - 3e-8) == "1 − 3e-08"
    assert verdict.format_rate(1 + 2e-6) == "1 + 2e-06"
    assert verdict.format_rate(None) == "n/a"


def test_linearized_loss_curve_overflow_is_inf():
    curve = linearized_loss_curve(np.eye(2) * 10.0, np.ones(2), 1.0, [0, 1000], 1)
    assert curve[0] == pytest.approx(1.0) and curve[1] == np.inf


def test_matrix_free_probes_make_the_ntk_section_an_estimate():
    rows = probe_rows(0.97, 0.2)
    facts = {"ntk_path": "matrix_free", "ntk_estimates": ["trace", "lambda_min"]}
    ntk = analysis.summarize(rows, learning_rate=0.1, run=facts)["ntk"]
    assert (ntk["path"], ntk["estimates"], ntk["kind"]) == (
        "matrix_free",
        ["lambda_min", "trace"],
        "estimate",
    )
