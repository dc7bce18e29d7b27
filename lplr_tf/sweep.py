"""`lplr-sweep`: run a grid of gin settings × seeds and tabulate the convergence summaries.

    lplr-sweep --gin_file=digits_width_ablation.gin \\
        --grid='fc.build_model.width=[64,256,1024]' --grid='protocol.gd.learning_rate=[0.5,0.05]' \\
        --seeds=3 --workdir=runs/ablation [--parallel=K | --backend=ray] [--smoke]

Every combination of the `--grid` values is run once per seed, each run the same training as
`lplr-train` in its own run directory (`sweep_grid` explains the grid, the seeds and the
names). Directory layout:

    workdir/
      sweep.csv, sweep.md          one row per run; sweep.md adds mean, 95 % interval and
      sweep_aggregate.csv          min … max across seeds per combination (diverged runs left out)
      plots/sweep.png              ρ̂, drift, kernel drift, PL envelope vs the first grid key
      plots/loss_curves.png        L − L* and drift of every run
      events.out.tfevents...       TensorBoard HParams config (tensorboard --logdir workdir)
      width=64,learning_rate=0.5/
        seed=0/                    an lplr-train run directory (train.log with --parallel or
                                   --backend=ray)

Backends. `local` (default) runs in this process one after the other, or `--parallel=K`
subprocesses at once; `ray` runs each run as a Ray task on the cluster at `--ray_address`
(`auto`; none starts a local Ray), holding `--cpus_per_trial` CPUs and `--gpus_per_trial`
GPUs, and retries a run whose worker died (it resumes from its checkpoint). Both write the
same files. A run whose summary.json holds a final status is skipped on a later invocation;
a run that fails is recorded with status `error` and the sweep goes on.

Exit codes: 0 every run finished (converged, max_steps or diverged); 1 a run failed
unexpectedly; 2 a configuration error (the sweep's flags or grid, or a run's configuration
when no run failed otherwise); 4 preempted by SIGTERM (rerun the command to resume).
"""

import os
import re
import sys

from absl import flags

from lplr_tf import errors, sweep_local, sweep_ray, sweep_trial
from lplr_tf.errors import ConfigError
from lplr_tf.sweep_grid import GridKey, parse_grid, parse_seeds, plan
from lplr_tf.sweep_progress import SweepProgress
from lplr_tf.sweep_report import CSV_FILE, MARKDOWN_FILE, plot_sweep, write_hparams, write_tables

SMOKE_CONFIG = "smoke.gin"
BACKENDS = ("local", "ray")
HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


class SweepResult:
    """What `run_sweep` did: every run (with status, action, summary), and the table rows."""

    def __init__(self, runs, rows, aggregate):
        self.runs, self.rows, self.aggregate = runs, rows, aggregate

    @property
    def ran(self):
        return [r for r in self.runs if r.action in ("ran", "error")]

    @property
    def skipped(self):
        return [r for r in self.runs if r.action == "skipped"]

    def exit_code(self):
        """0 all finished; 1 an unexpected failure; 2 only configuration errors failed."""
        failed = [r for r in self.runs if r.status == "error"]
        if not failed:
            return errors.EXIT_OK
        if all(r.configuration_error for r in failed):
            return errors.EXIT_CONFIG_ERROR
        return errors.EXIT_ERROR


def _seeds(seeds):
    if isinstance(seeds, bool):
        raise ValueError(f"seeds={seeds!r}; expected a count N >= 1 or a list of seeds.")
    if isinstance(seeds, int):
        return tuple(range(seeds)) if seeds >= 1 else parse_seeds(str(seeds))
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    return tuple(seeds)


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
    backend="local",
    ray_options=None,
    progress_seconds=10.0,
):
    """Runs a sweep and writes its tables, plots and HParams (module docstring).

    Args:
      gin_files: Gin files (paths or names in gin_configs/).
      gin_bindings: Bindings applied to every run (before the grid and the seed).
      grid: `--grid` texts or GridKey objects.
      seeds: An int N (seeds 0..N-1), a sequence of seeds, or the --seeds text.
      workdir: The sweep directory.
      parallel: Local backend: concurrent subprocess runs; 1 runs in-process.
      smoke: Append smoke.gin to the gin files.
      seed_parameter: Gin parameters that take the seed; None chooses them (sweep_grid).
      plot: Draw plots/sweep.png and plots/loss_curves.png.
      log: Callable for progress lines.
      command: The command line, shown at the top of sweep.md.
      backend: "local" or "ray".
      ray_options: `sweep_ray.RayOptions` for the Ray backend (default: a local Ray, 1 CPU
        per run).
      progress_seconds: Seconds between two progress reports.

    Returns:
      A SweepResult.

    Raises:
      ValueError: a malformed grid or seed list, a configuration that does not parse, or a
        backend that cannot start (ConfigError: e.g. Ray missing).
      trainer.Interrupted: SIGTERM during an in-process run (rerun to resume).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend={backend!r}; expected one of {', '.join(BACKENDS)}.")
    keys = [k if isinstance(k, GridKey) else parse_grid(k) for k in grid]
    seeds = _seeds(seeds)
    gin_files = list(gin_files) + ([SMOKE_CONFIG] if smoke else [])
    if not gin_files:
        raise ConfigError(
            "lplr-sweep: no --gin_file given; expected at least one, e.g. "
            "--gin_file=digits_fc_gd.gin."
        )
    if not workdir:
        raise ConfigError("lplr-sweep: --workdir is required, e.g. --workdir=runs/ablation.")
    if int(parallel) < 1:
        raise ConfigError(f"--parallel={parallel}: expected an integer >= 1.")
    if backend == "ray":
        ray_options = ray_options or sweep_ray.RayOptions()
        sweep_ray.import_ray()  # says how to install Ray before anything is planned
    keys, labels, runs = plan(gin_files, gin_bindings, keys, seeds, workdir, seed_parameter)
    os.makedirs(workdir, exist_ok=True)
    log(
        f"[sweep] {len(runs)} runs ({len(runs) // len(seeds)} combinations × {len(seeds)} "
        f"seeds) in {workdir}, backend {backend}"
    )
    pending = sweep_trial.record_skipped(runs, log)
    concurrency = int(parallel) if backend == "local" else 1
    progress = SweepProgress(pending, concurrency, log, interval_seconds=progress_seconds)
    if backend == "ray":
        sweep_ray.run_on_ray(pending, gin_files, gin_bindings, ray_options, progress, log)
    elif int(parallel) > 1:
        sweep_local.run_subprocesses(pending, gin_files, gin_bindings, int(parallel), progress, log)
    else:
        sweep_local.run_in_process(pending, gin_files, gin_bindings, progress, log)
    rows, combined = write_tables(workdir, runs, labels, command=command)
    if plot:
        plot_sweep(workdir, runs, keys, labels)
    write_hparams(workdir, runs, keys, labels)
    return SweepResult(runs, rows, combined)


def define_flags():
    """The flags of lplr-sweep, on their own FlagValues (absl style: --seeds=3)."""
    values = flags.FlagValues()
    define = dict(flag_values=values)
    flags.DEFINE_multi_string(
        "gin_file", [], "Gin config: a path, or the name of a file in gin_configs/", **define
    )
    flags.DEFINE_multi_string(
        "gin_bindings",
        [],
        "Gin binding applied to every run, e.g. 'data.digits.n = 200'",
        **define,
    )
    flags.DEFINE_multi_string(
        "grid",
        [],
        "configurable.parameter=[v1,v2,...]: values of one gin parameter; every combination "
        "of the --grid entries is run",
        **define,
    )
    flags.DEFINE_string("seeds", "1", "N (seeds 0..N-1) or a list of seeds, e.g. 0,4,7.", **define)
    flags.DEFINE_multi_string(
        "seed_parameter",
        [],
        "Gin parameter that takes the seed (repeatable); default: numerics.seed and the "
        "seed of the model builder and of the protocol",
        **define,
    )
    flags.DEFINE_string("workdir", None, "The sweep directory (required).", **define)
    flags.DEFINE_bool("smoke", False, "Append smoke.gin: tiny runs that check a config.", **define)
    flags.DEFINE_bool("plots", True, "Draw plots/sweep.png and plots/loss_curves.png.", **define)
    flags.DEFINE_enum(
        "backend", "local", list(BACKENDS), "Where the runs go: this host, or Ray.", **define
    )
    flags.DEFINE_integer(
        "parallel", 1, "Local backend: K subprocesses at once (1: in this process).", **define
    )
    flags.DEFINE_string(
        "ray_address",
        None,
        "Ray backend: 'auto' (this node's cluster) or host:port; unset starts a local Ray.",
        **define,
    )
    flags.DEFINE_float("cpus_per_trial", 1.0, "Ray backend: CPUs each run holds.", **define)
    flags.DEFINE_float("gpus_per_trial", 0.0, "Ray backend: GPUs each run holds.", **define)
    flags.DEFINE_integer(
        "max_retries", 3, "Ray backend: resubmissions of a run whose worker died.", **define
    )
    flags.DEFINE_float("progress_seconds", 10.0, "Seconds between two progress reports.", **define)
    return values


def usage():
    """The text of `lplr-sweep --help`: the module docstring and every flag with its help."""
    return __doc__ + "\nFlags:\n" + define_flags().get_help(include_special_flags=False)


def parse_flags(argv, program):
    """Parses argv (without the program name) with a fresh FlagValues; returns it.

    Raises:
      ConfigError: an unknown flag, a bad value, or a positional argument.
    """
    values = define_flags()
    try:
        rest = values([program, *argv])
    except flags.Error as error:
        raise ConfigError(f"{error}. Run `{program} --help` for the flags.") from error
    if len(rest) > 1:
        raise ConfigError(
            f"Unexpected arguments {rest[1:]}; {program} takes only flags (--flag=value). Run "
            f"`{program} --help` for the flags."
        )
    return values


def main(argv=None, log=print):
    """Runs lplr-sweep on argv (without the program name); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(argument in HELP_FLAGS for argument in argv):
        log(usage())
        return errors.EXIT_OK
    values = parse_flags(argv, "lplr-sweep")
    command = "lplr-sweep " + " ".join(
        f"'{a}'" if re.search(r"[\s\[\]()']", a) else a for a in argv
    )
    backend_flags = {"local": ("parallel",)}
    backend_flags["ray"] = ("ray_address", "cpus_per_trial", "gpus_per_trial", "max_retries")
    for backend, names in backend_flags.items():
        given = [f"--{name}" for name in names if values[name].present]
        if given and values.backend != backend:
            raise ConfigError(
                f"{', '.join(given)} given with --backend={values.backend}; these flags are "
                f"for --backend={backend}. Add --backend={backend} or drop them."
            )
    ray_options = None
    if values.backend == "ray":
        ray_options = sweep_ray.RayOptions(
            address=values.ray_address,
            cpus_per_trial=values.cpus_per_trial,
            gpus_per_trial=values.gpus_per_trial,
            max_retries=values.max_retries,
        )
    result = run_sweep(
        values.gin_file,
        values.gin_bindings,
        values.grid,
        values.seeds,
        values.workdir,
        parallel=values.parallel,
        smoke=values.smoke,
        seed_parameter=values.seed_parameter or None,
        plot=values.plots,
        log=log,
        command=command,
        backend=values.backend,
        ray_options=ray_options,
        progress_seconds=values.progress_seconds,
    )
    log(
        f"[sweep] wrote {os.path.join(values.workdir, MARKDOWN_FILE)} and {CSV_FILE}: "
        f"{len(result.ran)} ran, {len(result.skipped)} skipped"
    )
    return result.exit_code()


def console_main():
    """Entry point of `lplr-sweep`: a configuration error prints one message and exits 2."""
    import logging

    logging.basicConfig(format="%(message)s")  # runs' warnings without a logger prefix
    try:
        code = main(sys.argv[1:], log=lambda line: print(line, flush=True))
    except ValueError as error:  # ConfigError and every other message of lplr_tf
        print(f"lplr-sweep: error: {error}", file=sys.stderr)
        code = errors.EXIT_CONFIG_ERROR
    except Exception as error:
        from lplr_tf.trainer import Interrupted  # imports TensorFlow: not before it is needed

        if not isinstance(error, Interrupted):
            raise
        print(f"lplr-sweep: {error}; rerun the same command to resume.", file=sys.stderr)
        code = errors.EXIT_PREEMPTED
    sys.exit(code)


if __name__ == "__main__":
    console_main()
