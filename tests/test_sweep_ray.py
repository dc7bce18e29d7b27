"""lplr-sweep --backend=ray on a local Ray instance (2 CPUs): the same tables as the local
backend, a killed worker retried from its checkpoint, configuration errors not retried."""

import glob
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
BINDINGS = ["experiment.run.measure_sharpness = False", "protocol.gd.num_steps = 48"]
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


def _checkpoint_steps(run_dir):
    names = glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.index"))
    return sorted(int(re.search(r"ckpt-(\d+)", name).group(1)) for name in names)


def _kill_mid_run(run_dir, killed, deadline_seconds=120):
    """SIGKILLs the worker that runs in `run_dir` once it has a checkpoint past step 0."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline and not killed:
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
        if not finished and any(step > 0 for step in _checkpoint_steps(run_dir)):
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, _checkpoint_steps(run_dir)))
            return
        os.kill(pid, signal.SIGCONT)
        if finished:
            return
        time.sleep(0.01)


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(
    local_ray, local_sweep, tmp_path
):
    workdir = str(tmp_path / "sweep")
    killed, lines = [], []
    killer = threading.Thread(target=_kill_mid_run, args=(os.path.join(workdir, VICTIM), killed))
    killer.start()
    result = sweep.run_sweep(
        GIN_FILES, BINDINGS, GRID, SEEDS, workdir, backend="ray", plot=False, log=lines.append
    )
    killer.join()
    assert killed, "the victim finished before it could be killed"
    assert any(f"{VICTIM}: attempt 1 died (WorkerCrashedError); retrying" in x for x in lines)
    victim = next(run for run in result.runs if run.name == VICTIM)
    assert victim.attempts == 2 and victim.status == "max_steps"
    assert [run.attempts for run in result.runs if run.name != VICTIM] == [1, 1, 1]
    # Resumed from its newest checkpoint, not from scratch, and ended as if never killed.
    newest = max(killed[0][1])
    assert f"(step {newest})." in _read(os.path.join(workdir, VICTIM, "train.log"))
    assert _read(os.path.join(workdir, "sweep.csv")) == _read(
        os.path.join(local_sweep, "sweep.csv")
    )
    steps = [
        json.loads(line)["step"] for line in _read(f"{workdir}/{VICTIM}/metrics.jsonl").splitlines()
    ]
    assert steps == list(range(0, 49, 4))


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
