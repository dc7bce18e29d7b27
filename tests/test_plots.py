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
