"""The exit-code table of `lplr-train` (lplr_tf/errors.py), through the installed command.

Every code is produced by a real `lplr-train` subprocess: 0 for a run that ends `max_steps`
and for one that stops at convergence before `num_steps`; 1 for a bug (a model builder that
raises, imported by the gin file from a user module); 2 for a configuration error (nothing
trained, no checkpoint written); 3 for a divergence; 4 for SIGTERM during training; 5 for a
second launch on the workdir of a live run. The launches run concurrently (each imports
TensorFlow, which is most of their time).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lplr_tf import errors
from lplr_tf.rundir import RunDirectory

COMMAND = os.path.join(os.path.dirname(sys.executable), "lplr-train")
SMOKE = ["--gin_file=digits_fc_gd.gin", "--gin_file=smoke.gin"]
NO_SHARPNESS = "--gin_bindings=diagnostics.ProbeSettings.measure_sharpness = False"
CONVERGING = [
    *SMOKE,
    NO_SHARPNESS,
    "--gin_bindings=protocol.gd.num_steps = 400",
    "--gin_bindings=protocol.gd.probe_every = 100",
    "--gin_bindings=analysis.Settings.tolerance = 1e-3",
]
LONG = [
    *SMOKE,
    NO_SHARPNESS,
    "--gin_bindings=protocol.gd.num_steps = 100000",
    "--gin_bindings=protocol.gd.log_every = 10",
    "--gin_bindings=protocol.gd.probe_every = 100000",
    "--gin_bindings=experiment.run.stop_on_convergence = False",
]
FAILING_MODEL = """
import gin


@gin.configurable
def failing_model(input_shape, output_dim):
    raise RuntimeError("planted bug in a user model builder")
"""
TIMEOUT = 300


class _Launch:
    """One `lplr-train` subprocess; its output goes to files (a full pipe would block it)."""

    def __init__(self, workdir, arguments, logs, env=None):
        self.workdir = workdir
        self.stdout_path, self.stderr_path = logs / "stdout", logs / "stderr"
        logs.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [COMMAND, f"--workdir={workdir}", *arguments],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, **(env or {})},
            )

    def result(self):
        """(return code, stdout, stderr, workdir) once the process has exited."""
        code = self.process.wait(TIMEOUT)
        return code, self.stdout_path.read_text(), self.stderr_path.read_text(), self.workdir


def _logged_steps(workdir):
    try:
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as file:
            return [json.loads(line)["step"] for line in file if line.endswith("\n")]
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """{case: (return code, stdout, stderr, workdir)} of every launch."""
    root = tmp_path_factory.mktemp("exit_codes")
    (root / "user_models.py").write_text(FAILING_MODEL)
    (root / "bug.gin").write_text(
        "include 'digits_fc_gd.gin'\nimport user_models\n"
        "experiment.run.model = @user_models.failing_model\n"
    )
    cases = {
        "max_steps": SMOKE,
        "converged": CONVERGING,
        "bug": [f"--gin_file={root / 'bug.gin'}"],
        "config_error": [*SMOKE, "--gin_bindings=protocol.gd.learning_rate = -1.0"],
        "diverged": [*SMOKE, "--gin_bindings=protocol.gd.learning_rate = 1000.0"],
        "preempted": LONG,
    }
    launched = {
        case: _Launch(root / case, arguments, root / "logs" / case, {"PYTHONPATH": str(root)})
        for case, arguments in cases.items()
    }
    processes = [launch.process for launch in launched.values()]
    try:
        # A second launch on the live run's workdir is refused (5); then SIGTERM stops the
        # live run (4), which writes a checkpoint at the step it reached.
        live = launched["preempted"]
        deadline = time.monotonic() + TIMEOUT
        while len(_logged_steps(live.workdir)) < 2:
            assert time.monotonic() < deadline, live.stderr_path.read_text()[-3000:]
            assert live.process.poll() is None, live.stderr_path.read_text()[-3000:]
            time.sleep(0.2)
        second = _Launch(live.workdir, LONG, root / "logs" / "locked")
        processes.append(second.process)
        results = {"locked": second.result()}
        assert live.process.poll() is None, live.stderr_path.read_text()[-3000:]
        live.process.send_signal(signal.SIGTERM)
        results.update((case, launch.result()) for case, launch in launched.items())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def _summary(workdir):
    with open(workdir / "summary.json", encoding="utf-8") as file:
        return json.load(file)


def _checkpoint_steps(workdir):
    names = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else []
    return sorted({int(name.split("-")[1].split(".")[0]) for name in names if "ckpt-" in name})


def test_max_steps_exits_0(launches):
    code, stdout, stderr, workdir = launches["max_steps"]
    assert code == errors.EXIT_OK, stderr[-3000:]
    summary = _summary(workdir)
    assert summary["status"] == "max_steps" and summary["steps"] == 12
    assert "the run ended at step 12 above the tolerance" in " ".join(stdout.split())


def test_convergence_stops_the_run_early_and_exits_0(launches):
    code, _, stderr, workdir = launches["converged"]
    assert code == errors.EXIT_OK, stderr[-3000:]
    summary = _summary(workdir)
    rows = RunDirectory(str(workdir)).read_metrics()
    assert summary["status"] == "converged"
    assert summary["status_step"] < 400
    # Stopped at the first logged step at or below the tolerance: no row after it.
    assert rows[-1]["step"] == summary["status_step"] == summary["steps"]
    assert rows[-1]["loss"] <= 1e-3 < rows[-2]["loss"]
    assert _checkpoint_steps(workdir)[-1] == summary["status_step"]


def test_a_bug_exits_1_with_its_traceback(launches):
    code, _, stderr, workdir = launches["bug"]
    assert code == errors.EXIT_ERROR, stderr[-3000:]
    assert "Traceback" in stderr
    assert "RuntimeError: planted bug in a user model builder" in stderr
    assert not (workdir / "run.lock").exists() and _checkpoint_steps(workdir) == []


def test_a_configuration_error_exits_2_before_anything_is_trained(launches):
    code, _, stderr, workdir = launches["config_error"]
    assert code == errors.EXIT_CONFIG_ERROR, stderr[-3000:]
    assert "protocol.gd.learning_rate" in stderr and "Traceback" not in stderr
    assert not workdir.exists() or not {"checkpoints", "metrics.jsonl"} & set(os.listdir(workdir))


def test_divergence_exits_3_with_its_summary(launches):
    code, _, stderr, workdir = launches["diverged"]
    assert code == errors.EXIT_DIVERGED, stderr[-3000:]
    summary = _summary(workdir)
    assert summary["status"] == "diverged" and summary["status_step"] < 12
    assert RunDirectory(str(workdir)).read_metrics()[-1]["step"] == summary["status_step"]


def test_sigterm_exits_4_after_a_checkpoint(launches):
    code, _, stderr, workdir = launches["preempted"]
    assert code == errors.EXIT_PREEMPTED, stderr[-3000:]
    assert "Preempted by SIGTERM at step" in stderr
    assert not (workdir / "summary.json").exists() and not (workdir / "run.lock").exists()
    steps = _logged_steps(workdir)
    checkpoints = _checkpoint_steps(workdir)
    assert 0 < steps[-1] <= checkpoints[-1] < 100000


def test_a_second_launch_on_a_live_workdir_exits_5(launches):
    code, _, stderr, _ = launches["locked"]
    assert code == errors.EXIT_LOCKED, stderr[-3000:]
    pid = launches["preempted"][3]  # the live run's workdir is named in the message
    assert f"--workdir={pid} is in use by process" in stderr
