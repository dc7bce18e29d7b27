"""Cooperative interruption of long probe work (kernel assembly, factorizations, Lanczos).

Design: the caller passes `should_stop`, a zero-argument callable, to the long functions of
the engine; they poll it between their bounded steps (one kernel block, one Cholesky panel,
one Lanczos iteration) and raise `ProbeInterrupted` when it returns True. A SIGTERM handler
then only sets a flag that `should_stop` reads.

Why polling rather than raising from the signal handler: Python runs a handler only between
bytecodes, never inside a TensorFlow or LAPACK call, so an exception raised there arrives no
sooner than the next poll would, but at an arbitrary point: half-way through writing a
kernel block, inside a `finally` that restores a patched layer, or in the middle of filling
the per-model cache. Polling at known points leaves every object consistent, and the
latency is bounded by the longest single step, which the engine keeps to seconds (bounded
kernel blocks and Cholesky panels, one matrix-vector product per Lanczos iteration).
"""


class ProbeInterrupted(Exception):
    """Raised when `should_stop()` returned True between two steps of a probe.

    Attributes:
      stage: Which computation was interrupted, e.g. "kernel assembly", "cholesky".
    """

    def __init__(self, stage):
        super().__init__(
            f"probe interrupted during {stage}: should_stop() returned True. Nothing was "
            "returned; the probe can be redone from the current weights."
        )
        self.stage = stage


def check(should_stop, stage):
    """Raises ProbeInterrupted when `should_stop` is given and returns True."""
    if should_stop is not None and should_stop():
        raise ProbeInterrupted(stage)
