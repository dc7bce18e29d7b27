"""The figure comparing runs: L − L*, kernel drift, parameter drift and relative drift.

`lplr-report` draws it for several run directories (comparison.<format>) and `lplr-sweep`
for every run of a sweep (plots/loss_curves.<format>). Width comparisons are about the drifts:
‖θ_t − θ₀‖₂ stays of order one in the NTK parameterization while ‖θ_t − θ₀‖₂/‖θ₀‖₂ and the
kernel drift ‖K_t − K₀‖_F/‖K₀‖_F shrink with the width. One legend (the runs, with how each
ended) sits outside the panels; style and saving are `figures`'.
"""

from lplr_tf import figures
from lplr_tf.figures import COLORS

# The comparison: one colour and one line style per run, so a printed copy tells them apart.
RUN_STYLES = ("-", "--", "-.", ":")
RUN_COLORS = ("blue", "vermillion", "green", "purple", "orange", "sky", "black", "gray")
COMPARED = (
    ("suboptimality", "loss", r"$L_t - L^*$", "(a) suboptimality"),
    ("kernel_drift", "kernel_drift", r"$\|K_t - K_0\|_F / \|K_0\|_F$", "(b) kernel drift"),
    ("parameter_drift", "drift", r"$\|\theta_t - \theta_0\|_2$", "(c) parameter drift"),
    (
        "relative_drift",
        "relative_drift",
        r"$\|\theta_t - \theta_0\|_2 / \|\theta_0\|_2$",
        "(d) relative parameter drift",
    ),
)


def comparison_figure(runs):
    """A figure comparing runs: L − L* (log), kernel drift, parameter drift and relative drift.

    Args:
      runs: List of (label, rows, summary) triples, one per run.

    Returns:
      A `matplotlib.figure.Figure` with one legend (the runs) outside the panels.
    """
    if not runs:
        raise ValueError(
            "plot_comparison: runs=[]; expected at least one (label, rows, "
            "summary) triple. Pass the runs to compare."
        )
    with figures.styled():
        figure = figures.new_figure(7.2, 5.0)
        axes = figure.subplots(2, 2).ravel()
        handles = {}
        for axis, (key, column, ylabel, panel_title) in zip(axes, COMPARED):
            axis.set_label(key)
            axis.set_title(panel_title)
            drawn = False
            for index, (label, rows, summary) in enumerate(runs):
                offset = summary["l_star"] if column == "loss" else 0.0
                steps, values = figures.series(rows, column, offset)
                if column == "loss":
                    steps, values = figures.positive(steps, values)
                if steps.size == 0:
                    continue
                style = RUN_STYLES[(index // len(RUN_COLORS)) % len(RUN_STYLES)]
                color = COLORS[RUN_COLORS[index % len(RUN_COLORS)]]
                name = f"{label} ({summary['status'].replace('_', ' ')})"
                (line,) = axis.plot(steps, values, style, color=color, label=name)
                handles.setdefault(name, line)
                drawn = True
            if not drawn:
                figures.not_measured(axis, ylabel)
                continue
            if column == "loss":
                axis.set_yscale("log")
            axis.set_xlabel("step $t$")
            axis.set_ylabel(ylabel)
        if handles:
            figure.legend(list(handles.values()), list(handles), loc="outside right upper")
    return figure


def plot_comparison(runs, stem, settings=None):
    """Saves `comparison_figure(runs)` as stem.<format>; returns the paths written."""
    return figures.save_figure(comparison_figure(runs), stem, settings)
