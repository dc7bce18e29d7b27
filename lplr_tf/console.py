"""What lplr-train prints: no TensorFlow start-up noise, progress lines with an ETA, the verdict.

TensorFlow 2.21 writes about nine lines to stderr while it is imported and while it first
looks for GPUs (oneDNN, cudart, cuInit, cpu_feature_guard, "All log messages before
absl::InitializeLog() ..."). TF_CPP_MIN_LOG_LEVEL does not silence them: they are written
before TensorFlow's logging reads it. `import_tensorflow_quietly` therefore points file
descriptor 2 at a temporary file around the import and the device lookup, then restores it;
what was captured is shown only when the import fails. It also sets TF_CPP_MIN_LOG_LEVEL=1
(INFO lines such as XLA's off; warnings and errors stay) unless the user set it: with
TF_CPP_MIN_LOG_LEVEL=0 nothing is hidden.

Nothing here imports TensorFlow at module level: the launcher calls it first.
"""

import math
import os
import sys
import tempfile
import textwrap
import time

from absl import logging


def import_tensorflow_quietly():
    """Imports TensorFlow and Keras and initializes the devices with TF's start-up lines hidden."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        _import_tensorflow()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            _import_tensorflow()
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:  # show TensorFlow's own account of what went wrong
                captured.seek(0)
                sys.stderr.write(captured.read().decode("utf-8", "replace"))
                sys.stderr.flush()


def _import_tensorflow():
    import keras  # noqa: F401
    import tensorflow as tf

    tf.config.list_physical_devices()  # CUDA's start-up lines come from this first lookup


def format_duration(seconds):
    """'45 s', '1 min 20 s', '2 h 5 min' (rounded to whole seconds / minutes)."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class ProgressReporter:
    """Logs one progress line at most every `interval_seconds`: step, loss, rate, speed, ETA.

    The rate so far is the mean contraction per step of L − L* since the first reported step,
    ρ = ((L_t − L*) / (L_first − L*))^(1/(t − first)); the run's summary fits ρ̂ on the stable
    window instead, so the two differ while the early transient dominates. The ETA is the time
    to `num_steps` at the speed so far, or, when the run stops at convergence and the loss
    falls, the time to reach L − L* ≤ tolerance at the rate so far, if sooner.

    Args:
      num_steps: The last step.
      l_star: L*.
      tolerance: The convergence tolerance when the run stops at convergence, else None.
      interval_seconds: Least time between two lines (forced lines are always written).
      clock: Returns seconds (monotonic).
      emit: Called with a format string and its arguments (absl's `logging.info`).
    """

    def __init__(
        self,
        num_steps,
        l_star,
        tolerance=None,
        interval_seconds=5.0,
        clock=time.monotonic,
        emit=logging.info,
    ):
        self.num_steps = num_steps
        self.l_star = l_star
        self.tolerance = tolerance
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._emit = emit
        self.start_time = None
        self.last_time = None
        self.initial_gap = None
        self.initial_step = None

    def __call__(self, step, loss, force=False):
        gap = loss - self.l_star
        now = self._clock()
        if self.initial_gap is None:
            self.initial_gap, self.initial_step, self.start_time = gap, step, now
        if (
            not force
            and self.last_time is not None
            and now - self.last_time < self.interval_seconds
        ):
            return
        self.last_time = now
        steps_done = step - self.initial_step
        rate = None
        if steps_done > 0 and gap > 0 and self.initial_gap > 0:
            rate = (gap / self.initial_gap) ** (1.0 / steps_done)
        rate_text = "" if rate is None else f"  rate so far {rate:.5f}/step"
        elapsed = now - self.start_time
        if steps_done <= 0 or elapsed <= 0:
            self._emit("step %d/%d  loss %.4e%s", step, self.num_steps, loss, rate_text)
            return
        speed = steps_done / elapsed
        remaining = self.num_steps - step
        if self.tolerance is not None and rate is not None and rate < 1.0:
            if gap <= self.tolerance:
                remaining = 0
            else:
                to_tolerance = math.ceil(math.log(self.tolerance / gap) / math.log(rate))
                remaining = min(remaining, to_tolerance)
        self._emit(
            "step %d/%d  loss %.4e%s  %.1f steps/s  ETA %s",
            step,
            self.num_steps,
            loss,
            rate_text,
            speed,
            format_duration(remaining / speed),
        )


def verdict_paragraph(summary, summary_path, plot_path, width=88):
    """The closing text of a run: where its results are, then the verdict wrapped to `width`."""
    status, step = summary.get("status"), summary.get("status_step")
    if status in ("converged", "diverged") and step is not None:
        ended = f"Run {status} at step {step}."
    else:
        ended = f"Run ended at step {summary.get('steps')} ({status})."
    head = f"{ended} Summary: {summary_path}  Plot: {plot_path}"
    verdict = summary.get("verdict") or ""
    return "\n".join([head, "", textwrap.fill(verdict, width=width)]).rstrip() + "\n"
