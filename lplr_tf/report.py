"""`lplr-report`: recompute runs' summary.json and plots from their metrics.jsonl, and compare.

    lplr-report WORKDIR [WORKDIR ...] [--learning_rate=η] [--l_star=L*] [--output_dir=DIR]
        [--formats=pdf,png] [--dpi=300] [--noplots]

For each run directory the analysis settings come from its `summary.json`
(`summary["settings"]`); `--learning_rate` / `--l_star` override them, or supply them when
summary.json is missing. The summary is recomputed with `analysis.summarize`, written back
through `rundir.RunDirectory` and `plots/convergence.png` is redrawn (`--formats`: png, pdf,
svg); the verdict is printed. With several run directories a markdown comparison table is
printed and `comparison.png` is drawn in `--output_dir` (default: the directory that holds
the run directories).

lplr-report never rewrites a finished run's summary from fewer steps than it recorded (a
metrics.jsonl whose last line was truncated, or that lost rows): it stops with a message
saying what is missing and how to repair it.

Exit codes (lplr_tf.errors): 0 done; 1 an unexpected error (traceback); 2 bad input (a
missing or damaged run directory, bad settings): one message naming the value and the fix.
"""

import math
import os
import sys

from absl import flags

from lplr_tf import analysis, comparison_plot, errors, figures, plots, tables
from lplr_tf.errors import ConfigError
from lplr_tf.rundir import RunDirectory

COMPARISON_STEM = "comparison"  # comparison.<format>
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")
COMPARISON_COLUMNS = (
    "status",
    "steps",
    "final_loss",
    "fitted_rate",
    "fit_r2",
    "mu",
    "rate_bound",
    "mu_post",
    "mu_post_positive",
    "final_drift",
    "relative_drift",
    "kernel_drift",
    "pl_lower_envelope",
    "sharpness_max",
)


def _number(value, *, positive=False, optional=False):
    if value is None:
        return optional
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and (value > 0 or not positive)


def _integer(value, *, optional=False):
    if value is None:
        return optional
    return isinstance(value, int) and not isinstance(value, bool)


# What each stored setting must be: (check, what it should be).
SETTING_CHECKS = {
    "learning_rate": (lambda v: _number(v, positive=True), "a positive number"),
    "l_star": (_number, "a number"),
    "tolerance": (lambda v: _number(v, positive=True), "a positive number"),
    "loss_bound": (lambda v: _number(v, positive=True, optional=True), "a positive number or null"),
    "kernel_drift_bound": (lambda v: _number(v, positive=True), "a positive number"),
    "num_steps": (lambda v: _integer(v, optional=True), "an integer or null"),
    "fit_window": (
        lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(map(_integer, v))),
        "null or [first_step, last_step] (integers)",
    ),
}


def _read_previous(run_dir):
    """The stored summary (a dict) or None; raises ConfigError when it is not an object."""
    previous = run_dir.read_summary()
    if previous is not None and not isinstance(previous, dict):
        raise ConfigError(
            f"{run_dir.summary} holds a JSON {type(previous).__name__}; expected the JSON "
            "object lplr-train writes. Delete it and pass --learning_rate (and --l_star) "
            "to lplr-report to recompute it."
        )
    return previous


def stored_settings(run_dir, *, learning_rate=None, l_star=None):
    """The arguments of `analysis.summarize` for a run directory, from its summary.json.

    `learning_rate` and `l_star` override the stored values when given (not None).

    Returns:
      A dict with learning_rate, num_steps, settings (an `analysis.Settings`) and run (the
      facts about the run: run.json, else the copy in summary.json).

    Raises:
      ConfigError: no learning rate from either source, or a stored setting of the wrong
        kind (each named with the value found and what it should be).
    """
    previous = _read_previous(run_dir)
    stored = (previous or {}).get("settings")
    if stored is not None and not isinstance(stored, dict):
        raise ConfigError(
            f"{run_dir.summary}: settings = {stored!r}; expected a JSON object of analysis "
            "settings. Delete summary.json and pass --learning_rate (and --l_star)."
        )
    stored = dict(stored or {})
    if learning_rate is not None:
        stored["learning_rate"] = learning_rate
    if l_star is not None:
        stored["l_star"] = l_star
    if stored.get("learning_rate") is None:
        found = "has no settings.learning_rate" if previous is not None else "does not exist"
        raise ConfigError(
            f"{run_dir.summary} {found}; expected the run's analysis settings there or "
            "the --learning_rate flag. Pass --learning_rate (and --l_star if L* ≠ 0)."
        )
    for key, (check, expected) in SETTING_CHECKS.items():
        if key in stored and not check(stored[key]):
            flag = f"pass --{key} or " if key in ("learning_rate", "l_star") else ""
            raise ConfigError(
                f"{run_dir.summary}: settings.{key} = {stored[key]!r}; expected {expected}. "
                f"Repair that value ({flag}delete summary.json and pass --learning_rate)."
            )
    # run.json is where the launcher records the run's facts; a summary carries a copy.
    run = run_dir.read_facts() or (previous or {}).get("run")
    if run is not None and not isinstance(run, dict):
        raise ConfigError(
            f"{run_dir.summary}: run = {run!r}; expected a JSON object of facts about the run "
            "(protocol, ntk_output_mode, ...) or null. Repair or delete that value."
        )
    return {
        "learning_rate": stored["learning_rate"],
        "num_steps": stored.get("num_steps"),
        "settings": analysis.Settings.from_dict(stored),
        "run": run,
    }


def _refuse_lost_rows(run_dir, rows, previous):
    """Raises ConfigError when metrics.jsonl lacks steps that the finished summary records."""
    if not previous or previous.get("status") not in analysis.FINAL_STATUSES:
        return
    steps = {row["step"] for row in rows}
    recorded, status_step = previous.get("steps"), previous.get("status_step")
    missing = [step for step in (recorded, status_step) if _integer(step) and step not in steps]
    if not missing:
        return
    raise ConfigError(
        f"{run_dir.metrics} has no row for step {missing[0]} (its last step is {max(steps)}), "
        f"but {run_dir.summary} records a run that ended `{previous['status']}` with "
        f"{recorded} steps: rows were lost (e.g. a last line truncated by a crash or a full "
        "disk). Recomputing would rewrite the summary from fewer steps, so lplr-report stops. "
        "Restore metrics.jsonl (e.g. from a backup) or leave summary.json as it is; to "
        "summarize only the rows that remain, delete summary.json and rerun lplr-report with "
        "--learning_rate (and --l_star)."
    )


def report_run(workdir, *, learning_rate=None, l_star=None, plot=True, figure_settings=None):
    """Recomputes one run's summary.json (and plots/convergence.png); returns (rows, summary).

    Raises:
      FileNotFoundError: the directory has no metrics.jsonl.
      ConfigError / ValueError: empty or damaged metrics.jsonl, lost rows of a finished run,
        or missing or damaged settings (one message each, naming the fix).
    """
    run_dir = RunDirectory(workdir)
    rows = run_dir.read_metrics()
    if not rows:
        raise ConfigError(
            f"{run_dir.metrics} holds no rows; expected at least one logged step. Let the "
            "run log before reporting on it."
        )
    arguments = stored_settings(run_dir, learning_rate=learning_rate, l_star=l_star)
    _refuse_lost_rows(run_dir, rows, _read_previous(run_dir))
    summary = analysis.summarize(rows, **arguments)
    run_dir.write_summary(summary)
    if plot:
        plots.plot_convergence(rows, summary, run_dir.convergence_stem, figure_settings)
    return rows, summary


def comparison_table(runs):
    """A markdown table of key summary fields, one row per (label, summary) pair."""
    columns = [tables.Field("run", kind="text")] + [tables.FIELDS[c] for c in COMPARISON_COLUMNS]
    rows = [{"run": label, **tables.summary_row(summary)} for label, summary in runs]
    return tables.markdown_table(rows, columns)


def default_output_dir(workdirs):
    """Where comparison.png goes by default: the directory holding the run directories."""
    parents = [os.path.dirname(os.path.abspath(os.path.normpath(w))) for w in workdirs]
    return os.path.commonpath(parents)


def define_flags():
    """The flags of lplr-report, on their own FlagValues (absl style: --l_star=0)."""
    values = flags.FlagValues()
    define = dict(flag_values=values)
    flags.DEFINE_float(
        "learning_rate", None, "Step size η; overrides summary.json's settings.", **define
    )
    flags.DEFINE_float(
        "l_star", None, "Optimal loss L*; overrides summary.json's settings.", **define
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Where comparison.png goes (with several workdirs); default: the directory that "
        "holds the workdirs.",
        **define,
    )
    flags.DEFINE_bool("plots", True, "Redraw convergence.png and draw comparison.png.", **define)
    flags.DEFINE_list(
        "formats", ["png"], f"Figure formats, one or more of {figures.FORMATS}.", **define
    )
    flags.DEFINE_integer("dpi", figures.FigureSettings.dpi, "Resolution of PNG figures.", **define)
    return values


def usage():
    """The text of `lplr-report --help`: the module docstring and every flag with its help."""
    return __doc__ + "\nFlags:\n" + define_flags().get_help(include_special_flags=False)


def main(argv=None, stdout=None):
    """Runs lplr-report on `argv` (without the program name); returns the exit code."""
    stdout = stdout or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(argument in HELP_FLAGS for argument in argv):
        print(usage(), file=stdout)
        return errors.EXIT_OK
    values = define_flags()
    try:
        workdirs = values(["lplr-report", *argv])[1:]
    except flags.Error as error:
        raise ConfigError(f"{error}. Run `lplr-report --help` for the flags.") from error
    if not workdirs:
        raise ConfigError(
            "lplr-report: no WORKDIR given; expected one or more run directories, e.g. "
            "lplr-report runs/demo."
        )
    settings = figures.settings_from_flags(values.formats, values.dpi)
    runs = []
    for workdir in workdirs:
        rows, summary = report_run(
            workdir,
            learning_rate=values.learning_rate,
            l_star=values.l_star,
            plot=values.plots,
            figure_settings=settings,
        )
        name = RunDirectory(workdir).name
        print(f"{name}: {summary['verdict']}", file=stdout)
        runs.append((name, rows, summary))
    if len(runs) > 1:
        print("", file=stdout)
        print(comparison_table([(label, summary) for label, _, summary in runs]), file=stdout)
        if values.plots:
            output_dir = values.output_dir or default_output_dir(workdirs)
            os.makedirs(output_dir, exist_ok=True)
            paths = comparison_plot.plot_comparison(
                runs, os.path.join(output_dir, COMPARISON_STEM), settings
            )
            print(f"\nComparison figure: {', '.join(paths)}", file=stdout)
    return errors.EXIT_OK


def console_main():
    """Entry point of `lplr-report`: bad input prints one message and exits 2."""
    try:
        code = main(sys.argv[1:])
    except (ValueError, OSError) as error:  # ConfigError, damaged files, missing paths
        print(f"lplr-report: error: {error}", file=sys.stderr)
        code = errors.EXIT_CONFIG_ERROR
    sys.exit(code)


if __name__ == "__main__":
    console_main()
