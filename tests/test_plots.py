"""Tests of lplr_tf.plots: PNG files are written, with and without optional metrics."""

import pytest

from lplr_tf import analysis, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def full_rows(steps=60, every=5):
    rows = []
    for index, step in enumerate(range(0, steps + 1, every)):
        loss = 0.97**step
        rows.append(
            {
                "step": step,
                "loss": loss,
                "grad_norm_sq": 2 * 0.3 * loss,
                "pl_ratio": 0.3,
                "drift": 0.01 * index,
                "relative_drift": 0.001 * index,
                "ntk_lambda_min": 0.2,
                "ntk_lambda_max": 3.0,
                "kernel_drift": 0.01 * index,
                "kernel_drift_op": 0.001 * index,
                "sharpness": 3.5,
                "gn_sharpness": 3.0,
                "loss_linearized": loss * 0.98,
            }
        )
    return rows


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000


@pytest.mark.parametrize("keys", [None, ("step", "loss"), ("step", "loss", "drift")])
def test_plot_convergence_writes_png(tmp_path, keys):
    rows = full_rows()
    if keys is not None:
        rows = [{k: row[k] for k in keys} for row in rows]
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-12)
    )
    path = tmp_path / "plots" / "convergence.png"
    plots.plot_convergence(rows, summary, path, title="demo")
    assert_png(path)


def test_plot_convergence_with_diverged_run(tmp_path):
    rows = full_rows()
    rows[5]["loss"] = float("nan")
    rows[6]["loss"] = None
    summary = analysis.summarize(rows, learning_rate=0.1)
    plots.plot_convergence(rows, summary, tmp_path / "diverged.png")
    assert_png(tmp_path / "diverged.png")


def test_plot_comparison(tmp_path):
    first = full_rows()
    second = [{"step": r["step"], "loss": r["loss"] ** 0.5} for r in full_rows()]
    runs = [
        (name, rows, analysis.summarize(rows, learning_rate=0.1))
        for name, rows in [("wide", first), ("narrow", second)]
    ]
    plots.plot_comparison(runs, tmp_path / "comparison.png")
    assert_png(tmp_path / "comparison.png")
    with pytest.raises(ValueError, match="runs=\\[\\]"):
        plots.plot_comparison([], tmp_path / "empty.png")


def test_local_rate_panel_draws_the_analysis_numbers_and_tau():
    from matplotlib.figure import Figure

    tau = 300
    rows = [
        {
            "step": s,
            "loss": (1.0 + s) ** -1.0 if s <= tau else (1.0 + tau) ** -1.0 * 0.99 ** (s - tau),
        }
        for s in range(0, 1001, 10)
    ]
    rows[50]["loss"] *= 3.0  # one rise: drawn as a marker, not on the log axis
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=analysis.Settings(tolerance=1e-30)
    )
    axis = Figure().add_subplot()
    plots._local_rate_panel(axis, rows, summary)
    rates = analysis.local_rates(rows, summary)
    falling = [(s, r) for s, r in rates if r < 1]
    line = axis.get_lines()[0]
    assert list(line.get_xdata()) == [s for s, _ in falling]
    assert list(line.get_ydata()) == pytest.approx([1 - r for _, r in falling])
    rises = [ln for ln in axis.get_lines() if ln.get_label().startswith("ρ_t ≥ 1")]
    assert list(rises[0].get_xdata()) == [500]
    tau_lines = [ln for ln in axis.get_lines() if ln.get_label().startswith("τ = ")]
    assert list(tau_lines[0].get_xdata()) == [summary["phases"]["transition_step"]] * 2
