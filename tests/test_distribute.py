"""tf.distribute: Mirrored over 2 logical CPUs and MultiWorkerMirrored over 2 local processes
give the single-device numbers; TPU and strategy settings fail with clear messages; workers
wait for each other with a deadline (an absent peer is named, exit code 2).

Logical devices must be configured before TensorFlow initializes, so every distributed run
happens in a fresh subprocess.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lplr_tf import distribute, errors, gin_config, rendezvous, train
from lplr_tf.rundir import RunDirectory

BINDINGS = [
    "data.digits.n = 24",
    "fc.build_model.width = 64",
    "protocol.gd.num_steps = 40",
    "protocol.gd.log_every = 5",
    "protocol.gd.probe_every = 20",
    "protocol.gd.learning_rate = 1.0",
    "experiment.run.stop_on_convergence = False",
]
COMPARED = (
    "loss",
    "grad_norm_sq",
    "pl_ratio",
    "drift",
    "ntk_lambda_min",
    "ntk_lambda_max",
    "kernel_drift",
    "sharpness",
)

RUN_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from lplr_tf import distribute, errors, train
    workdir, bindings = sys.argv[1], sys.argv[2:]
    try:
        train.launch(["digits_fc_gd.gin"], bindings, workdir)
    except train.Interrupted:
        sys.exit(errors.EXIT_PREEMPTED)
""")


def _run_script(workdir, bindings, env=None, wait=True):
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, str(workdir), *bindings],
        env=dict(os.environ, **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return process


def _assert_same_metrics(rows, expected_rows):
    assert [r["step"] for r in rows] == [r["step"] for r in expected_rows]
    for row, expected in zip(rows, expected_rows):
        for key in COMPARED:
            if expected.get(key) is None:
                assert row.get(key) is None, (row["step"], key)
            else:
                assert row[key] == pytest.approx(expected[key], rel=2e-4, abs=1e-7), (
                    row["step"],
                    key,
                )


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("single")
    train.launch(["digits_fc_gd.gin"], BINDINGS, str(workdir))
    return RunDirectory(workdir).read_metrics()


def test_mirrored_over_two_cpus_equals_single_device(tmp_path, single_device):
    _run_script(
        tmp_path,
        BINDINGS
        + [
            "experiment.run.strategy = @distribute.mirrored",
            "distribute.mirrored.devices = ['/cpu:0', '/cpu:1']",
        ],
    )
    _assert_same_metrics(RunDirectory(tmp_path).read_metrics(), single_device)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_over_two_processes_equals_single_device(tmp_path, single_device):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            _run_script(
                tmp_path,
                BINDINGS + ["experiment.run.strategy = @distribute.multi_worker"],
                env={"TF_CONFIG": json.dumps(tf_config)},
                wait=False,
            )
        )
    try:
        for process in processes:
            output, _ = process.communicate(timeout=600)
            assert process.returncode == 0, output[-3000:]
    finally:
        for process in processes:  # a failed worker leaves its peer blocked in a collective
            process.kill()
            process.wait()
    _assert_same_metrics(RunDirectory(tmp_path).read_metrics(), single_device)
    assert os.path.isfile(tmp_path / "workers" / "worker_1" / "summary.json")


def test_sigterm_to_one_worker_stops_every_worker_at_the_same_step(tmp_path):
    bindings = BINDINGS[:3] + [
        # Long enough that the SIGTERM (sent at step ~20) arrives well before the end, short
        # enough that the resumed run is quick: two processes step at ~30 steps/s.
        "protocol.gd.num_steps = 600",
        "protocol.gd.log_every = 5",
        "protocol.gd.probe_every = 500",
        "protocol.gd.learning_rate = 1.0",
        "experiment.run.stop_on_convergence = False",
        "experiment.run.checkpoint_every = 500",
        "experiment.run.strategy = @distribute.multi_worker",
    ]
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]

    def start():
        return [
            _run_script(
                tmp_path,
                bindings,
                wait=False,
                env={
                    "TF_CONFIG": json.dumps(
                        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
                    )
                },
            )
            for index in range(2)
        ]

    processes = start()
    try:
        metrics = tmp_path / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and metrics.read_text().count("\n") >= 5):
            assert time.monotonic() < deadline and processes[0].poll() is None
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGTERM)  # preempt the non-chief worker only
        outputs = [process.communicate(timeout=300)[0] for process in processes]
        assert [p.returncode for p in processes] == [errors.EXIT_PREEMPTED] * 2, outputs[0][-2000:]
        steps = [
            _latest_checkpoint_step(tmp_path),
            _latest_checkpoint_step(tmp_path / "workers" / "worker_1"),
        ]
        assert steps[0] == steps[1] and 0 < steps[0] < 600, steps
        processes = start()
        for process in processes:
            output, _ = process.communicate(timeout=600)
            assert process.returncode == 0, output[-3000:]
    finally:
        for process in processes:  # a failed worker leaves its peer blocked in a collective
            process.kill()
            process.wait()
    logged = [row["step"] for row in RunDirectory(tmp_path).read_metrics()]
    assert logged == list(range(0, 601, 5))


def _latest_checkpoint_step(workdir):
    import tensorflow as tf

    return int(tf.train.latest_checkpoint(str(workdir / "checkpoints")).rsplit("-", 1)[1])


def test_tpu_settings_fail_clearly():
    with pytest.raises(ValueError, match="needs distribute.tpu.address"):
        distribute.tpu()
    # Connecting to a TPU changes the process's TF context: probe it in a fresh process.
    code = (
        "from lplr_tf import distribute\n"
        "try:\n    distribute.tpu(address='local')\n"
        "except ValueError as error:\n    print('MESSAGE', error)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    ).stdout
    assert "MESSAGE No TPU reachable at distribute.tpu.address = 'local'" in output
    assert "On a TPU VM use distribute.tpu.address = 'local'" in output


def test_unknown_strategy_and_missing_tf_config_are_named(monkeypatch):
    with pytest.raises(errors.ConfigError, match="distribute.mirorred"):
        gin_config.parse_config(
            ["digits_fc_gd.gin"], ["experiment.run.strategy = @distribute.mirorred"]
        )
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.multi_worker()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG = '{not json' is not valid"):
        distribute.multi_worker()


def _cluster(count):
    return {"worker": [f"127.0.0.1:{port}" for port in _free_ports(count)]}


def test_rendezvous_waits_for_late_workers_and_names_a_missing_one():
    cluster = _cluster(3)
    outcomes = {}

    def worker(index, delay, timeout):
        time.sleep(delay)
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        try:
            rendezvous.wait_for_peers(config, timeout)
            outcomes[index] = "met"
        except ValueError as error:
            outcomes[index] = str(error)

    threads = [
        threading.Thread(target=worker, args=(index, delay, 10.0))
        for index, delay in ((0, 0.0), (1, 0.5), (2, 1.0))  # workers start at different times
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {0: "met", 1: "met", 2: "met"}
    threads = [threading.Thread(target=worker, args=(index, 0.0, 1.0)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in (0, 1):  # worker 2 never starts
        assert outcomes[index].startswith(
            f"distribute.multi_worker: worker 2 at {cluster['worker'][2]} did not start within "
            f"1 s (this is worker {index} at {cluster['worker'][index]})."
        )


def test_multi_worker_run_with_an_absent_peer_times_out_with_exit_2(tmp_path):
    tf_config = {"cluster": _cluster(2), "task": {"type": "worker", "index": 0}}
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "lplr-train"),
            "--gin_file=digits_fc_gd.gin",
            "--gin_file=smoke.gin",
            f"--workdir={tmp_path}",
            "--gin_bindings=experiment.run.strategy = @distribute.multi_worker",
            "--gin_bindings=distribute.multi_worker.timeout_seconds = 2",
        ],
        env=dict(os.environ, TF_CONFIG=json.dumps(tf_config)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == errors.EXIT_CONFIG_ERROR, result.stderr[-3000:]
    assert (
        f"worker 1 at {tf_config['cluster']['worker'][1]} did not start within 2 s" in result.stderr
    )
    assert "distribute.multi_worker.timeout_seconds" in result.stderr
    assert not os.path.exists(tmp_path / "metrics.jsonl")
