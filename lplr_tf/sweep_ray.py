"""The Ray backend of lplr-sweep (`--backend=ray`): each run is one Ray task.

Each run is a plain Ray task (not a Ray Tune trial) that calls `launch_in_process`, the same
training as `lplr-train`, on a worker holding `--cpus_per_trial` CPUs and `--gpus_per_trial`
GPUs. A task fits because a run already owns everything Tune would add: its directory is its
record (finished runs are skipped on a rerun), it checkpoints and resumes itself, and the
sweep writes its own tables, plots and HParams; Tune would put a second layout
(`~/ray_results`, its trial names and result files) beside ours and its searchers and
schedulers have nothing to decide in a fixed grid.

Faults. The task returns how the run ended (a summary, a configuration error, another error,
or SIGTERM) as data; a Ray error instead means the worker or its node died. Such a run is
submitted again, up to `max_retries` times, and resumes from its own newest checkpoint. Its
`run.lock`, left by the dead attempt, is removed first when it was taken after that attempt
was submitted (on the same host the launcher takes over a dead process's lock itself; on
another host it cannot check the process, but Ray has reported it dead). A configuration
error is not retried: it is recorded with status `error` like any failed run.

Output. A run's output (the launcher's log lines) goes to `train.log` in its run directory,
not to this terminal; this process prints the progress lines of `sweep_progress` instead.
Every run directory must be on storage that every node and this process see
(docs/sweeps.md).
"""

import contextlib
import dataclasses
import json
import math
import os
import sys
import time

from lplr_tf import sweep_trial
from lplr_tf.errors import ConfigError
from lplr_tf.rundir import RunDirectory

RAY_VERSION = "2.60.0"  # pinned in pyproject.toml's [ray] extra
INSTALL_HINT = f"pip install 'lplr_tf[ray]' (Ray {RAY_VERSION})"
_WAIT_SECONDS = 1.0
_CLOCK_SKEW_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where and how the runs go on Ray.

    Attributes:
      address: `auto` (the cluster this node belongs to), `host:port` or `ray://host:port`;
        None starts a local Ray instance for the sweep and stops it at the end.
      cpus_per_trial: CPUs each run holds (also its TensorFlow intra-op thread count).
      gpus_per_trial: GPUs each run holds (may be fractional).
      max_retries: How often a run whose worker died is submitted again.
    """

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 3

    def __post_init__(self):
        for name in ("cpus_per_trial", "gpus_per_trial"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name}={value!r}; expected a number >= 0, e.g. --{name}=1.")
        if self.cpus_per_trial == 0 and self.gpus_per_trial == 0:
            raise ConfigError(
                "--cpus_per_trial=0 and --gpus_per_trial=0; a run needs some resource "
                "(otherwise Ray would start every run at once). Give --cpus_per_trial=1."
            )
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"--max_retries={self.max_retries!r}; expected an integer >= 0.")


def import_ray():
    """Imports Ray, or raises ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError(
            f"--backend=ray needs Ray, which is not installed ({error}). Install it with "
            f"{INSTALL_HINT}, or use the default --backend=local."
        ) from error
    return ray


def _connect(ray, address):
    """Connects to (or starts) Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    options = {"log_to_driver": False, "logging_level": "warning"}
    if address is None:  # a private instance: no dashboard, no notices about the cluster
        options.update(include_dashboard=False, logging_level="error")
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(
            f"--ray_address={address}: could not connect to a Ray cluster ({error}). Start "
            "one with `ray start --head` on this node (then --ray_address=auto), give the "
            "head's host:port, or omit --ray_address to start a local Ray."
        ) from error
    return True


def _capacity(ray, options):
    """How many runs the cluster's resources hold at once."""
    resources = ray.cluster_resources()
    fits = []
    if options.cpus_per_trial:
        fits.append(int(resources.get("CPU", 0) // options.cpus_per_trial))
    if options.gpus_per_trial:
        fits.append(int(resources.get("GPU", 0) // options.gpus_per_trial))
    return min(fits), resources


@contextlib.contextmanager
def _output_to(path):
    """Sends this process's stdout and stderr (file descriptors 1 and 2) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


def _quiet_saver(record):
    # TensorFlow's checkpoint writer logs one INFO line per save (as lplr-train drops them).
    return not record.pathname.endswith("functional_saver.py")


def _log_like_lplr_train():
    """absl INFO lines, as `lplr-train` prints them, in this worker (once per process)."""
    import logging as std_logging

    from absl import flags, logging

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # a worker parses no command line; absl warns otherwise
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    absl_logger = std_logging.getLogger("absl")
    if _quiet_saver not in absl_logger.filters:
        absl_logger.addFilter(_quiet_saver)


def run_trial(gin_files, bindings, workdir, log_path):
    """The body of one Ray task: trains one run; returns how it ended as a dict.

    Returns:
      {"summary": dict or None, "error": str, "configuration_error": bool,
       "interrupted": bool (SIGTERM: a checkpoint was written)}.
    """
    from lplr_tf.trainer import Interrupted

    outcome = {"summary": None, "error": "", "configuration_error": False, "interrupted": False}
    with _output_to(log_path):
        _log_like_lplr_train()
        try:
            outcome["summary"] = sweep_trial.launch_in_process(gin_files, bindings, workdir)
        except Interrupted:
            outcome["interrupted"] = True
        except ValueError as error:  # lplr_tf's configuration errors (exit 2 in lplr-train)
            outcome["error"], outcome["configuration_error"] = sweep_trial.describe(error), True
        except Exception as error:  # pylint: disable=broad-except  # reported to the driver
            outcome["error"] = sweep_trial.describe(error)
    return outcome


def _remove_lock_of_dead_attempt(run, submitted_at, log):
    """Removes run.lock when the dead attempt (submitted at `submitted_at`) took it."""
    path = RunDirectory(run.workdir).lock
    try:
        with open(path, encoding="utf-8") as stream:
            holder = json.load(stream)
    except (OSError, ValueError):
        return
    started = holder.get("started") if isinstance(holder, dict) else None
    if isinstance(started, (int, float)) and started >= submitted_at - _CLOCK_SKEW_SECONDS:
        os.remove(path)
        log(f"[sweep] {run.name}: removed the lock of its dead attempt ({holder})")


def _absolute(gin_files):
    # Ray workers do not share this process's working directory.
    return [os.path.abspath(name) if os.path.isfile(name) else name for name in gin_files]


def run_on_ray(runs, gin_files, gin_bindings, options, progress, log):
    """Runs every run as a Ray task, at most as many at once as the cluster holds.

    Raises:
      ConfigError: Ray is missing, the cluster cannot be reached, or it lacks the resources
        of one run.
    """
    ray = import_ray()
    started_here = _connect(ray, options.address)
    try:
        capacity, resources = _capacity(ray, options)
        if capacity < 1:
            raise ConfigError(
                f"The Ray cluster has {resources.get('CPU', 0):g} CPUs and "
                f"{resources.get('GPU', 0):g} GPUs; one run asks for "
                f"--cpus_per_trial={options.cpus_per_trial:g} and "
                f"--gpus_per_trial={options.gpus_per_trial:g}. Ask for less, or add nodes."
            )
        progress.concurrency = capacity
        threads = str(max(1, int(options.cpus_per_trial)))
        task = ray.remote(
            num_cpus=options.cpus_per_trial,
            num_gpus=options.gpus_per_trial,
            max_retries=0,  # worker deaths are retried here, after the stale lock is handled
            runtime_env={"env_vars": {"TF_NUM_INTRAOP_THREADS": threads}},
        )(run_trial)
        _schedule(ray, task, runs, _absolute(gin_files), gin_bindings, options, progress, log)
    finally:
        if started_here:
            ray.shutdown()


def _schedule(ray, task, runs, gin_files, gin_bindings, options, progress, log):
    queue, active = list(runs), {}  # object ref -> (run, submitted_at)
    while queue or active:
        capacity, _ = _capacity(ray, options)  # grows when an autoscaler adds nodes
        progress.concurrency = max(1, capacity)
        while queue and len(active) < max(1, capacity):
            run = queue.pop(0)
            workdir = os.path.abspath(run.workdir)
            bindings = sweep_trial.trial_bindings(run, gin_bindings)
            log_path = sweep_trial.log_path(run)
            reference = task.options(name=run.name).remote(
                gin_files, bindings, workdir, os.path.abspath(log_path)
            )
            run.action, run.attempts = "ran", run.attempts + 1
            if run.attempts == 1:
                progress.started(run)
                run.seconds = -time.monotonic()
            active[reference] = (run, time.time())
            log(f"[sweep] submitted {run.name} to Ray (attempt {run.attempts})")
        done, _ = ray.wait(list(active), num_returns=1, timeout=_WAIT_SECONDS)
        for reference in done:
            run, submitted_at = active.pop(reference)
            try:
                outcome = ray.get(reference)
            except ray.exceptions.RayTaskError as error:  # not retried: not a worker death
                outcome = {"summary": None, "error": sweep_trial.describe(error)}
            except ray.exceptions.RayError as error:  # the worker or its node died
                if _retry(run, error, submitted_at, options, log):
                    queue.insert(0, run)
                    continue
                outcome = {"summary": None, "error": f"worker died: {sweep_trial.describe(error)}"}
            if outcome.get("interrupted"):
                if _retry(run, "SIGTERM", submitted_at, options, log):
                    queue.insert(0, run)
                    continue
                outcome["error"] = "preempted (SIGTERM) on every attempt; rerun the sweep"
            _record(run, outcome)
            progress.finished(run)
            log(f"[sweep] {run.name}: {run.status} {run.error}".rstrip())
            progress.tick(force=True)
        progress.tick()


def _retry(run, cause, submitted_at, options, log):
    """Whether a run whose attempt died is submitted again (and its stale lock removed)."""
    if sweep_trial.finished_summary(run.workdir) is not None:
        return False  # it finished before the worker died; nothing to redo
    if run.attempts > options.max_retries:
        return False
    cause = cause if isinstance(cause, str) else type(cause).__name__
    log(
        f"[sweep] {run.name}: attempt {run.attempts} died ({cause}); retrying "
        f"({run.attempts}/{options.max_retries}), resuming from its checkpoint"
    )
    _remove_lock_of_dead_attempt(run, submitted_at, log)
    return True


def _record(run, outcome):
    run.seconds += time.monotonic()
    summary, error = outcome.get("summary"), outcome.get("error", "")
    if summary is not None and sweep_trial.finished_summary(run.workdir) is None:
        summary = None
        error = (
            f"the run finished on its worker but {RunDirectory(run.workdir).summary} is not "
            "visible here: the sweep directory must be on storage that every node and this "
            "process share (docs/sweeps.md, shared storage)."
        )
    if summary is None and not error:
        summary = sweep_trial.finished_summary(run.workdir)  # e.g. finished before a death
    configuration_error = bool(outcome.get("configuration_error"))
    sweep_trial.record(run, summary, error, configuration_error=configuration_error)
