"""Resume after a crash or preemption, and one run per workdir.

`RunCheckpoint` wraps `tf.train.CheckpointManager` in the run directory's checkpoints/: it holds the
model, the optimizer, the step, the probes' reference state (theta_0, K_0, the linearized
prediction) and the data iterator. The manager writes its index file only after the data
files, so a crash during a save leaves the previous checkpoint current; a checkpoint that
still fails to restore (truncated on disk) is skipped for the one before it.

`RunLock` is the run directory's lock file (run.lock) holding the pid and host of the live run.
"""

import contextlib
import json
import os
import socket
import time

import tensorflow as tf
from absl import logging

from lplr_tf.errors import ConfigError, RunLockedError
from lplr_tf.preemption import sigterm_deferred


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A lock file is created empty and written at once; a reader that finds it empty waits this
# long for the writer before calling it damaged.
_EMPTY_LOCK_GRACE_SECONDS = 1.0


class RunLock:
    """Holds `workdir/run.lock` while a run is live; a stale lock of a dead process is taken over.

    Use as a context manager. Raises `RunLockedError` naming the owner when the workdir is in
    use by a live process (or by any process on another host, which cannot be checked), and
    naming the file and how to remove it when the lock is empty or not one of ours. The lock
    is created and removed with SIGTERM held back, so a preempted launch never leaves an
    empty lock behind.
    """

    def __init__(self, run_dir):
        self.path = run_dir.lock
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def __enter__(self):
        for _ in range(2):
            with sigterm_deferred():
                try:
                    descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    descriptor = None
                else:
                    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                        json.dump(self.owner, file)
            if descriptor is not None:
                return self
            self._take_over_if_stale()
        raise RunLockedError(f"Could not take the lock {self.path}; another run is starting.")

    def _read_holder(self):
        """The lock's {pid, host, started}; waits briefly for a lock being written."""
        deadline = time.monotonic() + _EMPTY_LOCK_GRACE_SECONDS
        while True:
            try:
                with open(self.path, encoding="utf-8") as file:
                    text = file.read()
            except FileNotFoundError:
                return None  # released meanwhile: try again
            try:
                holder = json.loads(text)
            except ValueError:
                holder = None
            valid = (
                isinstance(holder, dict)
                and isinstance(holder.get("pid"), int)
                and isinstance(holder.get("host"), str)
            )
            if valid:
                return holder
            if time.monotonic() >= deadline:
                what = "is empty" if not text.strip() else f"holds {text[:80]!r}"
                raise RunLockedError(
                    f"The run lock {self.path} {what}, not the pid and host that lplr-train "
                    "writes: it was left by a process killed while taking it, or written by "
                    "something else. If no run is live on this workdir, delete it "
                    f"(rm {self.path}) and rerun."
                )
            time.sleep(0.1)

    def _take_over_if_stale(self):
        holder = self._read_holder()
        if holder is None:
            return
        pid, host = holder["pid"], holder["host"]
        if host == self.owner["host"] and not _process_alive(pid):
            logging.warning("Taking over the stale lock %s of dead process %d.", self.path, pid)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            return
        started = holder.get("started")
        since = ""
        if isinstance(started, (int, float)) and not isinstance(started, bool):
            since = f" (since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))})"
        raise RunLockedError(
            f"--workdir={os.path.dirname(self.path)} is in use by process {pid} on host {host}"
            f"{since}. Wait for that run to finish or stop it, or choose another --workdir. "
            f"If that process is gone (e.g. its host crashed), delete {self.path}."
        )

    def __exit__(self, *exc_info):
        with sigterm_deferred():
            try:
                with open(self.path, encoding="utf-8") as file:
                    mine = json.load(file).get("pid") == self.owner["pid"]
            except (OSError, ValueError, AttributeError):
                mine = False
            if mine:
                os.remove(self.path)


class RunCheckpoint:
    """Saves and restores everything a resumed run needs.

    Args:
      directory: `workdir/checkpoints`.
      max_to_keep: Checkpoints kept on disk (older ones are deleted).
      **objects: Trackables to save: the network, the optimizer, tf.Variables of the probes'
        state, a tf.data iterator.
    """

    def __init__(self, directory, max_to_keep=3, **objects):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(step=self.step, **objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep)

    def save(self, step):
        self.step.assign(step)
        self.manager.save(checkpoint_number=step)

    def restore(self):
        """Restores the newest checkpoint that reads back whole; returns its step or None."""
        for path in reversed(self.manager.checkpoints):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, ValueError, AssertionError, IndexError) as error:
                logging.warning(
                    "Checkpoint %s is unreadable (%s); trying the one before.",
                    path,
                    str(error).splitlines()[0],
                )
                continue
            logging.info("Resuming from %s (step %d).", path, int(self.step))
            return int(self.step)
        return None


def _logged_steps(schedule, last_step):
    """The steps ≤ last_step at which the schedule logs a row (0, multiples, the end)."""
    steps = list(range(0, last_step + 1, schedule.log_every))
    if schedule.num_steps is not None and steps[-1] < schedule.num_steps <= last_step:
        steps.append(schedule.num_steps)
    return steps


def _shown(steps, limit=6):
    listed = ", ".join(str(step) for step in steps[:limit])
    return listed + (f", ... ({len(steps)} steps)" if len(steps) > limit else "")


def rows_to_resume(run_dir, start_step, schedule):
    """The rows of metrics.jsonl up to a restored checkpoint, checked complete.

    Args:
      run_dir: The `RunDirectory`.
      start_step: The restored checkpoint's step, or None for a fresh start.
      schedule: The run's `probing.Schedule` (which steps log a row).

    Returns:
      The rows with step ≤ start_step (rows logged after the checkpoint by a process that
      crashed are dropped: they are logged again), or [] for a fresh start.

    Raises:
      errors.ConfigError: metrics.jsonl is missing, or lacks rows the checkpoint covers
        (the run's history cannot be rebuilt from a checkpoint), or a fresh start would
        overwrite a history beyond step 0 that no checkpoint matches.
    """
    start_over = (
        f"start the run over: delete {run_dir.checkpoints} and {run_dir.metrics} (or use a "
        "new --workdir)"
    )
    if start_step is None:
        try:
            rows = run_dir.read_metrics()
        except FileNotFoundError:
            return []
        if any(row["step"] > 0 for row in rows):
            raise ConfigError(
                f"{run_dir.metrics} holds rows up to step {rows[-1]['step']} but "
                f"{run_dir.checkpoints} has no readable checkpoint to resume them from. "
                f"Restore the checkpoints, or {start_over}."
            )
        return []  # at most the row of step 0, written before the first checkpoint
    try:
        rows = run_dir.read_metrics()
    except FileNotFoundError as error:
        raise ConfigError(
            f"{run_dir.metrics} is missing, but {run_dir.checkpoints} holds a checkpoint of "
            f"step {start_step}: the run's history up to it is lost. Restore metrics.jsonl "
            f"from a backup and rerun, or {start_over}."
        ) from error
    kept = [row for row in rows if row["step"] <= start_step]
    present = {row["step"] for row in kept}
    # The checkpoint's own step may lack its row: SIGTERM during that step's probe writes
    # the checkpoint first, and the resumed run measures the step again.
    missing = [
        step
        for step in _logged_steps(schedule, start_step)
        if step not in present and step != start_step
    ]
    if missing:
        raise ConfigError(
            f"{run_dir.metrics} lacks the rows of steps {_shown(missing)}, logged before the "
            f"checkpoint of step {start_step} (the file was emptied, cut or edited). The "
            "history cannot be rebuilt from a checkpoint, and a summary without those rows "
            f"would be wrong. Restore metrics.jsonl from a backup and rerun, or {start_over}."
        )
    return kept
