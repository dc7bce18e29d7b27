"""`lplr-report`: recompute a run's summary.json and plots from its metrics.jsonl.

    lplr-report WORKDIR [WORKDIR ...] [--learning_rate η] [--l_star L*] [--output_dir DIR]

For each run directory the analysis settings come from the existing `summary.json`
(`summary["settings"]`); `--learning_rate` / `--l_star` override them, or supply them when
summary.json is missing. The summary is recomputed with `analysis.summarize`, written back
with `write_summary` (the one writer of summary.json, shared with the launcher), and
`plots/convergence.png` is redrawn; the verdict is printed. With several run directories a
markdown comparison table is printed and `comparison.png` is drawn in `--output_dir`.

The metrics reader tolerates a truncated last line (a crash mid-write) by skipping it, and
keeps the last row of a step that appears twice (a resumed run that re-logged a step).
"""

import argparse
import inspect
import json
import os
import sys

from lplr_tf import analysis, plots, verdict

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONVERGENCE_PLOT = os.path.join("plots", "convergence.png")
COMPARISON_PLOT = "comparison.png"
_SETTING_NAMES = tuple(
    name
    for name, parameter in inspect.signature(analysis.summarize).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)


def read_metrics(workdir):
    """Reads `workdir/metrics.jsonl` into a list of dicts sorted by step.

    A last line that is not valid JSON (truncated by a crash) is skipped; a malformed line
    elsewhere is an error. When a step appears more than once, the last row wins.

    Raises:
      FileNotFoundError: the workdir has no metrics.jsonl.
      ValueError: a malformed line before the last one, or a row without `step`.
    """
    path = os.path.join(os.fspath(workdir), METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no metrics file; expected the metrics.jsonl that "
            "lplr-train writes in every run directory. Check the workdir "
            "path, or whether the run started logging."
        )
    with open(path, encoding="utf-8") as stream:
        lines = [line for line in stream.read().split("\n") if line.strip()]
    rows_by_step = {}
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break  # Truncated by a crash mid-write.
            raise ValueError(
                f"{path}:{number}: malformed JSON ({error}); expected one JSON "
                "object per line. Remove or repair that line."
            ) from error
        if not isinstance(row, dict) or row.get("step") is None:
            raise ValueError(
                f"{path}:{number}: row {line[:80]!r} has no `step`; expected a "
                "JSON object with an integer step. Remove or repair that line."
            )
        rows_by_step[int(row["step"])] = row
    return [rows_by_step[step] for step in sorted(rows_by_step)]


def read_summary(workdir):
    """Returns the dict in `workdir/summary.json`, or None when there is none."""
    path = os.path.join(os.fspath(workdir), SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as stream:
        try:
            return json.load(stream)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: malformed JSON ({error}); expected a summary written "
                "by lplr_tf. Delete it and pass --learning_rate (and --l_star) "
                "to recompute it."
            ) from error


def write_summary(workdir, summary):
    """Writes `summary` to `workdir/summary.json` (indent=2, sorted keys, strict JSON).

    The file is written to a temporary name and renamed, so a reader never sees half of it.
    Returns the path written.
    """
    path = os.path.join(os.fspath(workdir), SUMMARY_FILE)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(summary, stream, indent=2, sort_keys=True, allow_nan=False)
        stream.write("\n")
    os.replace(temporary, path)
    return path


def analysis_settings(workdir, *, learning_rate=None, l_star=None):
    """The keyword arguments of `analysis.summarize` for a run directory.

    They come from `summary.json["settings"]`, with `learning_rate` and `l_star` overriding
    them when given (not None).

    Raises:
      ValueError: no learning rate is available from either source.
    """
    previous = read_summary(workdir)
    settings = {}
    if previous is not None:
        stored = previous.get("settings") or {}
        settings = {name: stored[name] for name in _SETTING_NAMES if name in stored}
    if learning_rate is not None:
        settings["learning_rate"] = learning_rate
    if l_star is not None:
        settings["l_star"] = l_star
    if settings.get("learning_rate") is None:
        path = os.path.join(os.fspath(workdir), SUMMARY_FILE)
        found = "has no settings.learning_rate" if previous is not None else "does not exist"
        raise ValueError(
            f"{path} {found}; expected the run's analysis settings there or "
            "the --learning_rate flag. Pass --learning_rate (and --l_star if "
            "L* ≠ 0)."
        )
    return settings


def report_run(workdir, *, learning_rate=None, l_star=None, plot=True):
    """Recomputes one run's summary.json (and plots/convergence.png); returns (rows, summary)."""
    rows = read_metrics(workdir)
    if not rows:
        raise ValueError(
            f"{os.path.join(os.fspath(workdir), METRICS_FILE)} holds no rows; "
            "expected at least one logged step. Let the run log before "
            "reporting on it."
        )
    settings = analysis_settings(workdir, learning_rate=learning_rate, l_star=l_star)
    summary = analysis.summarize(rows, **settings)
    write_summary(workdir, summary)
    if plot:
        plots.plot_convergence(
            rows,
            summary,
            os.path.join(os.fspath(workdir), CONVERGENCE_PLOT),
            title=run_label(workdir),
        )
    return rows, summary


def run_label(workdir):
    """The name of a run: its directory's base name."""
    return os.path.basename(os.path.normpath(os.fspath(workdir)))


def _cell(value, rate=False):
    if rate and value is not None:
        return verdict.format_rate(value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


TABLE_COLUMNS = (
    ("run", lambda s: None),
    ("status", lambda s: s["status"]),
    ("steps", lambda s: s["steps"]),
    ("final_loss", lambda s: s["final_loss"]),
    ("fit rate", lambda s: s["fit"]["rate"]),
    ("r2", lambda s: s["fit"]["r2"]),
    ("μ", lambda s: s["bound"]["mu"]),
    ("rate_bound", lambda s: s["bound"]["rate_bound"]),
    ("μ_cert", lambda s: s["certificate"]["mu_cert"]),
    ("certified", lambda s: s["certificate"]["certified"]),
    ("final drift", lambda s: s["drift"]["final"]),
    ("PL lower envelope", lambda s: s["pl_ratio"]["lower_envelope"]),
    ("sharpness max", lambda s: s["sharpness"]["max"]),
)


RATE_COLUMNS = ("fit rate", "rate_bound")


def comparison_table(runs):
    """A markdown table of key summary fields, one row per (label, summary) pair."""
    lines = [
        "| " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |",
        "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|",
    ]
    for label, summary in runs:
        cells = [label] + [
            _cell(get(summary), rate=name in RATE_COLUMNS) for name, get in TABLE_COLUMNS[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parser():
    parser = argparse.ArgumentParser(
        prog="lplr-report", description="Recompute summary.json and plots of lplr_tf runs."
    )
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories")
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="step size η; overrides summary.json's settings",
    )
    parser.add_argument(
        "--l_star",
        type=float,
        default=None,
        help="optimal loss L*; overrides summary.json's settings",
    )
    parser.add_argument(
        "--output_dir",
        default=".",
        help="where comparison.png goes (several workdirs); default: cwd",
    )
    parser.add_argument("--no_plots", action="store_true", help="skip the figures")
    return parser


def main(argv=None, stdout=None):
    """Runs lplr-report on `argv` (without the program name); returns the exit code."""
    stdout = stdout or sys.stdout
    arguments = _parser().parse_args(argv)
    runs = []
    for workdir in arguments.workdirs:
        rows, summary = report_run(
            workdir,
            learning_rate=arguments.learning_rate,
            l_star=arguments.l_star,
            plot=not arguments.no_plots,
        )
        print(f"{run_label(workdir)}: {summary['verdict']}", file=stdout)
        runs.append((run_label(workdir), rows, summary))
    if len(runs) > 1:
        print("", file=stdout)
        print(comparison_table([(label, summary) for label, _, summary in runs]), file=stdout)
        if not arguments.no_plots:
            os.makedirs(arguments.output_dir, exist_ok=True)
            plots.plot_comparison(runs, os.path.join(arguments.output_dir, COMPARISON_PLOT))
    return 0


def console_main():
    """Entry point of the `lplr-report` console script: errors print one line, exit 1."""
    try:
        code = main(sys.argv[1:])
    except (FileNotFoundError, ValueError) as error:
        print(f"lplr-report: error: {error}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    console_main()
