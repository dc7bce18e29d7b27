"""Resume after a crash or preemption, and one run per workdir.

`RunCheckpoint` wraps `tf.train.CheckpointManager` in the run directory's checkpoints/: it holds the
model, the optimizer, the step, the probes' reference state (theta_0, K_0, the linearized
prediction) and the data iterator. The manager writes its index file only after the data
files, so a crash during a save leaves the previous checkpoint current; a checkpoint that
still fails to restore (truncated on disk) is skipped for the one before it.

`RunLock` is the run directory's lock file (run.lock) holding the pid and host of the live run.
"""

import json
import os
import socket
import time

import tensorflow as tf
from absl import logging

from lplr_tf.errors import RunLockedError


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Holds `workdir/run.lock` while a run is live; a stale lock of a dead process is taken over.

    Use as a context manager. Raises `RunLockedError` naming the owner when the workdir is in
    use by a live process (or by any process on another host, which cannot be checked).
    """

    def __init__(self, run_dir):
        self.path = run_dir.lock
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def __enter__(self):
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(self.owner, file)
            return self
        raise RunLockedError(f"Could not take the lock {self.path}; another run is starting.")

    def _take_over_if_stale(self):
        try:
            with open(self.path, encoding="utf-8") as file:
                holder = json.load(file)
        except (OSError, ValueError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        if host == self.owner["host"] and isinstance(pid, int) and not _process_alive(pid):
            logging.warning("Taking over the stale lock %s of dead process %d.", self.path, pid)
            os.remove(self.path)
            return
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        raise RunLockedError(
            f"--workdir={os.path.dirname(self.path)} is in use by process {pid} on host {host} "
            f"(since {started}). Wait for that run to finish or stop it, or choose another "
            f"--workdir. If that process is gone (e.g. its host crashed), delete {self.path}."
        )

    def __exit__(self, *exc_info):
        try:
            with open(self.path, encoding="utf-8") as file:
                mine = json.load(file).get("pid") == self.owner["pid"]
        except (OSError, ValueError):
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
