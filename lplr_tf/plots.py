"""The convergence figure of a run, from its metric rows and its summary.

`convergence_figure(rows, summary)` builds it (a `matplotlib.figure.Figure`, nothing written);
`plot_convergence` builds and saves it (plots/convergence.<format>). It takes the rows of
metrics.jsonl and the dict of `analysis.summarize`; a panel whose metrics were not logged
says "not measured" instead of failing. Style, legend placement and saving are `figures`';
the title is the run in words (`run_title`); several runs are compared by `comparison_plot`.

Panels of the convergence figure (each axes is labelled, `Axes.get_label()`, by its key):
  (a) "suboptimality": g_t = L_t − L* (log) with the rate fit over its window, the bound curve
      (L₀ − L*)·ρ_bound^t, the linearized model's L^lin_t − L* and the tolerance;
  (b) "pl_ratio": q_t = ‖∇L‖²/(2(L − L*)) inside the band [λ_min(K_t), λ_max(K_t)];
  (c) "spectrum": λ_min(K_t), λ_max(K_t), the sharpness β_t and the Gauss–Newton λ_max
      (equal to λ_max(K_t) for the squared loss: one line, said so in the legend) vs 2/η;
  (d) "parameter_drift" ‖θ_t − θ₀‖₂ (right axis: relative to ‖θ₀‖₂) above "kernel_drift"
      ‖K_t − K₀‖_F/‖K₀‖_F with its local-regime bound, on separate axes;
  (e) "local_rate": 1 − ρ_t of the local rates with τ, the fitted rate and the GD bounds.
"""

import math

import numpy as np

from lplr_tf import analysis, figures, run_title
from lplr_tf.figures import COLORS
from lplr_tf.verdict import format_rate

MAX_MARKERS = 24  # per line: markers tell curves apart, not the points (those are the line)


def _every(count, phase=0, stride=1):
    """markevery for at most MAX_MARKERS markers; `phase`/`stride` interleave two curves."""
    step = max(stride, stride * math.ceil(count / (stride * MAX_MARKERS)))
    return (phase, step)


def _loss_panel(axis, rows, summary):
    axis.set_title("(a) suboptimality")
    l_star = summary["l_star"]
    steps, gaps = figures.positive(*figures.series(rows, "loss", l_star))
    if steps.size == 0:
        return figures.not_measured(axis, "loss")
    axis.plot(
        steps,
        gaps,
        "-o",
        color=COLORS["blue"],
        markevery=_every(steps.size),
        label=r"$L_t - L^*$ observed",
    )
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
            color=COLORS["black"],
            label=rf"fit $\hat{{\rho}}$ = {format_rate(fit['rate'])} "
            rf"($R^2$ = {fit['r2']:.3f})",
        )
    rate_bound = summary["bound"]["rate_bound"]
    initial = summary["initial_loss"]
    if rate_bound is not None and 0 < rate_bound and initial is not None and initial > l_star:
        line = np.linspace(steps[0], steps[-1], 200)
        axis.plot(
            line,
            (initial - l_star) * rate_bound ** (line - steps[0]),
            ":",
            color=COLORS["vermillion"],
            linewidth=1.5,
            label=r"bound $(L_0 - L^*)\,\rho_{\mathrm{bound}}^{\,t}$, "
            rf"$\rho_{{\mathrm{{bound}}}}$ = {format_rate(rate_bound)}",
        )
    lin_steps, lin = figures.positive(*figures.series(rows, "loss_linearized", l_star))
    # An exploding prediction (eta * lambda_max(K_0) > 2) is cut where it leaves the plot.
    keep = lin <= 1e3 * gaps.max()
    if keep.any():
        axis.plot(
            lin_steps[keep],
            lin[keep],
            "-.",
            color=COLORS["green"],
            label=r"linearized $L^{\mathrm{lin}}_t - L^*$",
        )
    tolerance = summary["settings"]["tolerance"]
    if tolerance >= 1e-2 * gaps.min():  # only when near the data, not to squash the axis
        axis.axhline(
            tolerance,
            color=COLORS["gray"],
            linewidth=0.8,
            label=f"tolerance {run_title.power_of_ten(tolerance)}",
        )
    axis.set_yscale("log")
    axis.set_xlabel("step $t$")
    axis.set_ylabel(r"$L_t - L^*$")
    axis.legend()


def _pl_panel(axis, rows):
    axis.set_title("(b) PL ratio inside the NTK band")
    steps, ratios = figures.positive(*figures.series(rows, "pl_ratio"))
    if steps.size == 0:
        return figures.not_measured(axis, "PL ratio")
    low_steps, low = figures.series(rows, "ntk_lambda_min")
    high_steps, high = figures.series(rows, "ntk_lambda_max")
    common = np.intersect1d(low_steps, high_steps)
    if common.size:
        lows = np.maximum(low[np.isin(low_steps, common)], 1e-300)
        highs = high[np.isin(high_steps, common)]
        axis.fill_between(
            common,
            lows,
            highs,
            color=COLORS["orange"],
            alpha=0.2,
            linewidth=0,
            label=r"NTK band $[\lambda_{\min}(K_t), \lambda_{\max}(K_t)]$",
        )
        for edge in (lows, highs):  # the band's edges are data too: legends avoid them
            axis.plot(common, edge, "-", color=COLORS["orange"], linewidth=0.8)
    axis.plot(
        steps,
        ratios,
        "-o",
        color=COLORS["blue"],
        markevery=_every(steps.size),
        label=r"PL ratio $q_t$",
    )
    axis.set_yscale("log")
    axis.set_xlabel("step $t$")
    axis.set_ylabel(r"$q_t = \|\nabla L_t\|^2 / (2(L_t - L^*))$")
    axis.legend()


def _coincide(first, second):
    """Whether two (steps, values) series are the same curve (relative 1e-9 at every step)."""
    (a_steps, a), (b_steps, b) = first, second
    if a_steps.size == 0 or not np.array_equal(a_steps, b_steps):
        return False
    return bool(np.all(np.abs(a - b) <= 1e-9 * np.maximum(np.abs(a), np.abs(b))))


def _spectrum_panel(axis, rows, learning_rate):
    axis.set_title(r"(c) spectrum and sharpness vs $2/\eta$")
    low = figures.positive(*figures.series(rows, "ntk_lambda_min"))
    high = figures.positive(*figures.series(rows, "ntk_lambda_max"))
    sharp = figures.positive(*figures.series(rows, "sharpness"))
    gauss_newton = figures.positive(*figures.series(rows, "gn_sharpness"))
    same = _coincide(high, gauss_newton)  # λ_max(G) = λ_max(K) for the squared loss
    high_label = r"$\lambda_{\max}(K_t)$" + (r" = Gauss–Newton $\lambda_{\max}$" if same else "")
    # λ_max(K_t) and β_t often agree to 1e-3: solid with filled markers under dashed with
    # open markers, the markers interleaved, so both stay visible on top of each other.
    curves = [
        (
            low,
            dict(
                fmt="-o",
                color=COLORS["blue"],
                markevery=_every(low[0].size),
                label=r"$\lambda_{\min}(K_t)$",
            ),
        ),
        (
            high,
            dict(
                fmt="-s",
                color=COLORS["orange"],
                markevery=_every(high[0].size, 0, 2),
                label=high_label,
            ),
        ),
        (
            sharp,
            dict(
                fmt="--^",
                color=COLORS["purple"],
                markevery=_every(sharp[0].size, 1, 2),
                markerfacecolor="white",
                label=r"sharpness $\beta_t = \lambda_{\max}(\nabla^2 L_t)$",
            ),
        ),
        (
            gauss_newton,
            dict(
                fmt=":x",
                color=COLORS["green"],
                linewidth=1.5,
                markevery=_every(gauss_newton[0].size),
                label=r"Gauss–Newton $\lambda_{\max}$",
            ),
        ),
    ]
    if same:
        curves.pop()
    drawn = 0
    for (steps, values), style in curves:
        if steps.size:
            fmt = style.pop("fmt")
            axis.plot(steps, values, fmt, **style)
            drawn += 1
    if not drawn:
        return figures.not_measured(axis, "NTK spectrum and sharpness")
    axis.axhline(
        2.0 / learning_rate,
        color=COLORS["vermillion"],
        linestyle="--",
        linewidth=1,
        label=rf"$2/\eta$ = {2 / learning_rate:.3g}",
    )
    axis.set_yscale("log")
    axis.set_xlabel("step $t$")
    axis.set_ylabel("eigenvalue")
    axis.legend()


def _parameter_drift_panel(axis, rows):
    axis.set_title(r"(d) drift of the parameters (top) and of the kernel (bottom)")
    steps, drift = figures.series(rows, "drift")
    if steps.size == 0:
        return figures.not_measured(axis, "parameter drift")
    axis.plot(
        steps,
        drift,
        "-o",
        color=COLORS["blue"],
        markevery=_every(steps.size),
        label=r"$\|\theta_t - \theta_0\|_2$",
    )
    axis.set_ylabel(r"$\|\theta_t - \theta_0\|_2$")
    # The relative drift is the same curve over ‖θ₀‖₂: a second scale, not a second line.
    relative_steps, relative = figures.series(rows, "relative_drift")
    both = np.isin(steps, relative_steps) & (drift > 0)
    ratios = drift[both] / relative[np.isin(relative_steps, steps[both])]
    if ratios.size and np.all(np.isfinite(ratios)) and np.all(ratios > 0):
        norm = float(np.median(ratios))
        right = axis.secondary_yaxis("right", functions=(lambda d: d / norm, lambda r: r * norm))
        right.set_ylabel(r"$\|\theta_t - \theta_0\|_2 / \|\theta_0\|_2$")


def _kernel_drift_panel(axis, rows, kernel_drift_bound):
    steps, kernel = figures.series(rows, "kernel_drift")
    positive = kernel[kernel > 0]
    # A drift far below its bound (> 10× apart) goes on a log scale so both stay readable
    # (K_0's own zero is then left out); else a linear scale from 0.
    spread = max(positive.max(), kernel_drift_bound) / positive.min() if positive.size else 1
    logarithmic = spread > 10.0
    if logarithmic:
        steps, kernel = steps[kernel > 0], positive
    if steps.size == 0:
        axis.set_xlabel("step $t$")
        return figures.not_measured(axis, "kernel drift")
    axis.plot(
        steps,
        kernel,
        "-s",
        color=COLORS["purple"],
        markevery=_every(steps.size),
        label=r"$\|K_t - K_0\|_F / \|K_0\|_F$",
    )
    axis.axhline(
        kernel_drift_bound,
        color=COLORS["vermillion"],
        linestyle=":",
        linewidth=1.5,
        label=f"local-regime bound {kernel_drift_bound:g}",
    )
    if logarithmic:
        axis.set_yscale("log")
    else:
        axis.set_ylim(bottom=0.0)
    axis.set_xlabel("step $t$")
    axis.set_ylabel(r"$\|K_t - K_0\|_F / \|K_0\|_F$")
    axis.legend()


def _local_rate_panel(axis, rows, summary):
    """1 − ρ_t of the local rates (log), with τ, the fitted rate and the GD bounds."""
    axis.set_title(
        r"(e) local rate $1 - \rho_t$, $\rho_t = (g_t / g_{t'})^{1/(t - t')}$ "
        r"between logged steps $t' < t$, $g_t = L_t - L^*$"
    )
    rates = analysis.local_rates(rows, summary)
    if not rates:
        return figures.not_measured(axis, "local rate")
    steps = np.array([s for s, _ in rates], dtype=np.float64)
    values = np.array([r for _, r in rates], dtype=np.float64)
    falling = values < 1.0
    axis.plot(
        steps[falling],
        1.0 - values[falling],
        "-o",
        color=COLORS["blue"],
        markevery=_every(int(falling.sum())),
        label=r"$1 - \rho_t$",
    )
    if not falling.all():
        floor = float(np.min(1.0 - values[falling])) if falling.any() else 1e-6
        axis.plot(
            steps[~falling],
            np.full((~falling).sum(), floor),
            "x",
            color=COLORS["vermillion"],
            markersize=4,
            label=r"$\rho_t \geq 1$ (the loss rose)",
        )
    fit = summary["fit"]
    if fit["rate"] is not None and fit["rate"] < 1.0:
        start, end = fit["window"]
        axis.plot(
            [start, end],
            [1.0 - fit["rate"]] * 2,
            "--",
            color=COLORS["black"],
            label=rf"fit $\hat{{\rho}}$ = {format_rate(fit['rate'])}",
        )
    bound = summary["bound"]
    for key, style, color, label in [
        ("rate_bound", ":", "vermillion", r"$\rho_{\mathrm{bound}} = 1 - \eta\mu$"),
        ("rate_descent", "-.", "purple", r"$\rho_{\mathrm{descent}}$"),
        ("rate_envelope", (0, (5, 2, 1, 2, 1, 2)), "green", r"$\rho_{\mathrm{envelope}}$"),
    ]:
        value = bound.get(key)
        if value is not None and 0.0 < value < 1.0:
            axis.axhline(
                1.0 - value,
                color=COLORS[color],
                linestyle=style,
                linewidth=1.2,
                label=f"{label} = {format_rate(value)}",
            )
    tau = summary["phases"]["transition_step"]
    if tau is not None:
        model = summary["phases"]["model"].replace("_", " ")
        axis.axvline(tau, color=COLORS["gray"], linewidth=1.0, label=rf"$\tau$ = {tau} ({model})")
    axis.set_yscale("log")
    axis.set_xlabel("step $t$")
    axis.set_ylabel(r"$1 - \rho_t$ (contraction per step)")
    axis.legend()


def convergence_figure(rows, summary, title=None):
    """The convergence figure of one run (panels (a)–(e) of the module docstring), unsaved.

    Args:
      rows: Metric rows (dicts with `step`), sorted by step.
      summary: The dict returned by `analysis.summarize` for these rows.
      title: The figure's title; None: the run in words from `summary["run"]`
        (`run_title.run_title`), then how it ended.

    Returns:
      A `matplotlib.figure.Figure` (Agg canvas, constrained layout, legends placed).
    """
    settings = summary["settings"]
    with figures.styled():
        figure = figures.new_figure(7.2, 8.4)
        grid = figure.add_gridspec(3, 2, height_ratios=(1.0, 1.0, 0.8))
        panels = {
            "suboptimality": figure.add_subplot(grid[0, 0]),
            "pl_ratio": figure.add_subplot(grid[0, 1]),
            "spectrum": figure.add_subplot(grid[1, 0]),
        }
        drift_grid = grid[1, 1].subgridspec(2, 1, hspace=0.0)
        panels["parameter_drift"] = figure.add_subplot(drift_grid[0])
        panels["kernel_drift"] = figure.add_subplot(drift_grid[1], sharex=panels["parameter_drift"])
        panels["local_rate"] = figure.add_subplot(grid[2, :])
        for key, axis in panels.items():
            axis.set_label(key)
        panels["parameter_drift"].tick_params(labelbottom=False)
        _loss_panel(panels["suboptimality"], rows, summary)
        _pl_panel(panels["pl_ratio"], rows)
        _spectrum_panel(panels["spectrum"], rows, settings["learning_rate"])
        _parameter_drift_panel(panels["parameter_drift"], rows)
        _kernel_drift_panel(panels["kernel_drift"], rows, settings["kernel_drift_bound"])
        _local_rate_panel(panels["local_rate"], rows, summary)
        heading = title if title is not None else run_title.run_title(summary)
        figure.suptitle(f"{heading}\n{run_title.status_line(summary)}")
        figures.place_legends(figure)
    return figure


def plot_convergence(rows, summary, stem, settings=None, *, title=None):
    """Saves the convergence figure of one run as stem.<format>; returns the paths written.

    Args:
      rows, summary, title: As for `convergence_figure`.
      stem: The path without extension, e.g. "runs/demo/plots/convergence".
      settings: A `figures.FigureSettings` (formats and dpi); None: PNG at the default dpi.
    """
    return figures.save_figure(convergence_figure(rows, summary, title), stem, settings)
