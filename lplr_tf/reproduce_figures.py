"""The figures of REPRODUCTION.md (PNG, Agg canvas, no pyplot), drawn from the runs' records.

* `<experiment>_curves.png`: L − L* (log) of each run with its fitted line ρ̂^t over the
  rate-fit window, and the PL ratio q_t inside the NTK band [λ_min(K_t), λ_max(K_t)] at the
  probes (the paper's suboptimality and PL figures). The width ablation shows width 1024
  (the paper's), or its widest width when 1024 was not run.
* `width_ablation.png`: final drift ‖θ−θ₀‖ (with the paper's two points), relative drift,
  kernel drift and c = η·β₀ against the width, one line per step size (mean; dots: seeds).
* `pl_envelope.png`: the ablation's PL envelope per width and step size (bars: mean; whiskers:
  min … max over seeds).

Each run's own `plots/convergence.png` (lplr_tf.plots) and each sweep's `plots/sweep.png`
(lplr_tf.sweep_report) are linked from the report beside these.
"""

import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lplr_tf.reproduce import FIXED_STEP, SMALL_STEP, WIDTH_ABLATION
from lplr_tf.rundir import RunDirectory
from lplr_tf.verdict import format_rate

FIGURES_DIR = "figures"
STEP_STYLE = {FIXED_STEP: ("tab:red", "fixed η"), SMALL_STEP: ("tab:blue", "η = 0.5/β₀")}


def _save(figure, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.tight_layout()
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=100)
    return path


def _series(rows, key):
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(float(row["step"]))
            values.append(float(value))
    return np.asarray(steps), np.asarray(values)


def _draw_curve(axis, rows, summary, label, color):
    """L − L* with the fitted line over the fit window (same fit as lplr_tf.plots)."""
    steps, losses = _series(rows, "loss")
    gaps = losses - summary["l_star"]
    keep = gaps > 0
    axis.plot(steps[keep], gaps[keep], "-", color=color, alpha=0.8, label=label)
    fit = summary["fit"]
    if fit.get("rate") and fit["rate"] > 0 and fit.get("window"):
        start, end = fit["window"]
        inside = keep & (steps >= start) & (steps <= end)
        if inside.any():
            slope = math.log(fit["rate"])
            intercept = float(np.mean(np.log(gaps[inside]) - slope * steps[inside]))
            line = np.linspace(start, end, 20)
            axis.plot(line, np.exp(intercept + slope * line), "--", color="black", linewidth=1)


def _draw_band(axis, rows, label, color):
    """The PL ratio q_t and the NTK band [λ_min(K_t), λ_max(K_t)] at the probes."""
    low_steps, low = _series(rows, "ntk_lambda_min")
    high_steps, high = _series(rows, "ntk_lambda_max")
    common = np.intersect1d(low_steps, high_steps)
    if common.size:
        axis.fill_between(
            common,
            np.maximum(low[np.isin(low_steps, common)], 1e-300),
            high[np.isin(high_steps, common)],
            color=color,
            alpha=0.15,
        )
    steps, ratios = _series(rows, "pl_ratio")
    keep = ratios > 0
    axis.plot(steps[keep], ratios[keep], "-", color=color, label=f"{label}: q_t (band: NTK)")


def curves_figure(path, entries, title):
    """Suboptimality with fits (left) and PL ratio in the NTK band (right).

    Args:
      path: The PNG to write.
      entries: (label, color, rows, summary, with_band) per run.
      title: The figure's title.
    """
    figure = Figure(figsize=(12, 4.5))
    left, right = figure.subplots(1, 2)
    for label, color, rows, summary, with_band in entries:
        _draw_curve(left, rows, summary, f"{label}, ρ̂ = {format_rate(summary['fit']['rate'])}"
                    if summary["fit"].get("rate") else label, color)  # fmt: skip
        if with_band:
            _draw_band(right, rows, label, color)
    for axis, ylabel, name in (
        (left, "L − L* (dashed: fitted ρ̂^t)", "suboptimality"),
        (right, "q = ‖∇L‖²/(2(L − L*)); λ(K_t)", "PL ratio inside the NTK band"),
    ):
        axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_ylabel(ylabel)
        axis.set_title(name)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def _by_width(found, name, step):
    """(widths, mean per width, [(width, value) per seed]) of one field at one step size."""
    points = [
        (r.width, r.c if name == "c" else r.value(name))
        for r in found
        if r.step == step and r.summary is not None and r.status != "diverged"
    ]
    points = [(w, v) for w, v in points if v is not None]
    widths = sorted({w for w, _ in points})
    means = [float(np.mean([v for w2, v in points if w2 == w])) for w in widths]
    return widths, means, points


def ablation_figure(path, found, paper, paper_width):
    """Drift, relative drift, kernel drift and c = η·β₀ against the width."""
    panels = (
        ("final_drift", "final drift ‖θ−θ₀‖₂", True),
        ("relative_drift", "relative drift ‖θ−θ₀‖₂/‖θ₀‖₂", True),
        ("kernel_drift", "kernel drift ‖K−K₀‖_F/‖K₀‖_F", False),
        ("c", "c = η·β₀ (step in units of 1/β₀)", True),
    )
    figure = Figure(figsize=(18, 4.5))
    axes = figure.subplots(1, len(panels))
    for axis, (name, title, logarithmic) in zip(axes, panels):
        for step, (color, label) in STEP_STYLE.items():
            widths, means, points = _by_width(found, name, step)
            if not widths:
                continue
            axis.plot(widths, means, "o-", color=color, label=label)
            axis.plot([w for w, _ in points], [v for _, v in points], ".", color=color, alpha=0.4)
            if name == "final_drift" and paper_width in widths:
                axis.plot([paper_width], [paper[step]], "*", color=color, markersize=14,
                          markeredgecolor="black", label=f"paper, {label}")  # fmt: skip
        if name == "kernel_drift":
            axis.axhline(0.5, color="gray", linestyle=":", label="local-regime bound 0.5")
        if name == "c":
            axis.axhline(1.0, color="gray", linestyle=":", label="c = 1 (η = 1/β₀)")
            axis.axhline(2.0, color="black", linestyle="--", label="c = 2 (edge of stability)")
        axis.set_xscale("log", base=2)
        if logarithmic:
            axis.set_yscale("log")
        axis.set_xlabel("width")
        axis.set_title(title, fontsize=9)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="best")
    figure.suptitle("Width ablation (mean over seeds; dots: seeds; stars: the paper)", fontsize=10)
    return _save(figure, path)


def envelope_figure(path, found):
    """The PL envelope per width and step size: bars (mean) with min … max whiskers."""
    figure = Figure(figsize=(9, 4.5))
    axis = figure.subplots()
    widths = sorted({r.width for r in found if r.width is not None})
    positions = np.arange(len(widths))
    for offset, (step, (color, label)) in zip((-0.2, 0.2), STEP_STYLE.items()):
        means, lows, highs = [], [], []
        for width in widths:
            values = [
                r.value("pl_lower_envelope")
                for r in found
                if r.width == width and r.step == step and r.value("pl_lower_envelope") is not None
            ]
            mean = float(np.mean(values)) if values else np.nan
            means.append(mean)
            lows.append(mean - min(values) if values else 0.0)
            highs.append(max(values) - mean if values else 0.0)
        axis.bar(positions + offset, means, width=0.4, color=color, alpha=0.7, label=label,
                 yerr=[lows, highs], capsize=3)  # fmt: skip
    axis.set_xticks(positions, [str(w) for w in widths])
    axis.set_yscale("log")
    axis.set_xlabel("width")
    axis.set_ylabel("PL envelope: min q_t on the fit window")
    axis.set_title("Width ablation: PL lower envelope (bars: mean; whiskers: min … max)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def _rows(record):
    try:
        return RunDirectory(record.workdir).read_metrics()
    except (FileNotFoundError, ValueError):
        return None


def _curve_entries(members, colors=None):
    entries = []
    for index, record in enumerate(members):
        rows = _rows(record)
        if rows is None or record.summary is None:
            continue
        color = (colors or {}).get(record.step) or f"C{index % 10}"
        label = (
            f"seed {record.seed}"
            if colors is None
            else f"{STEP_STYLE[record.step][1]}, seed {record.seed}"
        )
        # One NTK band per step size (the first seed's): more would hide each other.
        with_band = colors is None or record.seed == members[0].seed
        entries.append((label, color, rows, record.summary, with_band))
    return entries


def draw_all(workdir, plan, found, paper, paper_width):
    """Draws every figure; returns [(caption, path)] in the order the report shows them."""
    directory = os.path.join(workdir, FIGURES_DIR)
    figures = []
    for experiment in plan:
        members = found[experiment.name]
        if experiment.name == WIDTH_ABLATION:
            widths = sorted({r.width for r in members})
            if not widths:
                continue
            shown = paper_width if paper_width in widths else widths[-1]
            chosen = [r for r in members if r.width == shown]
            chosen.sort(key=lambda r: (r.step != FIXED_STEP, r.seed))
            colors = {step: style[0] for step, style in STEP_STYLE.items()}
            entries = _curve_entries(chosen, colors)
            title = f"{experiment.title}: width {shown}"
            path = os.path.join(directory, f"{experiment.name}_curves.png")
            figures.append((title, curves_figure(path, entries, title)))
            path = os.path.join(directory, "width_ablation.png")
            figures.append(
                (
                    "Width ablation: drift, kernel drift and c = η·β₀ against the width",
                    ablation_figure(path, members, paper, paper_width),
                )
            )
            path = os.path.join(directory, "pl_envelope.png")
            caption = "Width ablation: PL envelope per width and step size"
            figures.append((caption, envelope_figure(path, members)))
            sweep_plot = os.path.join(workdir, experiment.directory, "plots", "sweep.png")
            if os.path.exists(sweep_plot):
                figures.append(("Width ablation: lplr-sweep's summary plot", sweep_plot))
            continue
        entries = _curve_entries(members)
        if entries:
            path = os.path.join(directory, f"{experiment.name}_curves.png")
            figures.append((experiment.title, curves_figure(path, entries, experiment.title)))
        for record in members:
            plot = RunDirectory(record.workdir).convergence_plot
            if os.path.exists(plot):
                figures.append((f"{experiment.name}, seed {record.seed}: every panel", plot))
    return figures
