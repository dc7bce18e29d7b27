"""The tables, figures and TensorBoard HParams of a finished sweep (see `lplr_tf.sweep`).

sweep.csv, sweep.md     one row per run (settings, seed, status, the key summary fields);
                        sweep.md adds min/median/max across seeds per combination
sweep_aggregate.csv     those min/median/max
plots/sweep.png         final drift, kernel drift, PL lower envelope vs the first grid key
plots/loss_curves.png   every run's loss and drift
"""

import ast
import csv
import math
import os

import numpy as np

from lplr_tf.rundir import RunDirectory

CSV_FILE = "sweep.csv"
MARKDOWN_FILE = "sweep.md"
AGGREGATE_FILE = "sweep_aggregate.csv"


def python_value(text):
    """The gin value text as a Python scalar for tables and HParams (str if not scalar)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


# (column, summary getter) of the per-run table, after the grid settings and the seed.
SUMMARY_COLUMNS = (
    ("status", lambda s: s.get("status")),
    ("steps", lambda s: s.get("steps")),
    ("fitted_rate", lambda s: s["fit"]["rate"]),
    ("fit_r2", lambda s: s["fit"]["r2"]),
    ("mu", lambda s: s["bound"]["mu"]),
    ("rate_bound", lambda s: s["bound"]["rate_bound"]),
    ("mu_cert", lambda s: s["certificate"]["mu_cert"]),
    ("certified", lambda s: s["certificate"]["certified"]),
    ("in_local_regime", lambda s: s["certificate"]["in_local_regime"]),
    ("final_drift", lambda s: s["drift"]["final"]),
    ("relative_drift", lambda s: s["drift"]["relative_final"]),
    ("kernel_drift", lambda s: s["ntk"]["kernel_drift_final"]),
    ("pl_lower_envelope", lambda s: s["pl_ratio"]["lower_envelope"]),
    ("sharpness_max", lambda s: s["sharpness"]["max"]),
    ("final_loss", lambda s: s.get("final_loss")),
)
AGGREGATED = ("fitted_rate", "final_drift", "kernel_drift", "pl_lower_envelope")
RATE_COLUMNS = ("fitted_rate", "rate_bound")


def _get(summary, getter):
    if not summary:
        return None
    try:
        return getter(summary)
    except (KeyError, TypeError):
        return None


def run_row(run):
    """The CSV row of one run: name, grid settings, seed, summary fields, error, workdir."""
    row = {"run": run.name}
    row.update({label: python_value(v) for label, v in run.label_settings.items()})
    row["seed"] = run.seed
    for column, getter in SUMMARY_COLUMNS:
        row[column] = _get(run.summary, getter)
    row["status"] = run.status
    row["action"] = run.action
    row["error"] = run.error
    row["workdir"] = run.workdir
    return row


def aggregate(runs, labels):
    """Per combination: min/median/max across seeds of AGGREGATED (finite values only)."""
    groups = {}
    for run in runs:
        groups.setdefault(run.combination, []).append(run)
    table = []
    for combination, members in groups.items():
        row = {label: python_value(members[0].label_settings[label]) for label in labels}
        row["combination"] = combination
        row["seeds"] = len(members)
        row["statuses"] = " ".join(sorted({m.status for m in members}))
        for column in AGGREGATED:
            getter = dict(SUMMARY_COLUMNS)[column]
            values = [
                v
                for v in (_get(m.summary, getter) for m in members)
                if isinstance(v, (int, float)) and math.isfinite(v)
            ]
            row[f"{column}_min"] = min(values) if values else None
            row[f"{column}_median"] = float(np.median(values)) if values else None
            row[f"{column}_max"] = max(values) if values else None
        table.append(row)
    return table


def _cell(value, rate=False):
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if rate:
            from lplr_tf.verdict import format_rate

            return format_rate(value)
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _markdown(rows, columns, rate_columns=()):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append(
            "| " + " | ".join(_cell(row.get(c), c in rate_columns) for c in columns) + " |"
        )
    return "\n".join(lines)


def _write_csv(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})


def write_tables(workdir, runs, labels, command=None):
    """Writes sweep.csv, sweep_aggregate.csv and sweep.md; returns (rows, aggregate rows)."""
    rows = [run_row(run) for run in runs]
    columns = (
        ["run", *labels, "seed"] + [c for c, _ in SUMMARY_COLUMNS] + ["action", "error", "workdir"]
    )
    _write_csv(os.path.join(workdir, CSV_FILE), rows, columns)
    combined = aggregate(runs, labels)
    stats = [f"{c}_{s}" for c in AGGREGATED for s in ("min", "median", "max")]
    agg_columns = [*labels, "seeds", "statuses"] + stats
    _write_csv(os.path.join(workdir, AGGREGATE_FILE), combined, agg_columns)
    shown = [
        *labels,
        "seed",
        "status",
        "fitted_rate",
        "mu",
        "mu_cert",
        "certified",
        "in_local_regime",
        "final_drift",
        "kernel_drift",
        "pl_lower_envelope",
        "final_loss",
        "action",
    ]
    errors = [r for r in rows if r["status"] == "error"]
    text = ["# Sweep", ""]
    if command:
        text += ["```", command, "```", ""]
    text += [
        f"{len(rows)} runs; statuses: "
        + ", ".join(
            f"{s} {sum(r['status'] == s for r in rows)}"
            for s in sorted({r["status"] for r in rows})
        ),
        "",
        "## Runs",
        "",
        _markdown(rows, shown, RATE_COLUMNS),
        "",
        "## Across seeds (min / median / max)",
        "",
    ]
    agg_shown = [*labels, "seeds", "statuses"]
    for column in AGGREGATED:
        for row in combined:
            row[column] = " / ".join(
                _cell(row[f"{column}_{s}"], column in RATE_COLUMNS)
                for s in ("min", "median", "max")
            )
        agg_shown.append(column)
    text += [_markdown(combined, agg_shown), ""]
    if errors:
        text += ["## Errors", ""] + [f"- {r['run']}: {r['error']}" for r in errors] + [""]
    with open(os.path.join(workdir, MARKDOWN_FILE), "w", encoding="utf-8") as stream:
        stream.write("\n".join(text))
    return rows, combined


def _numeric(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(workdir, runs, keys, labels):
    """plots/sweep.png (metrics vs the first grid key) and plots/loss_curves.png."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lplr_tf import plots

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
        path = os.path.join(plot_dir, "loss_curves.png")
        plots.plot_comparison(curves, path)
        written.append(path)
    if not keys or not done:
        return written
    first = keys[0]
    x_values = [python_value(v) for v in first.values]
    numeric = _numeric(x_values)
    positions = x_values if numeric else list(range(len(x_values)))
    series_values = keys[1].values if len(keys) > 1 else (None,)
    metrics = [
        ("final_drift", "final ‖θ_T − θ_0‖₂"),
        ("kernel_drift", "final kernel drift"),
        ("pl_lower_envelope", "PL-ratio lower envelope"),
    ]
    figure = Figure(figsize=(15, 4.5))
    axes = figure.subplots(1, len(metrics))
    for axis, (column, title) in zip(axes, metrics):
        getter = dict(SUMMARY_COLUMNS)[column]
        drawn = False
        for series in series_values:
            xs, medians, lows, highs = [], [], [], []
            for position, value in zip(positions, first.values):
                members = [
                    r
                    for r in done
                    if r.settings[first.name] == value
                    and (series is None or r.settings[keys[1].name] == series)
                ]
                values = [
                    v
                    for v in (_get(r.summary, getter) for r in members)
                    if isinstance(v, (int, float)) and math.isfinite(v)
                ]
                if values:
                    xs.append(position)
                    medians.append(float(np.median(values)))
                    lows.append(float(np.median(values) - min(values)))
                    highs.append(float(max(values) - np.median(values)))
            if xs:
                label = None if series is None else f"{labels[1]} = {series}"
                axis.errorbar(xs, medians, yerr=[lows, highs], marker="o", capsize=3, label=label)
                drawn = True
        if column == "kernel_drift":
            axis.axhline(
                runs[0].summary["settings"]["kernel_drift_bound"] if runs[0].summary else 0.5,
                color="gray",
                linestyle=":",
                label="kernel drift bound",
            )
        if numeric and min(positions) > 0 and max(positions) / min(positions) >= 10:
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(positions, [str(v) for v in x_values])
        if drawn and column != "final_drift":
            values = [line.get_ydata() for line in axis.get_lines()]
            if all(np.all(np.asarray(v, float) > 0) for v in values if len(v)):
                axis.set_yscale("log")
        axis.set_xlabel(labels[0])
        axis.set_title(f"{title} (median, min–max over seeds)", fontsize=9)
        if drawn:
            axis.legend(fontsize=7)
    figure.tight_layout()
    FigureCanvasAgg(figure)
    path = os.path.join(plot_dir, "sweep.png")
    figure.savefig(path, format="png", dpi=110)
    written.append(path)
    return written


def write_hparams(workdir, runs, keys, labels):
    """TensorBoard HParams: the config at the sweep root, one session per run in its tb/."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    metric_columns = (
        "fitted_rate",
        "mu",
        "mu_cert",
        "final_drift",
        "kernel_drift",
        "pl_lower_envelope",
        "final_loss",
    )
    hparams = []
    for key, label in zip(keys, labels):
        values = [python_value(v) for v in key.values]
        if (
            not all(isinstance(v, (bool, int, float, str)) for v in values)
            or len({type(v) for v in values}) > 1
        ):
            values = [str(v) for v in values]
        hparams.append(hp.HParam(label, hp.Discrete(values)))
    seeds = sorted({run.seed for run in runs})
    hparams.append(hp.HParam("seed", hp.Discrete(seeds)))
    metrics = [hp.Metric(f"sweep/{c}", display_name=c) for c in metric_columns]
    with tf.summary.create_file_writer(workdir).as_default():
        hp.hparams_config(hparams=hparams, metrics=metrics)
    by_label = {h.name: h for h in hparams}
    for run in runs:
        if run.summary is None:
            continue
        values = {}
        for label, text in run.label_settings.items():
            value = python_value(text)
            domain = by_label[label].domain.values
            values[by_label[label]] = value if value in domain else str(value)
        values[by_label["seed"]] = run.seed
        writer = tf.summary.create_file_writer(RunDirectory(run.workdir).tensorboard)
        with writer.as_default(step=int(run.summary.get("steps") or 0)):
            hp.hparams(values, trial_id=run.name)
            for column in metric_columns:
                value = _get(run.summary, dict(SUMMARY_COLUMNS)[column])
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tf.summary.scalar(f"sweep/{column}", float(value))
        writer.close()
