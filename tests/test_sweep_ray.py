"""lplr-sweep --backend=ray on a local Ray instance (2 CPUs): the same tables as the local
backend, a killed worker retried from its checkpoint, configuration errors not retried."""

import json
import os
import re
import signal
import threading
import time

import pytest
import ray

from lplr_tf import errors, sweep, sweep_ray
from lplr_tf.sweep_grid import Run

GIN_FILES = ["digits_fc_gd.gin", "smoke.gin"]
# 48 steps (checkpoints every 4) so that a worker can be killed in the middle of a run.
BINDINGS = ["diagnostics.ProbeSettings.measure_sharpness = False", "protocol.gd.num_steps = 48"]
GRID = ["fc.build_model.width=[8,16]"]
SEEDS = 2
VICTIM = "width=16/seed=0"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="error",
        object_store_memory=80 * 1024**2,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The reference: the same grid on the local backend (in this process)."""
    workdir = str(tmp_path_factory.mktemp("local") / "sweep")
    sweep.run_sweep(GIN_FILES, BINDINGS, GRID, SEEDS, workdir, log=lambda _: None)
    return workdir


def _read(path):
    with open(path, encoding="utf-8") as stream:
        return stream.read()


def _without_command(markdown):
    return re.sub(r"```\n.*?\n```\n\n", "", markdown, flags=re.S)


def test_ray_backend_writes_the_local_backends_tables_and_skips_finished_runs(
    local_ray, local_sweep, tmp_path
):
    workdir = str(tmp_path / "sweep")
    argv = [f"--gin_file={name}" for name in GIN_FILES]
    argv += [f"--gin_bindings={binding}" for binding in BINDINGS]
    argv += [f"--grid={GRID[0]}", f"--seeds={SEEDS}", f"--workdir={workdir}", "--backend=ray"]
    lines = []
    assert sweep.main(argv, log=lines.append) == 0
    for name in ("sweep.csv", "sweep_aggregate.csv"):
        assert _read(os.path.join(workdir, name)) == _read(os.path.join(local_sweep, name))
    assert _without_command(_read(os.path.join(workdir, "sweep.md"))) == _without_command(
        _read(os.path.join(local_sweep, "sweep.md"))
    )
    for name in ("sweep.png", "loss_curves.png"):
        assert os.path.getsize(os.path.join(workdir, "plots", name)) > 0
    assert sum(line.startswith("[sweep] submitted") for line in lines) == 4
    # Each run's own output went to its train.log, not to this process.
    assert "step 48/48" in _read(os.path.join(workdir, VICTIM, "train.log"))
    assert not any("Path not found" in line for line in lines)

    lines.clear()
    assert sweep.main(argv, log=lines.append) == 0
    assert sum("finished before" in line for line in lines) == 4
    assert not any(line.startswith("[sweep] submitted") for line in lines)


def _newest_checkpoint(run_dir):
    """The step of the newest checkpoint that TensorFlow's state file lists (0 if none)."""
    try:
        state = _read(os.path.join(run_dir, "checkpoints", "checkpoint"))
    except OSError:
        return 0
    found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', state, flags=re.M)
    return int(found.group(1)) if found else 0


def _logged_steps(run_dir):
    try:
        lines = _read(os.path.join(run_dir, "metrics.jsonl")).splitlines()
    except OSError:
        return [0]
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass  # a line being written
    return steps or [0]


def _signal_mid_run(run_dir, signum, sent, deadline_seconds=120):
    """Sends `signum` to the worker that runs in `run_dir` once it has a checkpoint past step 0."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline and not sent:
        try:
            pid = json.loads(_read(os.path.join(run_dir, "run.lock")))["pid"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.01)
            continue
        try:
            os.kill(pid, signal.SIGSTOP)  # hold it still while looking at its files
        except ProcessLookupError:
            continue
        finished = os.path.exists(os.path.join(run_dir, "summary.json"))
        logged = _logged_steps(run_dir)
        # Mid-run: past a checkpoint after step 0, and at least 8 steps before the end.
        if not finished and _newest_checkpoint(run_dir) > 0 and logged[-1] <= 40:
            os.kill(pid, signum)
            sent.append(_newest_checkpoint(run_dir))
        os.kill(pid, signal.SIGCONT)
        if finished:
            return
        time.sleep(0.01)


def test_killed_and_preempted_workers_are_retried_and_resume_from_their_checkpoints(
    local_ray, local_sweep, tmp_path
):
    workdir = str(tmp_path / "sweep")
    victims = {VICTIM: signal.SIGKILL, "width=8/seed=1": signal.SIGTERM}
    sent = {name: [] for name in victims}
    killers = [
        threading.Thread(
            target=_signal_mid_run, args=(os.path.join(workdir, name), signum, sent[name])
        )
        for name, signum in victims.items()
    ]
    for killer in killers:
        killer.start()
    lines = []
    result = sweep.run_sweep(
        GIN_FILES, BINDINGS, GRID, SEEDS, workdir, backend="ray", plot=False, log=lines.append
    )
    for killer in killers:
        killer.join()
    assert all(sent.values()), f"a victim finished before it could be signalled: {sent}"
    assert any(f"{VICTIM}: attempt 1 died (WorkerCrashedError); retrying" in x for x in lines)
    assert any("width=8/seed=1: attempt 1 died (SIGTERM); retrying" in x for x in lines)
    attempts = {run.name: run.attempts for run in result.runs}
    assert attempts == {"width=8/seed=0": 1, "width=8/seed=1": 2, VICTIM: 2, "width=16/seed=1": 1}
    # Each victim resumed from a checkpoint, not from scratch, and ended as if never stopped.
    resumed = re.findall(
        r"Resuming from .* \(step (\d+)\)\.", _read(f"{workdir}/{VICTIM}/train.log")
    )
    assert [int(step) for step in resumed] == sent[VICTIM]  # the newest checkpoint at the kill
    preempted_log = _read(os.path.join(workdir, "width=8/seed=1", "train.log"))
    assert "SIGTERM at step" in preempted_log and "Resuming from" in preempted_log
    assert _read(os.path.join(workdir, "sweep.csv")) == _read(
        os.path.join(local_sweep, "sweep.csv")
    )
    for name in victims:
        assert _logged_steps(os.path.join(workdir, name)) == list(range(0, 49, 4))


def test_a_configuration_error_is_reported_and_not_retried(local_ray, tmp_path):
    workdir = str(tmp_path / "sweep")
    lines = []
    result = sweep.run_sweep(
        GIN_FILES,
        BINDINGS,
        ["data.digits.n=[24,100000]"],
        1,
        workdir,
        backend="ray",
        plot=False,
        log=lines.append,
    )
    failed = next(run for run in result.runs if run.label_settings["n"] == "100000")
    assert failed.status == "error" and failed.configuration_error and failed.attempts == 1
    assert failed.error.startswith("configuration error: ") and "n=100000" in failed.error
    assert not any("retrying" in line for line in lines)
    assert result.exit_code() == errors.EXIT_CONFIG_ERROR


def test_the_lock_of_a_dead_attempt_is_removed_only_if_that_attempt_took_it(tmp_path):
    run = Run(settings={}, label_settings={}, seed=0, workdir=str(tmp_path), bindings=[])
    lock = tmp_path / "run.lock"
    lines = []
    lock.write_text(json.dumps({"pid": 1, "host": "other-node", "started": 1000.0}))
    sweep_ray._remove_lock_of_dead_attempt(run, submitted_at=2000.0, log=lines.append)
    assert lock.exists() and not lines  # older than the attempt: someone else's run
    sweep_ray._remove_lock_of_dead_attempt(run, submitted_at=999.0, log=lines.append)
    assert not lock.exists() and "removed the lock of its dead attempt" in lines[0]
