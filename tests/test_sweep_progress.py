"""Progress lines of a running sweep: counts, time left, each run's step and loss."""

import json

from lplr_tf import sweep_progress
from lplr_tf.console import format_duration
from lplr_tf.sweep_grid import Run


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run(tmp_path, name, planned_steps=100):
    workdir = tmp_path / name / "seed=0"
    workdir.mkdir(parents=True)
    return Run(
        settings={},
        label_settings={"width": name.split("=")[1]},
        seed=0,
        workdir=str(workdir),
        bindings=[],
        planned_steps=planned_steps,
    )


def _log_rows(run, *rows, tail=""):
    with open(f"{run.workdir}/metrics.jsonl", "w", encoding="utf-8") as stream:
        stream.write("".join(json.dumps(row) + "\n" for row in rows) + tail)


def test_counts_time_left_and_each_runs_step(tmp_path):
    clock, lines = Clock(), []
    runs = [_run(tmp_path, f"width={w}") for w in (8, 16, 32, 64)]
    progress = sweep_progress.SweepProgress(runs, 2, lines.append, interval_seconds=5, clock=clock)
    progress.started(runs[0])
    progress.started(runs[1])
    assert progress.lines() == [
        "[sweep] 0/4 done, 2 running, 2 pending",  # no estimate before any step is logged
        "[sweep]   width=16/seed=0: starting",
        "[sweep]   width=8/seed=0: starting",
    ]
    clock.now = 3.0
    # The last complete row counts; a line cut mid-write by the run is passed over.
    _log_rows(runs[0], {"step": 0, "loss": 1.0}, {"step": 30, "loss": 0.5}, tail='{"step": 4')
    # 30 of 100 steps in 3 s: 10 s a run. Left: 7 s + 7 s (running) + 2 × 10 s, two at a time.
    assert progress.seconds_left() == 17.0
    assert progress.lines() == [
        "[sweep] 0/4 done, 2 running, 2 pending; about 17 s left",
        "[sweep]   width=16/seed=0: starting",
        "[sweep]   width=8/seed=0: step 30/100, loss 0.5",
    ]
    clock.now = 8.0
    progress.finished(runs[0])
    progress.started(runs[2])
    runs[2].attempts = 2
    _log_rows(runs[2], {"step": 10, "loss": None})
    clock.now = 10.0
    # Finished runs set the pace (8 s a run): 0 s + 6 s (running) + 1 × 8 s, two at a time.
    assert progress.seconds_left() == 7.0
    assert progress.lines()[0] == "[sweep] 1/4 done, 2 running, 1 pending; about 7 s left"
    assert (
        progress.lines()[2] == "[sweep]   width=32/seed=0: step 10/100, loss not finite (attempt 2)"
    )

    progress.tick()
    clock.now = 12.0
    progress.tick()  # within the interval: nothing printed
    assert len(lines) == 3
    clock.now = 15.5
    progress.tick()
    assert len(lines) == 6


def test_durations_read_well():
    assert format_duration(44.6) == "45 s"
    assert format_duration(80) == "1 min 20 s"
    assert format_duration(7500) == "2 h 5 min"
