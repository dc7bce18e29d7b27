"""Fault injection: the launcher killed, preempted (SIGTERM) or out of disk at each phase.

Each fault leaves the run directory as a real one would; rerunning the same command must end
with exactly the metrics and summary of an uninterrupted run (wall times aside), and a
preempted launch must exit 4, never die by the signal.
"""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf
from absl import flags

from lplr_tf import errors, plots, preemption, preflight, train
from lplr_tf.checkpointing import RunCheckpoint
from lplr_tf.metric_writer import MetricWriter
from lplr_tf.rundir import RunDirectory

# 32 digits, a row every 5 steps, a probe and a checkpoint every 20; converges at step 170,
# so the final checkpoint (170) is not one of the periodic ones.
BINDINGS = [
    "data.digits.n = 32",
    "fc.build_model.width = 64",
    "protocol.gd.num_steps = 300",
    "protocol.gd.learning_rate = 1.0",
    "protocol.gd.log_every = 5",
    "protocol.gd.probe_every = 20",
    "diagnostics.ProbeSettings.measure_sharpness = False",
    "analysis.Settings.tolerance = 3e-3",
]
CONVERGED_AT = 170

# Runs the launcher in a fresh process that dies (os._exit: no cleanup, like kill -9) at
# one phase boundary.
KILL_AT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    from lplr_tf import checkpointing, plots, rundir, train
    phase, workdir, bindings = sys.argv[1], sys.argv[2], sys.argv[3:]
    if phase.startswith("checkpoint="):
        target, save = int(phase.split("=")[1]), checkpointing.RunCheckpoint.save
        def killing_save(self, step):
            save(self, step)
            if step == target:
                os._exit(137)
        checkpointing.RunCheckpoint.save = killing_save
    elif phase == "plot":
        def killing_plot(rows, summary, path, title=None):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as partial:
                partial.write(b"half a png")
            os._exit(137)
        plots.plot_convergence = killing_plot
    elif phase == "summary":
        write_summary = rundir.RunDirectory.write_summary
        def killing_write_summary(self, summary):
            write_summary(self, summary)
            os._exit(137)
        rundir.RunDirectory.write_summary = killing_write_summary
    train.launch(["digits_fc_gd.gin"], bindings, workdir)
    sys.exit(99)  # the phase was never reached
""")


def _without_wall_time(rows):
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    summary = train.launch(["digits_fc_gd.gin"], BINDINGS, workdir)
    assert (summary["status"], summary["status_step"]) == ("converged", CONVERGED_AT)
    return summary, _without_wall_time(RunDirectory(workdir).read_metrics())


def _assert_identical(workdir, summary, uninterrupted):
    expected_summary, expected_rows = uninterrupted
    run_dir = RunDirectory(workdir)
    with open(run_dir.metrics, encoding="utf-8") as file:
        assert len(file.readlines()) == len(expected_rows)  # every step once
    assert _without_wall_time(run_dir.read_metrics()) == expected_rows
    assert summary == expected_summary
    assert run_dir.read_summary() == expected_summary
    assert os.path.getsize(run_dir.convergence_plot) > 1000  # a whole PNG
    assert not os.path.exists(run_dir.lock)


@pytest.mark.parametrize(
    "phase, left_behind",
    [
        ("checkpoint=40", "a mid-run checkpoint, rows past it possibly"),
        (f"checkpoint={CONVERGED_AT}", "the final checkpoint, no summary"),
        ("plot", "a half-written plot, no summary"),
        ("summary", "summary.json, plot, everything but the lock"),
    ],
)
def test_killed_at_a_phase_boundary_then_rerun_matches_an_uninterrupted_run(
    phase, left_behind, tmp_path, uninterrupted
):
    del left_behind  # documents the state each phase leaves
    workdir = str(tmp_path / "run")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT, phase, workdir, *BINDINGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == 137, killed.stderr[-3000:]
    run_dir = RunDirectory(workdir)
    assert os.path.exists(run_dir.lock)  # a kill leaves its lock behind
    assert os.path.exists(run_dir.summary) == (phase == "summary")
    summary = train.launch(["digits_fc_gd.gin"], BINDINGS, workdir)
    _assert_identical(workdir, summary, uninterrupted)


def _main(workdir, bindings=BINDINGS):
    flags.FLAGS(
        ["lplr-train", "--gin_file=digits_fc_gd.gin", f"--workdir={workdir}"]
        + [f"--gin_bindings={binding}" for binding in bindings]
    )
    try:
        return train.main(["lplr-train"])
    finally:
        flags.FLAGS.unparse_flags()


def _sigterm_self(*args, **kwargs):
    del args, kwargs
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends


def test_sigterm_during_start_up_exits_4_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "check_initial_loss", _sigterm_self)
    assert _main(tmp_path) == errors.EXIT_PREEMPTED
    assert sorted(os.listdir(tmp_path)) == ["config.gin"]  # no lock, metrics or checkpoint
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_sigterm_while_finishing_exits_4_and_the_rerun_finishes(
    tmp_path, monkeypatch, uninterrupted
):
    with monkeypatch.context() as patches:
        patches.setattr(plots, "plot_convergence", _sigterm_self)
        assert _main(tmp_path) == errors.EXIT_PREEMPTED
    run_dir = RunDirectory(tmp_path)
    assert not os.path.exists(run_dir.summary) and not os.path.exists(run_dir.lock)
    assert _main(tmp_path) == errors.EXIT_OK
    _assert_identical(str(tmp_path), run_dir.read_summary(), uninterrupted)


def test_sigterm_while_tensorflow_is_imported_exits_4(tmp_path):
    process = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "lplr-train"),
            "--gin_file=digits_fc_gd.gin",
            f"--workdir={tmp_path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # SIGTERM as soon as the launcher catches it (the SigCgt mask of /proc/<pid>/status),
    # which is before TensorFlow is imported: before, the default action would kill it.
    deadline = time.monotonic() + 60
    while not int(_status_field(process.pid, "SigCgt"), 16) & (1 << (signal.SIGTERM - 1)):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == errors.EXIT_PREEMPTED, stderr[-2000:]
    assert "Preempted by SIGTERM during start-up" in stderr
    assert os.listdir(tmp_path) == []


def _status_field(pid, name):
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith(name + ":"):
                return line.split()[1]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def test_full_disk_while_logging_is_one_message_and_the_rerun_resumes(
    tmp_path, monkeypatch, uninterrupted, caplog
):
    write = MetricWriter.write

    def write_until_full(self, row, eigenvalues=None):
        if row["step"] == 65:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.metrics_path)
        write(self, row, eigenvalues)

    with monkeypatch.context() as patches:
        patches.setattr(MetricWriter, "write", write_until_full)
        assert _main(tmp_path) == errors.EXIT_CONFIG_ERROR
    assert "No space left on the disk of --workdir" in caplog.text
    assert "rerun the same command: the run resumes from its last checkpoint" in caplog.text
    assert _main(tmp_path) == errors.EXIT_OK
    _assert_identical(str(tmp_path), RunDirectory(tmp_path).read_summary(), uninterrupted)


def test_full_disk_while_checkpointing_is_one_message(tmp_path, monkeypatch, caplog):
    def full(self, step):
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{tmp_path}/checkpoints/ckpt-{step}.data; No space left on device"
        )

    monkeypatch.setattr(RunCheckpoint, "save", full)
    assert _main(tmp_path) == errors.EXIT_CONFIG_ERROR
    assert "No space left on the disk of --workdir" in caplog.text
    assert "Traceback" not in caplog.text


def test_rows_are_synced_to_disk_before_the_checkpoint_that_covers_them(tmp_path, monkeypatch):
    events = []
    fsync, save = os.fsync, RunCheckpoint.save

    def recording_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def recording_save(self, step):
        with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as file:
            logged = [line for line in file if line.endswith("\n")]
        events.append(("save", step, len(logged)))
        save(self, step)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(RunCheckpoint, "save", recording_save)
    train.launch(["digits_fc_gd.gin"], BINDINGS, str(tmp_path))
    metrics = os.path.realpath(tmp_path / "metrics.jsonl")
    saves = [i for i, event in enumerate(events) if event[0] == "save"]
    assert [events[i][1] for i in saves] == list(range(0, CONVERGED_AT, 20)) + [CONVERGED_AT]
    for index in saves:
        _, step, logged = events[index]
        assert logged == step // 5 + 1  # the rows of steps 0, 5, ..., step
        assert events[index - 1] == ("fsync", metrics)  # and they are on disk


def test_preempted_between_logged_steps_resumes_from_the_checkpointed_step(
    tmp_path, monkeypatch, uninterrupted
):
    polls = []

    def sigterm_after_63_steps(self):
        polls.append(None)
        return len(polls) == 63  # polled after every step: SIGTERM at step 63

    with monkeypatch.context() as patches:
        patches.setattr(preemption.TerminationFlag, "agreed", sigterm_after_63_steps)
        with pytest.raises(preemption.Interrupted) as interruption:
            train.launch(["digits_fc_gd.gin"], BINDINGS, str(tmp_path))
    assert interruption.value.step == 63
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-63")
    assert RunDirectory(tmp_path).read_metrics()[-1]["step"] == 60
    # The rerun continues from the weights of step 63 (not from the last row's step 60).
    summary = train.launch(["digits_fc_gd.gin"], BINDINGS, str(tmp_path))
    _assert_identical(str(tmp_path), summary, uninterrupted)


def test_sigterm_inside_a_probe_stops_it_checkpoints_and_the_rerun_redoes_it(
    tmp_path, monkeypatch, uninterrupted
):
    """SIGTERM during the kernel statistics of step 40: the probe polls the flag, the run
    checkpoints step 40 without its row and exits 4; the rerun measures step 40 again."""
    from lplr_tf import ntk

    statistics = ntk.kernel_statistics
    seen = []

    def interrupted_at_40(*args, should_stop=None, **kwargs):
        if should_stop is not None:  # a probe's (the a-priori check at θ₀ passes none)
            seen.append(should_stop)
        if len(seen) == 3 and should_stop is not None:  # after the probes of steps 0 and 20
            os.kill(os.getpid(), signal.SIGTERM)
            assert should_stop()  # the handler set the flag the probe polls
        return statistics(*args, should_stop=should_stop, **kwargs)

    with monkeypatch.context() as patches:
        patches.setattr(ntk, "kernel_statistics", interrupted_at_40)
        started = time.monotonic()
        assert _main(tmp_path) == errors.EXIT_PREEMPTED
        assert time.monotonic() - started < 120
    run_dir = RunDirectory(tmp_path)
    assert [row["step"] for row in run_dir.read_metrics()][-1] == 35  # no row for step 40
    assert int(tf.train.latest_checkpoint(run_dir.checkpoints).rsplit("-", 1)[1]) == 40
    assert _main(tmp_path) == errors.EXIT_OK
    _assert_identical(str(tmp_path), run_dir.read_summary(), uninterrupted)
