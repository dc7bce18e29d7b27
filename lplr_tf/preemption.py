"""Preemption: SIGTERM stops a run cleanly, with exit code 4, at every moment of a launch.

Cloud schedulers announce preemption with SIGTERM and give tens of seconds. A launch has
three phases, and SIGTERM is honoured in each:

* start-up (imports, gin, data, model) and finishing (summary, plots): `SigtermRaises`
  turns the signal into an `Interrupted` exception at once. Nothing these phases write is
  half-written by it (every file of the run directory is written to a temporary name and
  renamed, and the run lock is taken and released with SIGTERM held back by
  `sigterm_deferred`), so a rerun redoes what was cut short.
* training: while a `TerminationFlag` is installed the signal only sets a flag, which the
  training loop polls after every step; the run then checkpoints the step its weights are
  at and raises `Interrupted`. With several workers the flag is all-reduced every step, so
  every worker stops (and checkpoints) at the same step when any of them was signalled.

This module imports TensorFlow only when a flag is all-reduced, so the launcher can install
its handler before TensorFlow's slow import.
"""

import contextlib
import signal
import threading


class Interrupted(Exception):
    """The run stopped early on request (SIGTERM).

    Attributes:
      step: The step the checkpointed weights are at, or None when SIGTERM came before
        training started or while the run was finishing (nothing to checkpoint then).
    """

    def __init__(self, step=None):
        where = "before training or while finishing" if step is None else f"at step {step}"
        super().__init__(f"interrupted by SIGTERM {where}")
        self.step = step


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


class SigtermRaises:
    """While installed, SIGTERM raises `Interrupted()` in the main thread (a context manager).

    Used around a whole launch; a `TerminationFlag` inside it replaces the handler while
    training runs and puts it back afterwards. Outside the main thread it does nothing.
    """

    def __init__(self):
        self._previous = None

    @staticmethod
    def _handle(signum, frame):
        del signum, frame
        raise Interrupted()

    def __enter__(self):
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


@contextlib.contextmanager
def sigterm_deferred():
    """Holds SIGTERM back (it is delivered on exit) around a few lines that must not be cut.

    The run lock is created and written, or checked and removed, inside it: an exception
    raised by `SigtermRaises` in between would leave an empty lock file behind.
    """
    if not _in_main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class TerminationFlag:
    """Records SIGTERM while installed (a context manager; main thread only).

    Args:
      strategy: The run's tf.distribute strategy (several workers agree on the flag).
    """

    def __init__(self, strategy):
        from lplr_tf.distribute import is_multi_worker

        self.received = False
        self._previous = None
        self._strategy = strategy
        self._multi_worker = is_multi_worker(strategy)

    def __enter__(self):
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def local(self):
        """A should_stop for long local work (a probe): this process received SIGTERM.

        None with several workers: a probe is collective work there, and one worker leaving
        it alone would block the others; they stop together at the next step (`agreed`).
        """
        return None if self._multi_worker else (lambda: self.received)

    def agreed(self):
        """Whether this process, or with several workers any worker, received SIGTERM."""
        if not self._multi_worker:
            return self.received
        import tensorflow as tf

        local = tf.constant(float(self.received))
        flags = self._strategy.run(lambda: tf.identity(local))
        return bool(self._strategy.reduce("SUM", flags, axis=None) > 0)
