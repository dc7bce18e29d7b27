"""The tables, figures and TensorBoard HParams of a finished sweep (see `lplr_tf.sweep`).

sweep.csv               one row per run: `run` (its directory relative to the sweep's), the
                        grid settings, seed, every field of `tables.SUMMARY_FIELDS`, action
                        (ran / skipped / error) and error
sweep.md                the runs, and per combination the mean, 95 % Student-t interval and
                        min … max across seeds (`sweep_statistics`); diverged runs are marked
                        and left out of those aggregates
sweep_aggregate.csv     those statistics as numbers
plots/sweep.png         ρ̂, final drift, kernel drift and PL envelope against the first grid
                        key (mean and 95 % interval; dots: seeds; ×: diverged, left out)
plots/loss_curves.png   every run's loss and drifts (`comparison_plot.plot_comparison`)

Nothing here depends on how the runs were executed: the local and Ray backends write the same
files from the same runs.
"""

import csv
import os

from lplr_tf import sweep_statistics, tables
from lplr_tf.rundir import RunDirectory
from lplr_tf.sweep_grid import python_value

CSV_FILE = "sweep.csv"
MARKDOWN_FILE = "sweep.md"
AGGREGATE_FILE = "sweep_aggregate.csv"
SWEEP_PLOT = "sweep"  # plots/sweep.<format>
LOSS_CURVES_PLOT = "loss_curves"

# The per-run columns of sweep.md (sweep.csv has every summary field).
RUN_COLUMNS = (
    "status",
    "phase_model",
    "transition_step",
    "fitted_rate",
    "rate_bound",
    "mu",
    "mu_post",
    "in_local_regime",
    "final_drift",
    "relative_drift",
    "kernel_drift",
    "pl_lower_envelope",
    "final_loss",
)
PLOTTED = ("fitted_rate", "final_drift", "kernel_drift", "pl_lower_envelope")
HPARAMS_METRICS = (
    "fitted_rate",
    "mu",
    "mu_post",
    "final_drift",
    "relative_drift",
    "kernel_drift",
    "pl_lower_envelope",
    "final_loss",
)
LEFT_OUT = "(left out)"


def run_row(run):
    """The CSV row of one run: name, grid settings, seed, summary fields, action, error."""
    row = {"run": run.name}
    row.update({label: python_value(v) for label, v in run.label_settings.items()})
    row["seed"] = run.seed
    row.update(tables.summary_row(run.summary))
    row["status"] = run.status
    row["action"] = run.action
    row["error"] = run.error
    return row


def _write_csv(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})


def _text_columns(names):
    return [tables.Field(name, kind="text") for name in names]


def write_tables(workdir, runs, labels, command=None):
    """Writes sweep.csv, sweep_aggregate.csv and sweep.md; returns (rows, aggregate rows)."""
    rows = [run_row(run) for run in runs]
    columns = ["run", *labels, "seed"] + [f.name for f in tables.SUMMARY_FIELDS]
    _write_csv(os.path.join(workdir, CSV_FILE), rows, columns + ["action", "error"])
    combined = sweep_statistics.aggregate(runs, labels)
    statistics = [
        f"{name}_{key}"
        for name in sweep_statistics.AGGREGATED
        for key in sweep_statistics.STATISTICS
    ]
    aggregate_columns = [*labels, "seeds", "statuses", "left_out", *statistics]
    _write_csv(os.path.join(workdir, AGGREGATE_FILE), combined, aggregate_columns)

    shown = [dict(row) for row in rows]
    for row in shown:
        if row["status"] == "diverged":
            row["status"] = f"diverged {LEFT_OUT}"
    run_columns = _text_columns([*labels, "seed"]) + [tables.FIELDS[c] for c in RUN_COLUMNS]
    statuses = sorted({r["status"] for r in rows})
    text = ["# Sweep", ""]
    if command:
        text += ["```", command, "```", ""]
    text += [
        f"{len(rows)} runs; statuses: "
        + ", ".join(f"{s} {sum(r['status'] == s for r in rows)}" for s in statuses),
        "",
        "## Runs",
        "",
        tables.markdown_table(shown, run_columns + _text_columns(["action"])),
        "",
        "## Across seeds",
        "",
        "Each cell: mean [95 % interval, Student t with n − 1 degrees of freedom] "
        "(min … max) over the seeds of the combination that finished without diverging; "
        "diverged and failed runs are listed under `left_out` and not counted.",
        "",
    ]
    cells = []
    for row in combined:
        cell_row = dict(row)
        for name in sweep_statistics.AGGREGATED:
            cell_row[name] = sweep_statistics.aggregate_cell(row, name)
        cells.append(cell_row)
    aggregate_shown = _text_columns([*labels, "seeds", "statuses", "left_out"])
    aggregate_shown += [
        tables.Field(name, title=tables.FIELDS[name].title, kind="text")
        for name in sweep_statistics.AGGREGATED
    ]
    text += [tables.markdown_table(cells, aggregate_shown), ""]
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        text += ["## Errors", ""] + [f"- {r['run']}: {r['error']}" for r in errors] + [""]
    with open(os.path.join(workdir, MARKDOWN_FILE), "w", encoding="utf-8") as stream:
        stream.write("\n".join(text))
    return rows, combined


def _numeric(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _kernel_drift_bound(runs):
    for run in runs:
        settings = (run.summary or {}).get("settings")
        if isinstance(settings, dict) and settings.get("kernel_drift_bound") is not None:
            return settings["kernel_drift_bound"]
    return None


def _draw_metric(axis, name, runs, keys, labels, positions):
    """One panel: mean and 95 % interval per first-key value, one line per second-key value."""
    first = keys[0]
    series_values = keys[1].values if len(keys) > 1 else (None,)
    for series in series_values:
        xs, means, errors = [], [], [[], []]
        for position, value in zip(positions, first.values):
            members = [
                r
                for r in runs
                if r.settings[first.name] == value
                and (series is None or r.settings[keys[1].name] == series)
            ]
            kept = [r for r in members if sweep_statistics.aggregated(r)]
            values = [tables.summary_value(r.summary, name) for r in kept]
            statistics = sweep_statistics.across_seeds(values)
            if statistics["n"]:
                mean = statistics["mean"]
                low = statistics["ci95_low"] if statistics["ci95_low"] is not None else mean
                high = statistics["ci95_high"] if statistics["ci95_high"] is not None else mean
                xs.append(position)
                means.append(mean)
                errors[0].append(mean - low)
                errors[1].append(high - mean)
                finite = [v for v in values if isinstance(v, (int, float))]
                axis.plot([position] * len(finite), finite, ".", color="gray", alpha=0.5)
            if any(r.status == "diverged" for r in members):
                axis.plot(
                    [position], [0.97], "x", color="tab:red", transform=axis.get_xaxis_transform()
                )
        if xs:
            label = None if series is None else f"{labels[1]} = {series}"
            axis.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=label)


def plot_sweep(workdir, runs, keys, labels, figure_settings=None):
    """plots/sweep.png (metrics vs the first grid key) and plots/loss_curves.png.

    `figure_settings` (a `figures.FigureSettings`) chooses the formats and dpi; the style is
    `figures`', shared with lplr-train and lplr-report.
    """
    from lplr_tf import comparison_plot, figures

    plot_dir = os.path.join(workdir, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    done = [r for r in runs if r.summary is not None]
    written = []
    curves = []
    for run in done:
        try:
            curves.append((run.name, RunDirectory(run.workdir).read_metrics(), run.summary))
        except (FileNotFoundError, ValueError):
            continue
    if curves:
        stem = os.path.join(plot_dir, LOSS_CURVES_PLOT)
        written += comparison_plot.plot_comparison(curves, stem, figure_settings)
    if not keys or not done:
        return written
    x_values = [python_value(v) for v in keys[0].values]
    numeric = _numeric(x_values)
    positions = x_values if numeric else list(range(len(x_values)))
    with figures.styled():  # rcParams are read as the artists are made
        figure = figures.new_figure(1.9 * len(PLOTTED), 2.6)
        for axis, name in zip(figure.subplots(1, len(PLOTTED)), PLOTTED):
            _draw_metric(axis, name, done, keys, labels, positions)
            bound = _kernel_drift_bound(done) if name == "kernel_drift" else None
            if bound is not None:
                axis.axhline(bound, color="gray", linestyle=":", label="kernel drift bound")
            if numeric and min(positions) > 0 and max(positions) / min(positions) >= 10:
                axis.set_xscale("log")
            if not numeric:
                axis.set_xticks(positions, [str(v) for v in x_values])
            axis.set_xlabel(labels[0])
            axis.set_title(f"{tables.FIELDS[name].title}: mean, 95 % interval")
        # One legend for the row of panels, below them: the series are the same in every
        # panel, and a legend inside a 2-inch panel pushed outside collapses its axes.
        entries = {}
        for axis in figure.axes:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        if entries:
            figure.legend(
                list(entries.values()),
                list(entries),
                loc="outside lower center",
                ncols=min(len(entries), 4),
            )
        if any(r.status == "diverged" for r in done):
            figure.suptitle("× : a seed diverged there (left out of the mean)")
    written += figures.save_figure(figure, os.path.join(plot_dir, SWEEP_PLOT), figure_settings)
    return written


def write_hparams(workdir, runs, keys, labels):
    """TensorBoard HParams: the columns at the sweep root, each run's metrics in its tb/.

    Every launcher run writes its own HParams (its operative config, under the full gin names
    it was bound with) when it starts, and TensorBoard keeps the first HParams of a run: the
    sweep names its columns by those gin names (the grid keys and `numerics.seed`) and adds
    the summary metrics as scalars.
    """
    del labels  # the columns carry the gin names the runs' own HParams use
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    hparams = []
    for key in keys:
        values = [python_value(v) for v in key.values]
        if (
            not all(isinstance(v, (bool, int, float, str)) for v in values)
            or len({type(v) for v in values}) > 1
        ):
            values = [str(v) for v in values]
        hparams.append(hp.HParam(key.name, hp.Discrete(values)))
    hparams.append(hp.HParam("numerics.seed", hp.Discrete(sorted({run.seed for run in runs}))))
    metrics = [hp.Metric(f"sweep/{c}", display_name=c) for c in HPARAMS_METRICS]
    with tf.summary.create_file_writer(workdir).as_default():
        hp.hparams_config(hparams=hparams, metrics=metrics)
    for run in runs:
        if run.summary is None:
            continue
        steps = tables.summary_value(run.summary, "steps")
        writer = tf.summary.create_file_writer(RunDirectory(run.workdir).tensorboard)
        with writer.as_default(step=steps if isinstance(steps, int) else 0):
            for column in HPARAMS_METRICS:
                value = tables.summary_value(run.summary, column)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.scalar(f"sweep/{column}", float(value))
        writer.close()
