"""One trial of a sweep: the three ways it runs, and how its end is recorded on its `Run`.

A trial is the same training as `lplr-train` on the run's directory, with the user's gin
files and bindings followed by the run's grid and seed bindings. It runs

- in this process (`launch_in_process`: `train.launch`, gin and Keras cleared around it),
- as a subprocess `python -m lplr_tf.train` (`subprocess_command`; its output in train.log),
- or on a Ray worker (`lplr_tf.sweep_ray`, which calls `launch_in_process` there).

Whatever ran it, a trial has finished when its summary.json holds a final status (converged,
max_steps, diverged): the run directory, not the runner, is the record. A finished trial is
skipped when the sweep is run again.
"""

import os
import sys

from lplr_tf import analysis, errors
from lplr_tf.gin_config import quiet_gin_search
from lplr_tf.rundir import RunDirectory

TRAIN_LOG = "train.log"  # a subprocess's or a Ray trial's output, in its run directory
_EXIT_MEANINGS = {
    errors.EXIT_CONFIG_ERROR: "",  # `record` marks it a configuration error
    errors.EXIT_PREEMPTED: "preempted (SIGTERM); rerun the sweep to resume it",
    errors.EXIT_LOCKED: "its workdir is locked by another live run",
}


def finished_summary(workdir):
    """The run's summary when summary.json holds a final status, else None."""
    try:
        summary = RunDirectory(workdir).read_summary()
    except (ValueError, OSError):
        return None
    if isinstance(summary, dict) and summary.get("status") in analysis.FINAL_STATUSES:
        return summary
    return None


def launch_in_process(gin_files, bindings, workdir):
    """Runs one trial in this process (`train.launch`); returns its summary.

    Raises:
      ValueError: a configuration error (every ValueError of lplr_tf is one, as in lplr-train).
      trainer.Interrupted: SIGTERM arrived; a checkpoint was written.
      errors.RunLockedError: another live process runs on the workdir.
    """
    import gin
    import keras

    from lplr_tf import train

    gin.clear_config()
    try:
        with quiet_gin_search():
            return train.launch(list(gin_files), list(bindings), workdir)
    finally:
        gin.clear_config()
        keras.backend.clear_session()


def subprocess_command(gin_files, bindings, workdir):
    """The `python -m lplr_tf.train` command line of one trial."""
    command = [sys.executable, "-m", "lplr_tf.train", f"--workdir={workdir}"]
    command += [f"--gin_file={name}" for name in gin_files]
    command += [f"--gin_bindings={binding}" for binding in bindings]
    return command


def trial_bindings(run, gin_bindings):
    """The user's bindings followed by the run's grid and seed bindings."""
    return list(gin_bindings) + list(run.bindings)


def describe(exception):
    """One line for a trial's exception: its type and message (500 characters at most)."""
    return f"{type(exception).__name__}: {exception}".replace("\n", " ")[:500]


def log_tail(path):
    """The last error-looking line of a trial's log (or its last line), for the tables."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = [line.strip() for line in stream if line.strip()]
    except OSError:
        return ""
    marked = [line for line in lines if line.startswith(("E", "Traceback")) or "Error" in line]
    return (marked or lines or [""])[-1][:500]


def exit_message(code, log_path):
    """What a subprocess's exit code means, with the tail of its log."""
    meaning = _EXIT_MEANINGS.get(code, f"exit code {code}")
    tail = log_tail(log_path)
    return ": ".join(part for part in (meaning, tail) if part) or f"exit code {code}"


def record(run, summary=None, error="", configuration_error=False):
    """Records how a trial ended: a final summary, or an error (status `error`)."""
    if summary is not None and summary.get("status") in analysis.FINAL_STATUSES:
        run.summary, run.status = summary, summary["status"]
        run.error, run.configuration_error = "", False
        return
    run.status, run.action = "error", "error"
    run.configuration_error = configuration_error
    error = error or "the run ended without a final summary.json"
    run.error = f"configuration error: {error}" if configuration_error else error


def record_skipped(runs, log):
    """Marks the runs that finished before as skipped; returns the others (still to run)."""
    pending = []
    for run in runs:
        summary = finished_summary(run.workdir)
        if summary is None:
            pending.append(run)
            continue
        run.summary, run.status, run.action = summary, summary["status"], "skipped"
        log(f"[sweep] {run.name}: finished before ({run.status}); skipped")
    return pending


def log_path(run):
    """Where a subprocess or Ray trial writes its output (created with its directory)."""
    os.makedirs(run.workdir, exist_ok=True)
    return os.path.join(run.workdir, TRAIN_LOG)
