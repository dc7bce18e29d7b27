"""Preemption: SIGTERM stops a run at a step boundary, checkpointed, with exit code 4.

Cloud schedulers announce preemption with SIGTERM and give tens of seconds. While a
`TerminationFlag` is installed the signal only sets a flag, which the training loop polls
after every step; the run then checkpoints the step its weights are at and raises
`Interrupted`. With several workers the flag is all-reduced every step, so every worker stops
(and checkpoints) at the same step when any of them was signalled.
"""

import signal
import threading

import tensorflow as tf

from lplr_tf.distribute import is_multi_worker


class Interrupted(Exception):
    """Training stopped early on request (SIGTERM); `step` is where the weights are."""

    def __init__(self, step):
        super().__init__(f"interrupted at step {step}")
        self.step = step


class TerminationFlag:
    """Records SIGTERM while installed (a context manager; main thread only).

    Args:
      strategy: The run's tf.distribute strategy (several workers agree on the flag).
    """

    def __init__(self, strategy):
        self.received = False
        self._previous = None
        self._strategy = strategy
        self._multi_worker = is_multi_worker(strategy)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self):
        """Whether this process, or with several workers any worker, received SIGTERM."""
        if not self._multi_worker:
            return self.received
        local = tf.constant(float(self.received))
        flags = self._strategy.run(lambda: tf.identity(local))
        return bool(self._strategy.reduce("SUM", flags, axis=None) > 0)
