"""Surviving crashes: kill -9 and SIGTERM mid-run, truncated checkpoints, damaged run
directories (missing rows, plots, summaries, locks), one run per workdir."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from lplr_tf import checkpointing, errors, rundir, train
from lplr_tf.rundir import RunDirectory

# 300 GD steps on 32 digits, a row every 10 steps, NTK probe and checkpoint every 50.
BINDINGS = [
    "data.digits.n = 32",
    "fc.build_model.width = 256",
    "protocol.gd.num_steps = 300",
    "protocol.gd.learning_rate = 1.0",
    "protocol.gd.probe_every = 50",
    "diagnostics.ProbeSettings.measure_sharpness = False",
    "experiment.run.stop_on_convergence = False",
]


def _command(workdir, bindings=BINDINGS):
    return [
        sys.executable,
        "-m",
        "lplr_tf.train",
        "--gin_file=digits_fc_gd.gin",
        f"--workdir={workdir}",
    ] + [f"--gin_bindings={b}" for b in bindings]


def _start(workdir, bindings=BINDINGS):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    log = open(os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".log"), "w")
    process = subprocess.Popen(_command(workdir, bindings), env=env, stdout=log, stderr=log)
    process.log_path = log.name
    return process


def _log(process):
    with open(process.log_path, encoding="utf-8") as file:
        return file.read()[-3000:]


def _wait_for_step(workdir, step, process, timeout=240):
    deadline = time.monotonic() + timeout
    path = os.path.join(workdir, "metrics.jsonl")
    while time.monotonic() < deadline:
        assert process.poll() is None, _log(process)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as file:
                steps = [json.loads(line)["step"] for line in file if line.endswith("\n")]
            if steps and steps[-1] >= step:
                return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} logged in {timeout} s")


def _assert_close(actual, expected, path="summary"):
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), path
        for key in expected:
            if key not in ("verdict",):
                _assert_close(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float):
        assert math.isclose(actual, expected, rel_tol=1e-4, abs_tol=1e-9), (path, actual, expected)
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for a, e in zip(actual, expected):
            _assert_close(a, e, path)
    else:
        assert actual == expected, (path, actual, expected)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    summary = train.launch(["digits_fc_gd.gin"], BINDINGS, workdir)
    return summary, RunDirectory(workdir).read_metrics()


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted):
    workdir = str(tmp_path / "run")
    process = _start(workdir)
    _wait_for_step(workdir, 170, process)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    summary = train.launch(["digits_fc_gd.gin"], BINDINGS, workdir)  # stale lock taken over
    rows = RunDirectory(workdir).read_metrics()
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as file:
        logged_steps = [json.loads(line)["step"] for line in file]
    assert logged_steps == list(range(0, 301, 10))
    expected_summary, expected_rows = uninterrupted
    _assert_close(summary, expected_summary)
    for row, expected in zip(rows, expected_rows):
        _assert_close(
            {k: v for k, v in row.items() if k != "wall_time"},
            {k: v for k, v in expected.items() if k != "wall_time"},
            f"step {row['step']}",
        )


def test_sigterm_writes_a_checkpoint_and_exits_4(tmp_path):
    workdir = str(tmp_path / "run")
    process = _start(workdir)
    _wait_for_step(workdir, 60, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == errors.EXIT_PREEMPTED
    checkpoint = checkpointing.RunCheckpoint(RunDirectory(workdir).checkpoints)
    assert checkpoint.manager.latest_checkpoint is not None
    assert not os.path.exists(os.path.join(workdir, rundir.LOCK_FILE))
    summary = train.launch(["digits_fc_gd.gin"], BINDINGS, workdir)
    assert summary["steps"] == 300


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    workdir = str(tmp_path)
    train.launch(["digits_fc_gd.gin"], BINDINGS, workdir)
    os.remove(os.path.join(workdir, "summary.json"))  # make it resumable again
    checkpoints = os.path.join(workdir, "checkpoints")
    newest = sorted(
        (f for f in os.listdir(checkpoints) if ".data-" in f),
        key=lambda f: int(f.split("-")[1].split(".")[0]),
    )[-1]
    assert newest.startswith("ckpt-300")
    with open(os.path.join(checkpoints, newest), "r+b") as file:
        file.truncate(os.path.getsize(os.path.join(checkpoints, newest)) // 2)
    summary = train.launch(["digits_fc_gd.gin"], BINDINGS, workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as file:
        assert [json.loads(line)["step"] for line in file] == list(range(0, 301, 10))
    _assert_close(summary, uninterrupted[0])


def test_second_run_on_a_live_workdir_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    long_run = BINDINGS + ["protocol.gd.num_steps = 100000"]
    process = _start(workdir, long_run)
    try:
        _wait_for_step(workdir, 0, process)
        with pytest.raises(
            errors.RunLockedError,
            match=rf"--workdir={workdir} is in use by process {process.pid}",
        ):
            train.launch(["digits_fc_gd.gin"], long_run, workdir)
        assert process.poll() is None, _log(process)
    finally:
        process.kill()
        process.wait()


def test_changed_configuration_on_a_resumable_workdir_is_refused(tmp_path):
    workdir = str(tmp_path)
    bindings = BINDINGS[:2] + ["protocol.gd.num_steps = 20", "protocol.gd.probe_every = 10"]
    train.launch(["digits_fc_gd.gin"], bindings, workdir)
    with pytest.raises(ValueError, match="holds a run started with another configuration"):
        train.launch(["digits_fc_gd.gin"], bindings + ["fc.build_model.width = 64"], workdir)


def test_finished_run_is_not_trained_again(tmp_path):
    workdir = str(tmp_path)
    bindings = BINDINGS[:2] + ["protocol.gd.num_steps = 20", "protocol.gd.probe_every = 10"]
    first = train.launch(["digits_fc_gd.gin"], bindings, workdir)
    modified = os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
    assert train.launch(["digits_fc_gd.gin"], bindings, workdir) == first
    assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == modified


def test_sgd_resume_continues_the_batch_order(tmp_path):
    # The data iterator is checkpointed: resuming mid-epoch replays the same batches.
    bindings = BINDINGS[:2] + [
        "experiment.run.protocol = @protocol.sgd",
        "protocol.sgd.batch_size = 5",
        "protocol.sgd.num_steps = 40",
        "protocol.sgd.log_every = 4",
        "protocol.sgd.probe_every = 8",
        "diagnostics.ProbeSettings.measure_sharpness = False",
        "experiment.run.stop_on_convergence = False",
    ]
    expected = train.launch(["digits_fc_gd.gin"], bindings, str(tmp_path / "straight"))
    workdir = str(tmp_path / "resumed")
    train.launch(["digits_fc_gd.gin"], bindings, workdir)
    os.remove(os.path.join(workdir, "summary.json"))
    checkpoints = os.path.join(workdir, "checkpoints")
    for name in os.listdir(checkpoints):  # drop the last checkpoints: resume from step 24
        if name.startswith(("ckpt-32", "ckpt-40")):
            os.remove(os.path.join(checkpoints, name))
    summary = train.launch(["digits_fc_gd.gin"], bindings, workdir)
    _assert_close(summary, expected)
    assert [r["loss"] for r in RunDirectory(workdir).read_metrics()] == pytest.approx(
        [r["loss"] for r in RunDirectory(tmp_path / "straight").read_metrics()], rel=1e-5
    )


# Converges at step 170 (not a periodic checkpoint: the final checkpoint is the stop's own).
CONVERGING = [
    "data.digits.n = 32",
    "fc.build_model.width = 64",
    "protocol.gd.num_steps = 300",
    "protocol.gd.learning_rate = 1.0",
    "protocol.gd.log_every = 5",
    "protocol.gd.probe_every = 20",
    "diagnostics.ProbeSettings.measure_sharpness = False",
    "analysis.Settings.tolerance = 3e-3",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("finished"))
    summary = train.launch(["digits_fc_gd.gin"], CONVERGING, workdir)
    assert (summary["status"], summary["steps"]) == ("converged", 170)
    return workdir, summary, _without_wall_time(RunDirectory(workdir).read_metrics())


def _without_wall_time(rows):
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in rows]


def _copy(finished, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished[0], workdir)
    return workdir


def test_finished_run_without_summary_and_plots_is_not_trained_past_its_end(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    os.remove(os.path.join(workdir, "summary.json"))  # rm -r WD/summary.json WD/plots
    shutil.rmtree(os.path.join(workdir, "plots"))
    summary = train.launch(["digits_fc_gd.gin"], CONVERGING, workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as file:
        assert [json.loads(line)["step"] for line in file] == list(range(0, 171, 5))
    assert _without_wall_time(RunDirectory(workdir).read_metrics()) == finished[2]
    assert summary == finished[1]
    assert os.path.getsize(os.path.join(workdir, "plots", "convergence.png")) > 1000


def test_finished_run_whose_plot_is_missing_draws_it_again(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    shutil.rmtree(os.path.join(workdir, "plots"))
    summary = train.launch(["digits_fc_gd.gin"], CONVERGING, workdir)
    assert os.path.getsize(os.path.join(workdir, "plots", "convergence.png")) > 1000
    assert summary == finished[1] == RunDirectory(workdir).read_summary()
    assert _without_wall_time(RunDirectory(workdir).read_metrics()) == finished[2]


def _lose_line(number):
    def damage(path):
        with open(path, encoding="utf-8") as file:
            lines = file.readlines()
        with open(path, "w", encoding="utf-8") as file:
            file.writelines(lines[:number] + lines[number + 1 :])

    return damage


def _cut_last_line(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) - 40)


def _empty(path):
    open(path, "w").close()


@pytest.mark.parametrize(
    "damage, message",
    [
        (os.remove, r"metrics.jsonl is missing, but .*checkpoints holds a checkpoint of step 170"),
        (
            _empty,
            r"lacks the rows of steps 0, 5, 10, 15, 20, 25, \.\.\. \(34 steps\), logged "
            r"before the checkpoint of step 170",
        ),
        (_lose_line(2), r"lacks the rows of steps 10, logged before the checkpoint of step 170"),
    ],
    ids=["deleted", "emptied", "a lost line"],
)
def test_resume_refuses_a_metrics_file_that_lacks_rows_its_checkpoint_covers(
    damage, message, finished, tmp_path
):
    workdir = _copy(finished, tmp_path)
    os.remove(os.path.join(workdir, "summary.json"))
    metrics = os.path.join(workdir, "metrics.jsonl")
    damage(metrics)
    damaged = open(metrics, "rb").read() if os.path.exists(metrics) else None
    with pytest.raises(errors.ConfigError, match=message) as refusal:
        train.launch(["digits_fc_gd.gin"], CONVERGING, workdir)
    assert "Restore metrics.jsonl from a backup" in str(refusal.value)
    assert "start the run over: delete" in str(refusal.value)
    assert (open(metrics, "rb").read() if os.path.exists(metrics) else None) == damaged
    assert not os.path.exists(os.path.join(workdir, "summary.json"))


def test_a_cut_last_row_is_measured_again_from_the_checkpoint_of_its_step(finished, tmp_path):
    # The checkpoint of step 170 holds the weights of that step: its lost row is remeasured
    # (as after SIGTERM during that step's probe), not refused.
    workdir = _copy(finished, tmp_path)
    os.remove(os.path.join(workdir, "summary.json"))
    _cut_last_line(os.path.join(workdir, "metrics.jsonl"))
    summary = train.launch(["digits_fc_gd.gin"], CONVERGING, workdir)
    rows = _without_wall_time(RunDirectory(workdir).read_metrics())
    expected = finished[2]
    assert [row["step"] for row in rows] == [row["step"] for row in expected]
    assert rows[:-1] == expected[:-1]
    for key, value in expected[-1].items():  # warm starts differ: solver tolerance
        assert rows[-1][key] == (
            pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
        )
    assert (summary["status"], summary["status_step"]) == ("converged", 170)


def test_history_without_any_checkpoint_is_not_overwritten(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    os.remove(os.path.join(workdir, "summary.json"))
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    before = open(os.path.join(workdir, "metrics.jsonl"), "rb").read()
    with pytest.raises(
        errors.ConfigError, match=r"holds rows up to step 170 but .* has no readable checkpoint"
    ):
        train.launch(["digits_fc_gd.gin"], CONVERGING, workdir)
    assert open(os.path.join(workdir, "metrics.jsonl"), "rb").read() == before


def test_refused_launch_leaves_config_gin_alone(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    config = open(os.path.join(workdir, "config.gin"), "rb").read()
    live_owner = {"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}
    with open(os.path.join(workdir, rundir.LOCK_FILE), "w", encoding="utf-8") as lock:
        json.dump(live_owner, lock)
    listing = sorted(os.listdir(workdir))
    with pytest.raises(errors.RunLockedError, match=rf"in use by process {os.getppid()}"):
        train.launch(["digits_fc_gd.gin"], CONVERGING + ["fc.build_model.width = 32"], workdir)
    assert open(os.path.join(workdir, "config.gin"), "rb").read() == config
    assert sorted(os.listdir(workdir)) == listing
    os.remove(os.path.join(workdir, rundir.LOCK_FILE))  # that run ended: the original resumes
    assert train.launch(["digits_fc_gd.gin"], CONVERGING, workdir) == finished[1]


@pytest.mark.parametrize(
    "content, message", [("", r"is empty"), ("garbage{", r"holds 'garbage\{'")]
)
def test_damaged_lock_file_names_itself_and_how_to_remove_it(content, message, tmp_path):
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text(content)
    with pytest.raises(errors.RunLockedError, match=message) as refusal:
        train.launch(["digits_fc_gd.gin", "smoke.gin"], [], str(tmp_path))
    assert f"delete it (rm {lock})" in str(refusal.value)
    assert "None" not in str(refusal.value) and "1970" not in str(refusal.value)
    assert lock.read_text() == content
