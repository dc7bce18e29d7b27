"""`lplr-report`: recompute a run's summary.json and plots from its metrics.jsonl.

    lplr-report WORKDIR [WORKDIR ...] [--learning_rate η] [--l_star L*] [--output_dir DIR]

For each run directory the analysis settings come from the existing `summary.json`
(`summary["settings"]`); `--learning_rate` / `--l_star` override them, or supply them when
summary.json is missing. The summary is recomputed with `analysis.summarize`, written back
through `rundir.RunDirectory` (the one reader and writer of the run directory), and
`plots/convergence.png` is redrawn; the verdict is printed. With several run directories a
markdown comparison table is printed and `comparison.png` is drawn in `--output_dir`.
"""

import argparse
import os
import sys

from lplr_tf import analysis, plots, verdict
from lplr_tf.rundir import RunDirectory

COMPARISON_PLOT = "comparison.png"


def stored_settings(run_dir, *, learning_rate=None, l_star=None):
    """The arguments of `analysis.summarize` for a run directory, from its summary.json.

    `learning_rate` and `l_star` override the stored values when given (not None).

    Returns:
      A dict with learning_rate, num_steps and settings (an `analysis.Settings`).

    Raises:
      ValueError: no learning rate is available from either source.
    """
    previous = run_dir.read_summary()
    stored = dict((previous or {}).get("settings") or {})
    if learning_rate is not None:
        stored["learning_rate"] = learning_rate
    if l_star is not None:
        stored["l_star"] = l_star
    if stored.get("learning_rate") is None:
        found = "has no settings.learning_rate" if previous is not None else "does not exist"
        raise ValueError(
            f"{run_dir.summary} {found}; expected the run's analysis settings there or "
            "the --learning_rate flag. Pass --learning_rate (and --l_star if L* ≠ 0)."
        )
    return {
        "learning_rate": stored["learning_rate"],
        "num_steps": stored.get("num_steps"),
        "settings": analysis.Settings.from_dict(stored),
    }


def report_run(workdir, *, learning_rate=None, l_star=None, plot=True):
    """Recomputes one run's summary.json (and plots/convergence.png); returns (rows, summary)."""
    run_dir = RunDirectory(workdir)
    rows = run_dir.read_metrics()
    if not rows:
        raise ValueError(
            f"{run_dir.metrics} holds no rows; expected at least one logged step. Let the "
            "run log before reporting on it."
        )
    arguments = stored_settings(run_dir, learning_rate=learning_rate, l_star=l_star)
    summary = analysis.summarize(rows, **arguments)
    run_dir.write_summary(summary)
    if plot:
        plots.plot_convergence(rows, summary, run_dir.convergence_plot, title=run_dir.name)
    return rows, summary


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
    ("μ_post", lambda s: s["a_posteriori"]["mu_post"]),
    ("μ_post > 0", lambda s: s["a_posteriori"]["positive"]),
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
        print(f"{RunDirectory(workdir).name}: {summary['verdict']}", file=stdout)
        runs.append((RunDirectory(workdir).name, rows, summary))
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
