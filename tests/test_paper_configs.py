"""The paper's experiment configs: ResNet + SGD smoke runs write probe fields; headers run; the
configs lplr-reproduce runs are the ones their headers document."""

import os
import re

import gin
import pytest

from lplr_tf import gin_config, reproduce, sweep, train
from lplr_tf.rundir import RunDirectory

PROBE_KEYS = {
    "ntk_lambda_min",
    "ntk_lambda_max",
    "ntk_trace",
    "kernel_drift",
    "pl_ratio",
    "grad_norm_sq",
    "sharpness",
    "drift",
    "loss",
    "probe_loss",
}
PAPER_CONFIGS = (
    "digits_resnet_sgd.gin",
    "cifar10_resnet_sgd.gin",
    "mnist_resnet_sgd.gin",
    "mnist_binary_fc_gd.gin",
    "digits_width_ablation.gin",
    "mnist_width_ablation.gin",
)


def _check_sgd_run(workdir, summary):
    assert summary["steps"] == 12
    rows = RunDirectory(workdir).read_metrics()
    assert [row["step"] for row in rows] == [0, 4, 8, 12]
    for row in rows:  # smoke.gin probes every 4 steps on a 16-example probe subset
        assert PROBE_KEYS <= row.keys(), sorted(row)
        assert row["ntk_lambda_max"] >= row["ntk_lambda_min"] > 0
    operative = open(os.path.join(workdir, "operative_config.gin"), encoding="utf-8").read()
    assert "resnet.build_model.stage_widths = (4, 8)" in operative
    assert "sgd.probe_size = 16" in operative


def test_digits_resnet_sgd_smoke(tmp_path):
    workdir = str(tmp_path / "digits")
    summary = train.launch(["digits_resnet_sgd.gin", "smoke.gin"], [], workdir)
    _check_sgd_run(workdir, summary)


def test_cifar10_resnet_sgd_smoke_on_mock_data(tmp_path):
    from tfds_fakes import mock_prepared

    workdir = str(tmp_path / "cifar")
    with mock_prepared(num_examples=256):
        summary = train.launch(
            ["cifar10_resnet_sgd.gin", "smoke.gin"],
            ["diagnostics.ProbeSettings.measure_sharpness = False"],
            workdir,
        )
    assert summary["steps"] == 12
    rows = RunDirectory(workdir).read_metrics()
    assert all({"ntk_lambda_min", "pl_ratio", "kernel_drift"} <= row.keys() for row in rows)


def _header(name):
    path = os.path.join(gin_config.shipped_configs_dir(), name)
    lines = open(path, encoding="utf-8").read().splitlines()
    return "\n".join(line for line in lines if line.startswith("#"))


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_header_states_command_what_and_runtime(name):
    header = _header(name)
    assert header.startswith("# Command")
    assert "# Shows:" in header and "Expected runtime" in header
    assert re.search(r"lplr-(train|sweep) --gin_file=" + re.escape(name), header)


def _documented_grid(name):
    header = _header(name).replace("\\\n#", " ")
    return [sweep.parse_grid(text) for text in re.findall(r"--grid '([^']*)'", header)]


def test_documented_digits_sweep_grid_parses():
    keys = _documented_grid("digits_width_ablation.gin")
    assert [k.name for k in keys] == ["fc.build_model.width", "protocol.gd.learning_rate"]
    assert keys[0].values == ("64", "256", "1024")
    # Every combination parses with the config (names are real gin parameters).
    _, labels, runs = sweep.plan(["digits_width_ablation.gin"], [], keys, (0,), "/nonexistent")
    assert labels == ["width", "learning_rate"] and len(runs) == 6


def test_mnist_ablation_header_documents_the_grid_lplr_reproduce_runs():
    (experiment,) = reproduce.plan_experiments([reproduce.WIDTH_ABLATION])
    keys = _documented_grid("mnist_width_ablation.gin")
    assert keys == [sweep.parse_grid(text) for text in experiment.grid]
    assert keys[0].values == ("128", "256", "512", "1024", "2048", "4096")
    assert keys[1].values == ("None", "0.5")  # the config's fixed eta, and eta = 0.5 / beta_0
    assert re.search(r"--seeds 3\b", _header("mnist_width_ablation.gin")) and experiment.seeds == 3
    _, labels, runs = sweep.plan([experiment.gin_file], [], keys, (0,), "/nonexistent")
    assert labels == ["width", "learning_rate_times_sharpness"] and len(runs) == 12
    planned = {tuple(run.settings.values()) for run in runs}
    assert ("1024", "None") in planned and ("4096", "0.5") in planned


def _parsed(name, parameters):
    from lplr_tf import experiment  # noqa: F401  (registers the configurables)

    gin.clear_config()
    with gin_config.quiet_gin_search():
        gin.parse_config_files_and_bindings(
            [gin_config.resolve_config_file(name)], [], finalize_config=False
        )
    values = {parameter: gin.query_parameter(parameter) for parameter in parameters}
    gin.clear_config()
    return values


def test_cifar10_and_mnist_resnet_configs_differ_only_in_the_data():
    model = ("stage_widths", "strides", "blocks_per_stage", "batch_norm", "batch_norm_momentum")
    model += ("parameterization", "pooling")
    sgd = ("learning_rate_times_sharpness", "num_steps", "batch_size", "log_every", "probe_every")
    shared = [f"resnet.build_model.{p}" for p in model] + [f"protocol.sgd.{p}" for p in sgd]
    shared.append("protocol.sgd.probe_size")
    cifar = _parsed("cifar10_resnet_sgd.gin", shared + ["data.cifar10.n", "data.cifar10.classes"])
    mnist = _parsed("mnist_resnet_sgd.gin", shared + ["data.mnist.n", "data.mnist.classes"])
    assert {p: cifar[p] for p in shared} == {p: mnist[p] for p in shared}
    assert cifar["data.cifar10.n"] == mnist["data.mnist.n"] == 512
    assert cifar["protocol.sgd.learning_rate_times_sharpness"] == 1.0
