"""Progress of a running sweep: runs done / running / pending, time left, and each run's step.

Every `interval_seconds` (and when a run starts or ends) the sweep prints

    [sweep] 3/8 done, 2 running, 3 pending; about 1 min 20 s left
    [sweep]   width=64,learning_rate=0.5/seed=1: step 400/1000, loss 1.234e-03

A running run's step and loss are the last complete line of its metrics.jsonl, so the same
lines come from runs in this process, in subprocesses and on Ray workers (whose run
directories are on storage this process sees).

Time left. Each run is assumed to take the mean wall time of the runs finished so far in this
invocation (before the first one ends: a running run's elapsed time divided by the fraction
of its planned steps done). The work left, the rest of each running run plus every pending
run, is divided by the number of runs that can go at once.
"""

import json
import os
import threading
import time

from lplr_tf.console import format_duration
from lplr_tf.rundir import RunDirectory

_TAIL_BYTES = 16384


def last_row(workdir):
    """The last complete row of a run's metrics.jsonl (a dict), or None when there is none."""
    path = RunDirectory(workdir).metrics
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - _TAIL_BYTES))
            lines = stream.read().decode("utf-8", errors="replace").split("\n")
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # empty, truncated by a writer mid-line, or cut by the tail window
        if isinstance(row, dict):
            return row
    return None


class SweepProgress:
    """Counts runs done / running / pending and prints progress lines.

    Thread-safe: the in-process backend calls `tick` from a timer thread while the run
    goes on in the main thread.

    Args:
      runs: The runs still to do in this invocation (`sweep_grid.Run`).
      concurrency: How many runs can go at once (1 in-process, K with --parallel=K, the
        cluster's capacity on Ray).
      log: Callable that prints one line.
      interval_seconds: The least time between two periodic reports.
      clock: Monotonic clock (seconds), replaceable in tests.
    """

    def __init__(self, runs, concurrency, log, interval_seconds=10.0, clock=time.monotonic):
        self.total = len(runs)
        self.concurrency = max(1, int(concurrency))
        self.log = log
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.pending = len(runs)
        self.running = {}  # run name -> (run, start time)
        self.durations = []
        self.done = 0
        self.last_report = None
        self._lock = threading.Lock()

    def started(self, run):
        with self._lock:
            self.pending -= 1
            self.running[run.name] = (run, self.clock())

    def finished(self, run):
        with self._lock:
            _, start = self.running.pop(run.name)
            self.durations.append(self.clock() - start)
            self.done += 1

    def _fraction(self, run):
        row = last_row(run.workdir)
        if row is None or not run.planned_steps or not isinstance(row.get("step"), int):
            return None, row
        return min(max(row["step"] / run.planned_steps, 0.0), 1.0), row

    def seconds_left(self):
        """The estimated seconds until every run is done, or None before any estimate."""
        now = self.clock()
        elapsed = {name: now - start for name, (_, start) in self.running.items()}
        if self.durations:
            per_run = sum(self.durations) / len(self.durations)
        else:
            estimates = []
            for name, (run, _) in self.running.items():
                fraction, _ = self._fraction(run)
                if fraction:
                    estimates.append(elapsed[name] / fraction)
            if not estimates:
                return None if self.running or self.pending else 0.0
            per_run = sum(estimates) / len(estimates)
        work = sum(max(per_run - seconds, 0.0) for seconds in elapsed.values())
        work += self.pending * per_run
        return work / min(self.concurrency, max(1, len(self.running) + self.pending))

    def lines(self):
        """The progress lines for now: the counts and time left, then one per running run."""
        with self._lock:
            left = self.seconds_left()
            busy = self.running or self.pending
            estimate = f"; about {format_duration(left)} left" if busy and left is not None else ""
            lines = [
                f"[sweep] {self.done}/{self.total} done, {len(self.running)} running, "
                f"{self.pending} pending{estimate}"
            ]
            for name, (run, _) in sorted(self.running.items()):
                row = last_row(run.workdir)
                if row is None or row.get("step") is None:
                    lines.append(f"[sweep]   {name}: starting")
                    continue
                planned = f"/{run.planned_steps}" if run.planned_steps else ""
                loss = row.get("loss")
                loss = f"{loss:.4g}" if isinstance(loss, (int, float)) else "not finite"
                attempt = f" (attempt {run.attempts})" if run.attempts > 1 else ""
                lines.append(f"[sweep]   {name}: step {row['step']}{planned}, loss {loss}{attempt}")
            return lines

    def tick(self, force=False):
        """Prints the progress lines when `interval_seconds` passed since the last (or forced)."""
        now = self.clock()
        if not force and self.last_report is not None:
            if now - self.last_report < self.interval_seconds:
                return
        self.last_report = now
        for line in self.lines():
            self.log(line)

    def ticking(self, period_seconds=1.0):
        """A context manager that calls `tick` from a daemon thread (for blocking runners)."""
        return _Ticker(self, period_seconds)


class _Ticker:
    def __init__(self, progress, period_seconds):
        self.progress = progress
        self.period_seconds = period_seconds
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.wait(self.period_seconds):
            self.progress.tick()

    def __enter__(self):
        self.thread.start()
        return self.progress

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join()
