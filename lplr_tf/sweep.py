"""`lplr-sweep`: run a grid of gin settings × seeds and tabulate the convergence summaries.

    lplr-sweep --gin_file=digits_width_ablation.gin \
        --grid 'fc.build_model.width=[64,256,1024]' --grid 'protocol.gd.learning_rate=[0.5,0.05]' \
        --seeds 3 --workdir=runs/ablation [--parallel K] [--smoke] [--gin_bindings=...]

Every combination of the `--grid` values is run once per seed. A grid entry reads
`configurable.parameter=[v1,v2,...]`; each value is gin text, bound verbatim as
`configurable.parameter = v` (numbers, 'strings', (tuples), True, @references).

Seeds. `--seeds N` runs seeds 0..N-1 (`--seeds 0,4,7` runs those). Seed s is bound to
`numerics.seed` (the global TF/NumPy/Python seed), to the `seed` parameter of the model
builder that `experiment.run.model` references (its weight initialization, e.g.
`fc.build_model.seed`, `resnet.build_model.seed`), and to the `seed` parameter of the
protocol that `experiment.run.protocol` references when it has one (`protocol.sgd.seed`:
the order of the mini-batches and the probe subset). The data subset is *not* varied: every
seed trains on the same training set, so the spread across seeds is that of the optimization
(initialization and batch order). `--seed_parameter` (repeatable) replaces this automatic
list by the gin parameters you name, e.g. `--seed_parameter=data.digits.seed`.

Directory layout (names are readable and filesystem-safe; a grid key is shown by its
parameter name, or by a longer dotted suffix when two keys share it):

    workdir/
      sweep.csv, sweep.md          one row per run; sweep.md adds a per-combination table
      sweep_aggregate.csv          min/median/max across seeds per combination
      plots/sweep.png              final drift, kernel drift, PL lower envelope vs the first
                                   grid key, one line per value of the second
      plots/loss_curves.png        L − L* and drift of every run (plots.plot_comparison)
      events.out.tfevents...       TensorBoard HParams config (tensorboard --logdir workdir)
      width=64,learning_rate=0.5/
        seed=0/                    an lplr-train run directory (summary.json, metrics.jsonl,
                                   tb/ with the run's hparams, plots/, train.log if --parallel)

A run whose summary.json holds a final status (converged, max_steps, diverged) is skipped on
a later invocation; a run that raised is recorded with status `error` and its message, and
the sweep goes on (it is run again next time). Runs go in-process one after the other
(gin cleared between runs), or as K subprocesses `python -m lplr_tf.train` with
`--parallel K`. `--smoke` appends smoke.gin to the gin files (tiny, fast runs).
"""

import argparse
import ast
import csv
import dataclasses
import inspect
import itertools
import math
import os
import re
import subprocess
import sys
import time

import numpy as np

from lplr_tf import report

FINAL_STATUSES = ("converged", "max_steps", "diverged")
SMOKE_CONFIG = "smoke.gin"
CSV_FILE = "sweep.csv"
MARKDOWN_FILE = "sweep.md"
AGGREGATE_FILE = "sweep_aggregate.csv"
GRID_FORM = "configurable.parameter=[v1,v2,...]"
_KEY = re.compile(r"^[A-Za-z_][\w/]*(\.[A-Za-z_]\w*)+$")

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


# --------------------------------------------------------------------------------------
# The grid.


@dataclasses.dataclass(frozen=True)
class GridKey:
    """One `--grid` entry: a gin parameter and the gin texts of its values."""

    name: str  # e.g. "fc.build_model.width"
    values: tuple  # gin texts, e.g. ("64", "256")


def _split_top_level(body):
    """Splits "a, (b, c), 'd,e'" on the commas outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, []
    for char in body:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts, depth == 0 and quote is None


def parse_grid(text):
    """Parses `configurable.parameter=[v1,v2,...]` into a GridKey.

    Raises:
      ValueError: the text is not of that form (names the value and the expected form).
    """
    def bad(why):
        return ValueError(
            f"--grid {text!r}: {why}; expected the form {GRID_FORM}, e.g. "
            "--grid 'fc.build_model.width=[64,256,1024]' (values are gin text: numbers, "
            "'strings', (tuples), True, @references).")

    if "=" not in text:
        raise bad("no '='")
    name, _, values = (part.strip() for part in text.partition("="))
    if not _KEY.match(name):
        raise bad(f"{name!r} is not a gin parameter name 'configurable.parameter'")
    if not (values.startswith("[") and values.endswith("]")):
        raise bad(f"the values {values!r} are not a bracketed list [v1,v2,...]")
    parts, balanced = _split_top_level(values[1:-1])
    if not balanced:
        raise bad("unbalanced brackets or quotes in the values")
    if any(not part for part in parts):
        raise bad("an empty value in the list")
    for part in parts:
        if part[0] not in "@%":
            try:
                ast.literal_eval(part)
            except (ValueError, SyntaxError) as error:
                raise bad(f"the value {part!r} is not a gin literal (quote strings: "
                          f"'{part}')") from error
    if len(set(parts)) != len(parts):
        raise bad("a value is listed twice")
    return GridKey(name, tuple(parts))


def _labels(keys):
    """Shortest distinct dotted suffix of each key name ("width", "gd.learning_rate")."""
    parts = [k.name.replace("/", ".").split(".") for k in keys]
    labels = []
    for mine in parts:
        for depth in range(1, len(mine) + 1):
            label = ".".join(mine[-depth:])
            if sum(".".join(other[-depth:]) == label for other in parts) == 1:
                break
        labels.append(label)
    return labels


def safe_value(text):
    """A filesystem-safe rendering of a gin value text: '(16, 32)' -> '16-32'."""
    value = re.sub(r"[\s'\"]", "", text)
    value = re.sub(r"[()\[\]{}]", "", value).replace(",", "-").replace("@", "")
    value = re.sub(r"[^A-Za-z0-9._+\-]", "_", value)
    return value or "empty"


def python_value(text):
    """The gin value text as a Python scalar for tables and HParams (str if not scalar)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


def parse_seeds(text):
    """'3' -> (0, 1, 2); '0,4,7' -> (0, 4, 7)."""
    try:
        if "," in str(text):
            seeds = tuple(int(part) for part in str(text).split(",") if part.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError as error:
        raise ValueError(f"--seeds {text!r}: expected a count N (seeds 0..N-1) or a list "
                         "like 0,4,7.") from error
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected N >= 1 or distinct seeds >= 0, e.g. "
                         "--seeds 3 or --seeds 0,4,7.")
    return seeds


@dataclasses.dataclass
class Run:
    """One grid point × seed."""

    settings: dict  # grid key name -> gin text
    label_settings: dict  # label -> gin text (for names and tables)
    seed: int
    workdir: str
    bindings: list  # grid and seed bindings, appended after the user's
    status: str = "pending"
    action: str = "pending"  # ran, skipped or error
    error: str = ""
    summary: dict = None
    seconds: float = 0.0

    @property
    def combination(self):
        return ",".join(f"{k}={safe_value(v)}" for k, v in self.label_settings.items()) \
            or "base"

    @property
    def name(self):
        return f"{self.combination}/seed={self.seed}"


# --------------------------------------------------------------------------------------
# Gin: resolve which parameters take the seed.


def _parse_unfinalized(gin_files, gin_bindings):
    import gin

    from lplr_tf import experiment, train  # noqa: F401  (registers every configurable)

    gin.clear_config()
    gin.add_config_file_search_path(train.shipped_configs_dir())
    paths = [train.resolve_config_file(name) for name in gin_files]
    gin.parse_config_files_and_bindings(paths, gin_bindings, finalize_config=False)


def _has_seed(reference_name):
    import gin

    try:
        reference = gin.query_parameter(reference_name)
    except ValueError:
        return None
    configurable = getattr(reference, "configurable", None)
    if configurable is None:
        return None
    if "seed" in inspect.signature(configurable.wrapped).parameters:
        return f"{reference.selector}.seed"
    return None


def seed_parameters(gin_files, gin_bindings):
    """The gin parameters that receive the seed for this config (module docstring).

    Raises:
      ValueError: the config does not parse (a clear message naming the binding).
    """
    import gin

    try:
        _parse_unfinalized(gin_files, gin_bindings)
        found = ["numerics.seed"]
        for reference in ("experiment.run.model", "experiment.run.protocol"):
            name = _has_seed(reference)
            if name:
                found.append(name)
        return found
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"The sweep's configuration does not parse: {error}\nFix the "
                         "--gin_file, --gin_bindings or --grid named above.") from error
    finally:
        gin.clear_config()


def plan(gin_files, gin_bindings, grid, seeds, workdir, seed_parameter=None):
    """Lists the runs of a sweep (every combination × seed), checking each config parses."""
    keys = list(grid)
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(f"--grid names a parameter twice ({names}); give each parameter "
                         "once with all its values, e.g. --grid 'fc.build_model.width=[64,256]'.")
    labels = _labels(keys)
    runs = []
    for values in itertools.product(*(k.values for k in keys)):
        grid_bindings = [f"{name} = {value}" for name, value in zip(names, values)]
        targets = seed_parameter or seed_parameters(gin_files, list(gin_bindings) + grid_bindings)
        for seed in seeds:
            run = Run(settings=dict(zip(names, values)), label_settings=dict(zip(labels, values)),
                      seed=seed, workdir="", bindings=grid_bindings + [f"{t} = {seed}" for t in targets])
            run.workdir = os.path.join(workdir, run.combination, f"seed={seed}")
            runs.append(run)
    return keys, labels, runs


# --------------------------------------------------------------------------------------
# Running.


def finished_summary(run_dir):
    """The run's summary when it ended with a final status, else None."""
    try:
        summary = report.read_summary(run_dir)
    except ValueError:
        return None
    if summary and summary.get("status") in FINAL_STATUSES:
        return summary
    return None


def _run_in_process(run, gin_files, gin_bindings):
    import gin
    import keras

    from lplr_tf import train

    gin.clear_config()
    try:
        return train.launch(gin_files, list(gin_bindings) + run.bindings, run.workdir)
    finally:
        gin.clear_config()
        keras.backend.clear_session()


def _command(run, gin_files, gin_bindings):
    command = [sys.executable, "-m", "lplr_tf.train", f"--workdir={run.workdir}"]
    command += [f"--gin_file={name}" for name in gin_files]
    command += [f"--gin_bindings={b}" for b in list(gin_bindings) + run.bindings]
    return command


def _log_tail(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = [line.strip() for line in stream if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith(("E", "Traceback")) or "Error" in line]
    return (errors or lines or [""])[-1][:500]


def _finish(run, summary, error=""):
    if summary is not None and summary.get("status") in FINAL_STATUSES:
        run.summary, run.status = summary, summary["status"]
    else:
        run.status, run.action = "error", "error"
        run.error = error or "the run ended without a summary.json"


def execute(runs, gin_files, gin_bindings, parallel=1, log=print):
    """Runs (or skips) every run, filling status, summary, error and action in place."""
    pending = []
    for run in runs:
        summary = finished_summary(run.workdir)
        if summary is not None:
            run.summary, run.status, run.action = summary, summary["status"], "skipped"
            log(f"[sweep] {run.name}: finished before ({run.status}); skipped")
        else:
            pending.append(run)
    if parallel <= 1:
        for index, run in enumerate(pending, start=1):
            log(f"[sweep] ({index}/{len(pending)}) {run.name}")
            start, run.action = time.monotonic(), "ran"
            try:
                summary = _run_in_process(run, gin_files, gin_bindings)
                _finish(run, summary)
            except Exception as error:  # pylint: disable=broad-except  # recorded, sweep goes on
                _finish(run, None, f"{type(error).__name__}: {error}".replace("\n", " ")[:500])
            run.seconds = time.monotonic() - start
            log(f"[sweep] {run.name}: {run.status} {run.error}".rstrip())
        return runs
    queue, active = list(pending), []
    while queue or active:
        while queue and len(active) < parallel:
            run = queue.pop(0)
            os.makedirs(run.workdir, exist_ok=True)
            log_path = os.path.join(run.workdir, "train.log")
            stream = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
            process = subprocess.Popen(_command(run, gin_files, gin_bindings), stdout=stream,
                                       stderr=subprocess.STDOUT)
            run.action = "ran"
            active.append((run, process, stream, log_path, time.monotonic()))
            log(f"[sweep] started {run.name} (pid {process.pid})")
        time.sleep(0.2)
        still = []
        for entry in active:
            run, process, stream, log_path, start = entry
            if process.poll() is None:
                still.append(entry)
                continue
            stream.close()
            run.seconds = time.monotonic() - start
            summary = finished_summary(run.workdir)
            message = "" if summary else f"exit code {process.returncode}: {_log_tail(log_path)}"
            _finish(run, summary, message)
            log(f"[sweep] {run.name}: {run.status} {run.error}".rstrip())
        active = still
    return runs


# --------------------------------------------------------------------------------------
# Tables, plots, HParams.


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
            values = [v for v in (_get(m.summary, getter) for m in members)
                      if isinstance(v, (int, float)) and math.isfinite(v)]
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
            from lplr_tf.analysis import format_rate
            return format_rate(value)
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _markdown(rows, columns, rate_columns=()):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), c in rate_columns) for c in columns)
                     + " |")
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
    columns = ["run", *labels, "seed"] + [c for c, _ in SUMMARY_COLUMNS] + \
        ["action", "error", "workdir"]
    _write_csv(os.path.join(workdir, CSV_FILE), rows, columns)
    combined = aggregate(runs, labels)
    stats = [f"{c}_{s}" for c in AGGREGATED for s in ("min", "median", "max")]
    agg_columns = [*labels, "seeds", "statuses"] + stats
    _write_csv(os.path.join(workdir, AGGREGATE_FILE), combined, agg_columns)
    shown = [*labels, "seed", "status", "fitted_rate", "mu", "mu_cert", "certified",
             "in_local_regime", "final_drift", "kernel_drift", "pl_lower_envelope",
             "final_loss", "action"]
    errors = [r for r in rows if r["status"] == "error"]
    text = ["# Sweep", ""]
    if command:
        text += ["```", command, "```", ""]
    text += [f"{len(rows)} runs; statuses: " + ", ".join(
        f"{s} {sum(r['status'] == s for r in rows)}" for s in sorted({r['status'] for r in rows})),
        "", "## Runs", "", _markdown(rows, shown, RATE_COLUMNS), "",
        "## Across seeds (min / median / max)", ""]
    agg_shown = [*labels, "seeds", "statuses"]
    for column in AGGREGATED:
        for row in combined:
            row[column] = " / ".join(
                _cell(row[f"{column}_{s}"], column in RATE_COLUMNS) for s in ("min", "median", "max"))
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
            curves.append((run.name, report.read_metrics(run.workdir), run.summary))
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
    metrics = [("final_drift", "final ‖θ_T − θ_0‖₂"), ("kernel_drift", "final kernel drift"),
               ("pl_lower_envelope", "PL-ratio lower envelope")]
    figure = Figure(figsize=(15, 4.5))
    axes = figure.subplots(1, len(metrics))
    for axis, (column, title) in zip(axes, metrics):
        getter = dict(SUMMARY_COLUMNS)[column]
        drawn = False
        for series in series_values:
            xs, medians, lows, highs = [], [], [], []
            for position, value in zip(positions, first.values):
                members = [r for r in done if r.settings[first.name] == value
                           and (series is None or r.settings[keys[1].name] == series)]
                values = [v for v in (_get(r.summary, getter) for r in members)
                          if isinstance(v, (int, float)) and math.isfinite(v)]
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
            axis.axhline(runs[0].summary["settings"]["kernel_drift_bound"]
                         if runs[0].summary else 0.5, color="gray", linestyle=":",
                         label="kernel drift bound")
        if numeric and min(positions) > 0 and max(positions) / min(positions) >= 10:
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(positions, [str(v) for v in x_values])
        if drawn and column != "final_drift":
            values = [l.get_ydata() for l in axis.get_lines()]
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

    metric_columns = ("fitted_rate", "mu", "mu_cert", "final_drift", "kernel_drift",
                      "pl_lower_envelope", "final_loss")
    hparams = []
    for key, label in zip(keys, labels):
        values = [python_value(v) for v in key.values]
        if not all(isinstance(v, (bool, int, float, str)) for v in values) or \
                len({type(v) for v in values}) > 1:
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
        writer = tf.summary.create_file_writer(os.path.join(run.workdir, "tb"))
        with writer.as_default(step=int(run.summary.get("steps") or 0)):
            hp.hparams(values, trial_id=run.name)
            for column in metric_columns:
                value = _get(run.summary, dict(SUMMARY_COLUMNS)[column])
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tf.summary.scalar(f"sweep/{column}", float(value))
        writer.close()


@dataclasses.dataclass
class SweepResult:
    """What `run_sweep` did: every run (with status, action, summary), and the table rows."""

    runs: list
    rows: list
    aggregate: list

    @property
    def ran(self):
        return [r for r in self.runs if r.action in ("ran", "error")]

    @property
    def skipped(self):
        return [r for r in self.runs if r.action == "skipped"]


def run_sweep(gin_files, gin_bindings, grid, seeds, workdir, *, parallel=1, smoke=False,
              seed_parameter=None, plot=True, log=print, command=None):
    """Runs a sweep and writes its tables, plots and HParams (module docstring).

    Args:
      gin_files: Gin files (paths or names in gin_configs/).
      gin_bindings: Bindings applied to every run (before the grid and the seed).
      grid: `--grid` texts or GridKey objects.
      seeds: An int N (seeds 0..N-1), a sequence of seeds, or the --seeds text.
      workdir: The sweep directory.
      parallel: Number of concurrent subprocess runs; 1 runs in-process.
      smoke: Append smoke.gin to the gin files.
      seed_parameter: Gin parameters that take the seed; None chooses them (module docstring).
      plot: Draw plots/sweep.png and plots/loss_curves.png.
      log: Callable for progress lines.
      command: The command line, shown at the top of sweep.md.

    Returns:
      A SweepResult.

    Raises:
      ValueError: a malformed grid or seed list, or a configuration that does not parse.
    """
    keys = [k if isinstance(k, GridKey) else parse_grid(k) for k in grid]
    if isinstance(seeds, int):
        seeds = tuple(range(seeds)) if seeds >= 1 else parse_seeds(str(seeds))
    elif isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    gin_files = list(gin_files) + ([SMOKE_CONFIG] if smoke else [])
    if not gin_files:
        raise ValueError("lplr-sweep: no --gin_file given; expected at least one, e.g. "
                         "--gin_file=digits_fc_gd.gin.")
    if not workdir:
        raise ValueError("lplr-sweep: --workdir is required, e.g. --workdir=runs/ablation.")
    if int(parallel) < 1:
        raise ValueError(f"--parallel {parallel}: expected an integer >= 1.")
    keys, labels, runs = plan(gin_files, gin_bindings, keys, seeds, workdir, seed_parameter)
    os.makedirs(workdir, exist_ok=True)
    log(f"[sweep] {len(runs)} runs ({len(runs) // len(seeds)} combinations × {len(seeds)} "
        f"seeds) in {workdir}")
    execute(runs, gin_files, gin_bindings, parallel=int(parallel), log=log)
    rows, combined = write_tables(workdir, runs, labels, command=command)
    if plot:
        plot_sweep(workdir, runs, keys, labels)
    write_hparams(workdir, runs, keys, labels)
    return SweepResult(runs, rows, combined)


def _parser():
    parser = argparse.ArgumentParser(
        prog="lplr-sweep", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin config (path or name in gin_configs/); repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="gin binding applied to every run; repeatable")
    parser.add_argument("--grid", action="append", default=[],
                        help=f"{GRID_FORM}; repeatable, every combination is run")
    parser.add_argument("--seeds", default="1",
                        help="N (seeds 0..N-1) or a list 0,4,7 (default 1)")
    parser.add_argument("--seed_parameter", action="append", default=None,
                        help="gin parameter that takes the seed (repeatable); default: "
                             "numerics.seed, the model builder's and the protocol's seed")
    parser.add_argument("--workdir", required=True, help="sweep directory")
    parser.add_argument("--parallel", type=int, default=1,
                        help="run K subprocesses at once (default 1: in-process)")
    parser.add_argument("--smoke", action="store_true", help="append smoke.gin (tiny runs)")
    parser.add_argument("--no_plots", action="store_true", help="skip the figures")
    return parser


def main(argv=None, log=print):
    """Runs lplr-sweep on argv (without the program name); returns the exit code.

    0: every run finished (converged, max_steps or diverged); 1: some run errored.
    """
    arguments = _parser().parse_args(argv)
    command = "lplr-sweep " + " ".join(
        f"'{a}'" if re.search(r"[\s\[\]()']", a) else a for a in (argv or sys.argv[1:]))
    result = run_sweep(arguments.gin_file, arguments.gin_bindings, arguments.grid,
                       arguments.seeds, arguments.workdir, parallel=arguments.parallel,
                       smoke=arguments.smoke, seed_parameter=arguments.seed_parameter,
                       plot=not arguments.no_plots, log=log, command=command)
    log(f"[sweep] wrote {os.path.join(arguments.workdir, MARKDOWN_FILE)} and {CSV_FILE}: "
        f"{len(result.ran)} ran, {len(result.skipped)} skipped")
    return 1 if any(r.status == "error" for r in result.runs) else 0


def console_main():
    """Entry point of `lplr-sweep`: a configuration error prints one line and exits 2."""
    try:
        code = main(sys.argv[1:])
    except ValueError as error:
        print(f"lplr-sweep: error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    console_main()
