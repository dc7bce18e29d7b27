"""The local backend of lplr-sweep: runs one after another in this process, or K subprocesses.

In-process runs share one TensorFlow runtime (gin and Keras are cleared between runs) and
save the ~5 s start-up of a process per run; `--parallel=K` runs K `python -m lplr_tf.train`
subprocesses at once, each writing its output to `train.log` in its run directory. Both fill
in each run's status, summary and error (`sweep_trial.record`) and report progress.
"""

import subprocess
import time

from lplr_tf import errors, sweep_trial

_POLL_SECONDS = 0.2


def ended_line(run):
    """The line logged when a run ends: its status (or error) and wall time."""
    return f"[sweep] {run.name}: {run.status} after {run.seconds:.1f} s {run.error}".rstrip()


def run_in_process(runs, gin_files, gin_bindings, progress, log):
    """Runs every run in this process, one after the other.

    Raises:
      trainer.Interrupted: SIGTERM during a run (its checkpoint is written); the sweep stops
        and a rerun resumes that run and skips the finished ones.
    """
    from lplr_tf.trainer import Interrupted  # imports TensorFlow

    with progress.ticking():
        for run in runs:
            progress.started(run)
            run.action, run.attempts = "ran", run.attempts + 1
            log(f"[sweep] started {run.name}")
            start = time.monotonic()
            bindings = sweep_trial.trial_bindings(run, gin_bindings)
            try:
                summary = sweep_trial.launch_in_process(gin_files, bindings, run.workdir)
                sweep_trial.record(run, summary)
            except Interrupted:
                raise
            except ValueError as error:  # lplr_tf's configuration errors (exit 2 in lplr-train)
                sweep_trial.record(run, error=sweep_trial.describe(error), configuration_error=True)
            except Exception as error:  # pylint: disable=broad-except  # recorded, sweep goes on
                sweep_trial.record(run, error=sweep_trial.describe(error))
            run.seconds = time.monotonic() - start
            progress.finished(run)
            log(ended_line(run))
            progress.tick(force=True)


def run_subprocesses(runs, gin_files, gin_bindings, parallel, progress, log):
    """Runs every run as a `python -m lplr_tf.train` subprocess, `parallel` at a time."""
    queue, active = list(runs), []
    while queue or active:
        while queue and len(active) < parallel:
            run = queue.pop(0)
            log_path = sweep_trial.log_path(run)
            stream = open(log_path, "w", encoding="utf-8")  # closed when it ends
            command = sweep_trial.subprocess_command(
                gin_files, sweep_trial.trial_bindings(run, gin_bindings), run.workdir
            )
            process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
            run.action, run.attempts = "ran", run.attempts + 1
            progress.started(run)
            active.append((run, process, stream, log_path, time.monotonic()))
            log(f"[sweep] started {run.name} (pid {process.pid})")
        time.sleep(_POLL_SECONDS)
        still = []
        for entry in active:
            run, process, stream, log_path, start = entry
            if process.poll() is None:
                still.append(entry)
                continue
            stream.close()
            run.seconds = time.monotonic() - start
            summary = sweep_trial.finished_summary(run.workdir)
            message = "" if summary else sweep_trial.exit_message(process.returncode, log_path)
            configuration = process.returncode == errors.EXIT_CONFIG_ERROR
            sweep_trial.record(run, summary, message, configuration_error=configuration)
            progress.finished(run)
            log(ended_line(run))
            progress.tick(force=True)
        active = still
        progress.tick()
