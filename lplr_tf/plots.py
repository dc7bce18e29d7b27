"""Figures of a run's metric history and summary (PNG, Agg canvas, no display, no pyplot).

`plot_convergence` draws the convergence figure of a run (2×2 panels and a local-rate
strip); `plot_comparison` overlays several runs. Both take the rows of metrics.jsonl and
the dict of `analysis.summarize`; a panel whose metrics were not logged says "not
measured" instead of failing. Figures are built with `matplotlib.figure.Figure` and the Agg
canvas directly, so no global backend or pyplot state is touched.
"""

import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lplr_tf import analysis
from lplr_tf.verdict import format_rate


def _series(rows, key, offset=0.0):
    """Returns (steps, values) float arrays for rows where `key` is a finite number."""
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(float(row["step"]))
            values.append(float(value) - offset)
    return np.asarray(steps), np.asarray(values)


def _not_measured(axis, what):
    axis.text(
        0.5,
        0.5,
        f"{what}: not measured",
        ha="center",
        va="center",
        transform=axis.transAxes,
        fontsize=11,
        color="gray",
    )
    axis.set_xticks([])
    axis.set_yticks([])


def _positive(steps, values):
    keep = values > 0
    return steps[keep], values[keep]


def _loss_panel(axis, rows, summary):
    l_star = summary["l_star"]
    steps, gaps = _positive(*_series(rows, "loss", l_star))
    if steps.size == 0:
        _not_measured(axis, "loss")
        axis.set_title("(a) suboptimality")
        return
    axis.plot(steps, gaps, "o-", markersize=2, label="observed L − L*")
    fit = summary["fit"]
    if fit["rate"] is not None and fit["rate"] > 0:
        start, end = fit["window"]
        inside = (steps >= start) & (steps <= end)
        slope = math.log(fit["rate"])
        intercept = float(np.mean(np.log(gaps[inside]) - slope * steps[inside]))
        line = np.linspace(start, end, 50)
        axis.plot(
            line,
            np.exp(intercept + slope * line),
            "--",
            color="black",
            label=f"fit ρ̂ = {format_rate(fit['rate'])} (R² = {fit['r2']:.3f})",
        )
    rate_bound = summary["bound"]["rate_bound"]
    initial = summary["initial_loss"]
    if rate_bound is not None and 0 < rate_bound and initial is not None and initial > l_star:
        line = np.linspace(steps[0], steps[-1], 200)
        axis.plot(
            line,
            (initial - l_star) * rate_bound ** (line - steps[0]),
            ":",
            color="red",
            label=f"bound (L₀ − L*)·ρ_bound^t, ρ_bound = {format_rate(rate_bound)}",
        )
    lin_steps, lin = _positive(*_series(rows, "loss_linearized", l_star))
    # An exploding prediction (eta * lambda_max(K_0) > 2) is cut where it leaves the plot.
    keep = lin <= 1e3 * gaps.max()
    lin_steps, lin = lin_steps[keep], lin[keep]
    if lin_steps.size:
        axis.plot(lin_steps, lin, "-", color="green", alpha=0.7, label="linearized L^lin − L*")
    tolerance = summary["settings"]["tolerance"]
    if tolerance >= 1e-2 * gaps.min():  # only when near the data, not to squash the axis
        axis.axhline(tolerance, color="gray", linewidth=0.8, label=f"tolerance {tolerance:g}")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("L − L*")
    axis.set_title("(a) suboptimality")
    axis.legend(fontsize=7)


def _pl_panel(axis, rows):
    steps, ratios = _series(rows, "pl_ratio")
    if steps.size == 0:
        _not_measured(axis, "PL ratio")
        axis.set_title("(b) PL ratio inside the NTK band")
        return
    low_steps, low = _series(rows, "ntk_lambda_min")
    high_steps, high = _series(rows, "ntk_lambda_max")
    common = np.intersect1d(low_steps, high_steps)
    if common.size:
        lows = low[np.isin(low_steps, common)]
        highs = high[np.isin(high_steps, common)]
        axis.fill_between(
            common,
            np.maximum(lows, 1e-300),
            highs,
            alpha=0.25,
            color="tab:orange",
            label="NTK band [λ_min(K_t), λ_max(K_t)]",
        )
    axis.plot(*_positive(steps, ratios), "o-", markersize=2, label="PL ratio q_t")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("q = ‖∇L‖² / (2(L − L*))")
    axis.set_title("(b) PL ratio inside the NTK band")
    axis.legend(fontsize=7)


def _spectrum_panel(axis, rows, learning_rate):
    curves = [
        ("ntk_lambda_min", "λ_min(K_t)"),
        ("ntk_lambda_max", "λ_max(K_t)"),
        ("sharpness", "sharpness β = λ_max(∇²L)"),
        ("gn_sharpness", "Gauss–Newton λ_max"),
    ]
    drawn = 0
    for key, label in curves:
        steps, values = _positive(*_series(rows, key))
        if steps.size:
            axis.plot(steps, values, "o-", markersize=2, label=label)
            drawn += 1
    if not drawn:
        _not_measured(axis, "NTK spectrum and sharpness")
        axis.set_title("(c) spectrum and sharpness vs 2/η")
        return
    axis.axhline(
        2.0 / learning_rate, color="red", linestyle="--", label=f"2/η = {2 / learning_rate:.3g}"
    )
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("eigenvalue")
    axis.set_title("(c) spectrum and sharpness vs 2/η")
    axis.legend(fontsize=7)


def _drift_panel(axis, rows, kernel_drift_bound):
    steps, drift = _series(rows, "drift")
    kernel_steps, kernel = _series(rows, "kernel_drift")
    if steps.size == 0 and kernel_steps.size == 0:
        _not_measured(axis, "drift")
        axis.set_title("(d) parameter and kernel drift")
        return
    handles = []
    if steps.size:
        handles += axis.plot(steps, drift, "o-", markersize=2, label="‖θ_t − θ_0‖₂")
    axis.set_xlabel("step")
    axis.set_ylabel("parameter drift ‖θ_t − θ_0‖₂")
    if kernel_steps.size:
        twin = axis.twinx()
        handles += twin.plot(
            kernel_steps,
            kernel,
            "s-",
            markersize=2,
            color="tab:purple",
            label="kernel drift ‖K_t − K_0‖_F / ‖K_0‖_F",
        )
        handles.append(
            twin.axhline(
                kernel_drift_bound,
                color="tab:purple",
                linestyle=":",
                label=f"kernel drift bound {kernel_drift_bound:g}",
            )
        )
        twin.set_ylabel("relative kernel drift")
    axis.set_title("(d) parameter and kernel drift")
    axis.legend(handles=handles, fontsize=7, loc="best")


def _local_rate_panel(axis, rows, summary):
    """1 − ρ_t of the local rates (log), with τ, the fitted rate and the GD bounds."""
    title = "(e) local rate: 1 − ρ_t, ρ_t = (g_t / g_{t'})^{1/(t − t')} between logged steps"
    rates = analysis.local_rates(rows, summary)
    if not rates:
        _not_measured(axis, "local rate")
        axis.set_title(title)
        return
    steps = np.array([s for s, _ in rates], dtype=np.float64)
    values = np.array([r for _, r in rates], dtype=np.float64)
    falling = values < 1.0
    axis.plot(steps[falling], 1.0 - values[falling], "o-", markersize=2, label="1 − ρ_t")
    if not falling.all():
        floor = float(np.min(1.0 - values[falling])) if falling.any() else 1e-6
        axis.plot(
            steps[~falling],
            np.full((~falling).sum(), floor),
            "x",
            color="red",
            label="ρ_t ≥ 1 (the loss rose)",
        )
    fit = summary["fit"]
    if fit["rate"] is not None and fit["rate"] < 1.0:
        start, end = fit["window"]
        axis.plot(
            [start, end],
            [1.0 - fit["rate"]] * 2,
            "--",
            color="black",
            label=f"fit ρ̂ = {format_rate(fit['rate'])}",
        )
    bound = summary["bound"]
    for key, style, label in [
        ("rate_bound", ":", "ρ_bound = 1 − ημ"),
        ("rate_descent", "-.", "ρ_descent"),
        ("rate_envelope", (0, (1, 3)), "ρ_envelope"),
    ]:
        value = bound.get(key)
        if value is not None and 0.0 < value < 1.0:
            axis.axhline(
                1.0 - value,
                color="red",
                linestyle=style,
                linewidth=1,
                label=f"{label} = {format_rate(value)}",
            )
    tau = summary["phases"]["transition_step"]
    if tau is not None:
        axis.axvline(
            tau, color="tab:green", linewidth=1.2, label=f"τ = {tau} ({summary['phases']['model']})"
        )
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("1 − ρ_t (per-step contraction)")
    axis.set_title(title)
    axis.legend(fontsize=7)


def _save(figure, path):
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=110)


def plot_convergence(rows, summary, path, title=None):
    """Saves the convergence figure of one run (2×2 panels and a local-rate strip) as a PNG.

    Panels: (a) L − L* (log) with the fitted line over the window, the bound curve
    (L₀ − L*)·ρ_bound^t and the linearized prediction; (b) the PL ratio inside the band
    [λ_min(K_t), λ_max(K_t)]; (c) λ_min, λ_max and the sharpness against 2/η; (d) parameter
    drift and relative kernel drift (twin axes); (e) the local rate 1 − ρ_t (log) with the
    transition step τ, the fitted rate and the GD bounds.

    Args:
      rows: Metric rows (dicts with `step`), sorted by step.
      summary: The dict returned by `analysis.summarize` for these rows.
      path: Output PNG path; parent directories are created.
      title: Optional run name shown before the settings in the figure title.
    """
    settings = summary["settings"]
    figure = Figure(figsize=(12, 12.5))
    grid = figure.add_gridspec(3, 2)
    axes = [[figure.add_subplot(grid[row, column]) for column in (0, 1)] for row in (0, 1)]
    _loss_panel(axes[0][0], rows, summary)
    _pl_panel(axes[0][1], rows)
    _spectrum_panel(axes[1][0], rows, settings["learning_rate"])
    _drift_panel(axes[1][1], rows, settings["kernel_drift_bound"])
    _local_rate_panel(figure.add_subplot(grid[2, :]), rows, summary)
    head = f"{title} — " if title else ""
    where = (
        f"at step {summary['status_step']}"
        if summary["status_step"] is not None
        else f"after {summary['steps']} steps"
    )
    figure.suptitle(
        f"{head}η = {settings['learning_rate']:g}, L* = {settings['l_star']:g}, "
        f"tolerance = {settings['tolerance']:g}; status {summary['status']} {where}",
        fontsize=12,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    _save(figure, path)


def plot_comparison(runs, path):
    """Saves a PNG comparing runs: L − L* (log) and parameter drift against the step.

    Args:
      runs: List of (label, rows, summary) triples, one per run.
      path: Output PNG path; parent directories are created.
    """
    if not runs:
        raise ValueError(
            "plot_comparison: runs=[]; expected at least one (label, rows, "
            "summary) triple. Pass the runs to compare."
        )
    figure = Figure(figsize=(12, 4.5))
    loss_axis, drift_axis = figure.subplots(1, 2)
    any_loss = any_drift = False
    for label, rows, summary in runs:
        steps, gaps = _positive(*_series(rows, "loss", summary["l_star"]))
        if steps.size:
            loss_axis.plot(steps, gaps, label=f"{label} ({summary['status']})")
            any_loss = True
        steps, drift = _series(rows, "drift")
        if steps.size:
            drift_axis.plot(steps, drift, label=label)
            any_drift = True
    for axis, drawn, what, ylabel in [
        (loss_axis, any_loss, "loss", "L − L*"),
        (drift_axis, any_drift, "drift", "‖θ_t − θ_0‖₂"),
    ]:
        if not drawn:
            _not_measured(axis, what)
            continue
        axis.set_xlabel("step")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=7)
    if any_loss:
        loss_axis.set_yscale("log")
    loss_axis.set_title("suboptimality")
    drift_axis.set_title("parameter drift")
    figure.tight_layout()
    _save(figure, path)
