"""The paper's experiment configs: ResNet + SGD smoke runs write probe fields; headers run."""

import os
import re

import pytest

from lplr_tf import gin_config, sweep, train
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


@pytest.mark.parametrize("name", ["digits_width_ablation.gin", "mnist_width_ablation.gin"])
def test_documented_sweep_grid_parses(name):
    header = _header(name).replace("\\\n#", " ")
    grids = re.findall(r"--grid '([^']*)'", header)
    assert len(grids) == 2
    keys = [sweep.parse_grid(text) for text in grids]
    assert [k.name for k in keys] == ["fc.build_model.width", "protocol.gd.learning_rate"]
    assert keys[0].values == ("64", "256", "1024")
    # Every combination parses with the config (names are real gin parameters).
    _, labels, runs = sweep.plan([name], [], keys, (0,), "/nonexistent")
    assert labels == ["width", "learning_rate"] and len(runs) == 6
