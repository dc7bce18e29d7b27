"""The probe recorder: when to measure, what was measured, and where it goes.

One `Recorder` serves the launcher (every training step is offered to it), the Keras callback
(it sees the steps `fit` reports, possibly several at a time) and `diagnose` (one probe at
step 0). It owns the `Schedule` (which steps log a row, which rows also probe the NTK and the
sharpness), the history of rows, and the sinks (a `MetricWriter`); the measurement itself is
the `diagnostics.Diagnostics` it is given. Callers get back a `Measurement` that says
explicitly whether the row was probed and carries the NTK spectrum when it was.
"""

import dataclasses
import math
import time

from lplr_tf import validation


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Which steps log a row (loss, ‖∇L‖², PL ratio, drift) and which also probe.

    A row is logged at step 0, at every multiple of `log_every`, and at the last step; a
    logged row also probes (NTK spectrum, kernel drift, sharpness) at step 0, at every
    multiple of `probe_every` and at the last step. With `probe_growth` = g > 1 the probes
    are spaced geometrically instead: after a probe at step p the next is at
    p + max(probe_every, (g − 1)·p), rounded up to a logged step — dense early, sparse late,
    so that a run of T steps probes O(log T) times. When steps arrive several at a time
    (Keras' `steps_per_execution`), the first step at or past a due step is measured.

    Attributes:
      log_every: Steps between logged rows (≥ 1).
      probe_every: Steps between probes (the smallest gap when geometric), a multiple of
        `log_every`.
      num_steps: The last step, when known (it always logs and probes); None otherwise.
      name: The prefix of the settings in error messages (e.g. "protocol.gd").
      probe_growth: g > 1 for geometric spacing; None for every `probe_every` steps.
    """

    log_every: int
    probe_every: int
    num_steps: int | None = None
    name: str = "schedule"
    probe_growth: float | None = None

    def __post_init__(self):
        validation.integer(f"{self.name}.log_every", self.log_every, 1)
        validation.integer(f"{self.name}.probe_every", self.probe_every, 1)
        if self.probe_every % self.log_every:
            raise ValueError(
                f"{self.name}.probe_every = {self.probe_every}; expected a positive multiple of "
                f"log_every = {self.log_every}."
            )
        if self.probe_growth is not None:
            validation.number(
                f"{self.name}.probe_growth", self.probe_growth, 1.0, strict=True, example=1.2
            )

    def _next(self, step, every):
        following = (step // every + 1) * every
        return following if self.num_steps is None else min(following, self.num_steps)

    def next_log_step(self, step):
        """The first step after `step` that logs a row."""
        return self._next(step, self.log_every)

    def next_probe_step(self, step):
        """The first step after `step` that probes."""
        if self.probe_growth is None:
            return self._next(step, self.probe_every)
        probe = 0
        while probe <= step:
            gap = max(self.probe_every, math.ceil((self.probe_growth - 1.0) * probe))
            probe = -(-(probe + gap) // self.log_every) * self.log_every
            if self.num_steps is not None and probe >= self.num_steps:
                return self.num_steps
        return probe

    def is_log_step(self, step):
        return step % self.log_every == 0 or step == self.num_steps

    def is_probe_step(self, step):
        return step == 0 or self.next_probe_step(step - 1) == step


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What one call of the recorder measured.

    Attributes:
      row: The metrics row (the keys of metrics.jsonl; non-finite values are None).
      probed: Whether the NTK / sharpness probe ran for this row.
      spectrum: The `ntk.NTKSpectrum` of K = Θ/n when the NTK was probed, else None.
    """

    row: dict
    probed: bool
    spectrum: object = None


class Recorder:
    """Measures on schedule, keeps the history, and writes each row as it is measured.

    Args:
      diagnostics: The `diagnostics.Diagnostics` that measures a row at the current weights.
      schedule: The `Schedule`.
      writer: A `metric_writer.MetricWriter`, or None (rows are only kept in `history`).
      history: Rows logged before (a resumed run); measurement continues after them.
      clock: Returns seconds (monotonic); rows carry `wall_time`, the seconds since the
        first row, continuing the history's own clock on resume.
    """

    def __init__(self, diagnostics, schedule, writer=None, history=(), clock=time.monotonic):
        self.diagnostics = diagnostics
        self.schedule = schedule
        self.writer = writer
        self.history = list(history)
        self._clock = clock
        elapsed = (self.history[-1].get("wall_time") or 0.0) if self.history else 0.0
        self._start = clock() - elapsed
        last = self.history[-1]["step"] if self.history else None
        self._next_log = 0 if last is None else schedule.next_log_step(last)
        self._next_probe = 0 if last is None else schedule.next_probe_step(last)
        self._last_probed = None

    @property
    def last_row(self):
        return self.history[-1] if self.history else None

    def record(self, step, probe):
        """Measures a row at `step` now (probing when `probe`), appends and writes it."""
        measurement = self.diagnostics.measure(step, probe=probe)
        measurement.row["wall_time"] = self._clock() - self._start
        self.history.append(measurement.row)
        if self.writer is not None:
            eigenvalues = None if measurement.spectrum is None else measurement.spectrum.eigenvalues
            self.writer.write(measurement.row, eigenvalues)
        self._next_log = self.schedule.next_log_step(step)
        if measurement.probed:
            self._next_probe = self.schedule.next_probe_step(step)
            self._last_probed = step
        return measurement

    def is_due(self, step):
        """Whether the schedule wants a row at `step`."""
        return step >= self._next_log

    def record_if_due(self, step):
        """Records a row when the schedule says `step` is due; returns it, or None."""
        if not self.is_due(step):
            return None
        return self.record(step, probe=step >= self._next_probe)

    def finish(self, step):
        """Makes sure the last step has a probed row (re-measuring an unprobed one).

        Returns:
          The `Measurement` taken, or None when the last row was already a probe at `step`.
        """
        last = self.last_row
        if last is not None and last["step"] == step:
            if self._last_probed == step:
                return None
            self.history.pop()  # Replaced by the probed row (a reader keeps the last one).
        return self.record(step, probe=True)

    def close(self):
        if self.writer is not None:
            self.writer.close()
