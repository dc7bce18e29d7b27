"""The launcher end to end: files written, configs parse and build, clear errors."""

import json
import os

import pytest

from lplr_tf import errors, train

METRIC_KEYS = {"step", "loss", "grad_norm_sq", "pl_ratio", "drift", "relative_drift", "wall_time"}
SUMMARY_KEYS = {
    "status",
    "steps",
    "initial_loss",
    "final_loss",
    "l_star",
    "fit",
    "pl_ratio",
    "drift",
}
CONFIGS = sorted(
    name
    for name in os.listdir(train.shipped_configs_dir())
    if name.endswith(".gin") and name not in ("base.gin", "smoke.gin")
)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_smoke_run_writes_every_file(tmp_path):
    workdir = str(tmp_path / "run")
    summary = train.launch(["digits_fc_gd.gin", "smoke.gin"], [], workdir)
    for name in ("config.gin", "operative_config.gin", "metrics.jsonl", "summary.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert os.path.getsize(os.path.join(workdir, "plots", "convergence.png")) > 0
    assert any(
        name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(workdir, "tb"))
    )
    rows = _rows(workdir)
    assert [row["step"] for row in rows] == [0, 4, 8, 12]
    for row in rows:
        assert METRIC_KEYS <= row.keys()
    assert rows[0]["drift"] == 0.0
    with open(os.path.join(workdir, "summary.json"), encoding="utf-8") as file:
        written = json.load(file)
    assert SUMMARY_KEYS <= written.keys()
    assert written == json.loads(json.dumps(summary))
    assert {"rate", "r2", "window"} <= written["fit"].keys()
    assert {"min", "median", "lower_envelope"} <= written["pl_ratio"].keys()
    assert {"final", "max", "relative_final"} <= written["drift"].keys()
    operative = open(os.path.join(workdir, "operative_config.gin"), encoding="utf-8").read()
    assert "build_model.width = 16" in operative
    assert "digits_fc_gd.gin" in open(os.path.join(workdir, "config.gin"), encoding="utf-8").read()


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses_and_builds(config, tmp_path, monkeypatch):
    text = open(train.resolve_config_file(config), encoding="utf-8").read()
    if "@data.cifar10" in text:
        from tfds_fakes import mock_prepared

        with mock_prepared(num_examples=256):
            summary = train.launch([config, "smoke.gin"], [], str(tmp_path))
    else:
        summary = train.launch([config, "smoke.gin"], [], str(tmp_path))
    assert summary["steps"] == 12


def test_config_found_by_path_and_by_name(tmp_path):
    by_name = train.resolve_config_file("digits_fc_gd.gin")
    assert os.path.isfile(by_name)
    local = tmp_path / "mine.gin"
    local.write_text("include 'digits_fc_gd.gin'\n")
    assert train.resolve_config_file(str(local)) == str(local)


@pytest.mark.parametrize(
    "files, bindings, message",
    [
        (
            ["digits_fc_gd.gin"],
            ["fc.build_modl.width = 3"],
            "No configurable matching 'fc.build_modl'",
        ),
        (
            ["digits_fc_gd.gin"],
            ["fc.build_model.widht = 3"],
            "doesn't have a parameter named 'widht'",
        ),
        (["digits_fc_gd.gin"], ["experiment.run.dataset = @data.digitz"], "data.digitz"),
        (["no_such_config.gin"], [], "--gin_file=no_such_config.gin: no such file"),
    ],
)
def test_bad_configuration_is_one_clear_message(files, bindings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train.launch(files, bindings, str(tmp_path))


def test_n_larger_than_the_dataset_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"n=100000 but only 360 examples"):
        train.launch(["digits_fc_gd.gin"], ["data.digits.n = 100000"], str(tmp_path))


def test_main_returns_config_error_exit_code(tmp_path):
    from absl import flags

    flags.FLAGS(
        [
            "lplr-train",
            "--gin_file=digits_fc_gd.gin",
            f"--workdir={tmp_path}",
            "--gin_bindings=fc.build_model.width = 'wide'",
        ]
    )
    try:
        assert train.main(["lplr-train"]) == errors.EXIT_CONFIG_ERROR
    finally:
        flags.FLAGS.unparse_flags()
