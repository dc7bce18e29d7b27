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
import dataclasses
import inspect
import itertools
import os
import re
import subprocess
import sys
import time

from lplr_tf import analysis
from lplr_tf.rundir import RunDirectory
from lplr_tf.sweep_report import CSV_FILE, MARKDOWN_FILE, plot_sweep, write_hparams, write_tables

SMOKE_CONFIG = "smoke.gin"
GRID_FORM = "configurable.parameter=[v1,v2,...]"
_KEY = re.compile(r"^[A-Za-z_][\w/]*(\.[A-Za-z_]\w*)+$")


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
            "'strings', (tuples), True, @references)."
        )

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
                raise bad(
                    f"the value {part!r} is not a gin literal (quote strings: '{part}')"
                ) from error
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


def parse_seeds(text):
    """'3' -> (0, 1, 2); '0,4,7' -> (0, 4, 7)."""
    try:
        if "," in str(text):
            seeds = tuple(int(part) for part in str(text).split(",") if part.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError as error:
        raise ValueError(
            f"--seeds {text!r}: expected a count N (seeds 0..N-1) or a list like 0,4,7."
        ) from error
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"--seeds {text!r}: expected N >= 1 or distinct seeds >= 0, e.g. "
            "--seeds 3 or --seeds 0,4,7."
        )
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
        return ",".join(f"{k}={safe_value(v)}" for k, v in self.label_settings.items()) or "base"

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
        raise ValueError(
            f"The sweep's configuration does not parse: {error}\nFix the "
            "--gin_file, --gin_bindings or --grid named above."
        ) from error
    finally:
        gin.clear_config()


def plan(gin_files, gin_bindings, grid, seeds, workdir, seed_parameter=None):
    """Lists the runs of a sweep (every combination × seed), checking each config parses."""
    keys = list(grid)
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(
            f"--grid names a parameter twice ({names}); give each parameter "
            "once with all its values, e.g. --grid 'fc.build_model.width=[64,256]'."
        )
    labels = _labels(keys)
    runs = []
    for values in itertools.product(*(k.values for k in keys)):
        grid_bindings = [f"{name} = {value}" for name, value in zip(names, values)]
        targets = seed_parameter or seed_parameters(gin_files, list(gin_bindings) + grid_bindings)
        for seed in seeds:
            run = Run(
                settings=dict(zip(names, values)),
                label_settings=dict(zip(labels, values)),
                seed=seed,
                workdir="",
                bindings=grid_bindings + [f"{t} = {seed}" for t in targets],
            )
            run.workdir = os.path.join(workdir, run.combination, f"seed={seed}")
            runs.append(run)
    return keys, labels, runs


# --------------------------------------------------------------------------------------
# Running.


def finished_summary(run_dir):
    """The run's summary when it ended with a final status, else None."""
    try:
        summary = RunDirectory(run_dir).read_summary()
    except ValueError:
        return None
    if summary and summary.get("status") in analysis.FINAL_STATUSES:
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
    if summary is not None and summary.get("status") in analysis.FINAL_STATUSES:
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
            process = subprocess.Popen(
                _command(run, gin_files, gin_bindings), stdout=stream, stderr=subprocess.STDOUT
            )
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


def run_sweep(
    gin_files,
    gin_bindings,
    grid,
    seeds,
    workdir,
    *,
    parallel=1,
    smoke=False,
    seed_parameter=None,
    plot=True,
    log=print,
    command=None,
):
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
        raise ValueError(
            "lplr-sweep: no --gin_file given; expected at least one, e.g. "
            "--gin_file=digits_fc_gd.gin."
        )
    if not workdir:
        raise ValueError("lplr-sweep: --workdir is required, e.g. --workdir=runs/ablation.")
    if int(parallel) < 1:
        raise ValueError(f"--parallel {parallel}: expected an integer >= 1.")
    keys, labels, runs = plan(gin_files, gin_bindings, keys, seeds, workdir, seed_parameter)
    os.makedirs(workdir, exist_ok=True)
    log(
        f"[sweep] {len(runs)} runs ({len(runs) // len(seeds)} combinations × {len(seeds)} "
        f"seeds) in {workdir}"
    )
    execute(runs, gin_files, gin_bindings, parallel=int(parallel), log=log)
    rows, combined = write_tables(workdir, runs, labels, command=command)
    if plot:
        plot_sweep(workdir, runs, keys, labels)
    write_hparams(workdir, runs, keys, labels)
    return SweepResult(runs, rows, combined)


def _parser():
    parser = argparse.ArgumentParser(
        prog="lplr-sweep",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin config (path or name in gin_configs/); repeatable",
    )
    parser.add_argument(
        "--gin_bindings",
        action="append",
        default=[],
        help="gin binding applied to every run; repeatable",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        help=f"{GRID_FORM}; repeatable, every combination is run",
    )
    parser.add_argument("--seeds", default="1", help="N (seeds 0..N-1) or a list 0,4,7 (default 1)")
    parser.add_argument(
        "--seed_parameter",
        action="append",
        default=None,
        help="gin parameter that takes the seed (repeatable); default: "
        "numerics.seed, the model builder's and the protocol's seed",
    )
    parser.add_argument("--workdir", required=True, help="sweep directory")
    parser.add_argument(
        "--parallel", type=int, default=1, help="run K subprocesses at once (default 1: in-process)"
    )
    parser.add_argument("--smoke", action="store_true", help="append smoke.gin (tiny runs)")
    parser.add_argument("--no_plots", action="store_true", help="skip the figures")
    return parser


def main(argv=None, log=print):
    """Runs lplr-sweep on argv (without the program name); returns the exit code.

    0: every run finished (converged, max_steps or diverged); 1: some run errored.
    """
    arguments = _parser().parse_args(argv)
    command = "lplr-sweep " + " ".join(
        f"'{a}'" if re.search(r"[\s\[\]()']", a) else a for a in (argv or sys.argv[1:])
    )
    result = run_sweep(
        arguments.gin_file,
        arguments.gin_bindings,
        arguments.grid,
        arguments.seeds,
        arguments.workdir,
        parallel=arguments.parallel,
        smoke=arguments.smoke,
        seed_parameter=arguments.seed_parameter,
        plot=not arguments.no_plots,
        log=log,
        command=command,
    )
    log(
        f"[sweep] wrote {os.path.join(arguments.workdir, MARKDOWN_FILE)} and {CSV_FILE}: "
        f"{len(result.ran)} ran, {len(result.skipped)} skipped"
    )
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
