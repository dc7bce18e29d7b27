"""The launcher end to end: files written, configs parse and build, clear errors."""

import json
import os
import re
import subprocess
import sys

import pytest

from lplr_tf import errors, gin_config, train
from lplr_tf.console import ProgressReporter

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
    for name in os.listdir(gin_config.shipped_configs_dir())
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
    text = open(gin_config.resolve_config_file(config), encoding="utf-8").read()
    if "@data.cifar10" in text:
        from tfds_fakes import mock_prepared

        with mock_prepared(num_examples=256):
            summary = train.launch([config, "smoke.gin"], [], str(tmp_path))
    else:
        summary = train.launch([config, "smoke.gin"], [], str(tmp_path))
    # In smoke form every shipped config trains its 12 steps without converging or diverging.
    assert summary["status"] == "max_steps" and summary["steps"] == 12
    rows = _rows(str(tmp_path))
    assert [row["step"] for row in rows] == [0, 4, 8, 12]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[0]["drift"] == 0.0 and rows[-1]["drift"] > 0
    # relative drift = drift / ‖θ₀‖ with the same ‖θ₀‖ on every row.
    norms = [row["drift"] / row["relative_drift"] for row in rows[1:]]
    assert max(norms) == pytest.approx(min(norms), rel=1e-5)
    for row in rows:
        # q = ‖∇L‖²/(2L) of the probe set, a Rayleigh quotient of its kernel K (L* = 0).
        assert row["pl_ratio"] == pytest.approx(row["grad_norm_sq"] / (2 * row["probe_loss"]))
        if "ntk_lambda_min" in row:
            slack = 1e-4 * row["ntk_lambda_max"]
            assert row["ntk_lambda_min"] - slack <= row["pl_ratio"] <= row["ntk_lambda_max"] + slack
    assert summary["drift"]["final"] == rows[-1]["drift"]
    assert summary["initial_loss"] == rows[0]["loss"] and summary["final_loss"] == rows[-1]["loss"]


def test_config_found_by_path_and_by_name(tmp_path):
    by_name = gin_config.resolve_config_file("digits_fc_gd.gin")
    assert os.path.isfile(by_name)
    local = tmp_path / "mine.gin"
    local.write_text("include 'digits_fc_gd.gin'\n")
    assert gin_config.resolve_config_file(str(local)) == str(local)


@pytest.mark.parametrize(
    "files, bindings, message",
    [
        (
            ["digits_fc_gd.gin"],
            ["fc.build_modl.width = 3"],
            r"No configurable matching 'fc.build_modl'.*\nDid you mean 'fc.build_model'[ ?]",
        ),
        (
            ["digits_fc_gd.gin"],
            ["fc.build_model.widht = 3"],
            r"doesn't have a parameter named 'widht'.*\nDid you mean fc.build_model.width\?",
        ),
        (
            ["digits_fc_gd.gin"],
            ["experiment.run.dataset = @data.digitz"],
            r"'@data.digitz'.*\nDid you mean 'data.digits'[ ?]",
        ),
        (
            ["digits_fc_gd.gin"],
            ["analysis.Settings.tolerence = 1e-3"],
            r"Did you mean analysis.Settings.tolerance\?",
        ),
        (
            ["no_such_config.gin"],
            [],
            "--gin_file=no_such_config.gin: no such file",
        ),
        (["digits_fc_gd"], [], r"Did you mean digits_fc_gd.gin\?"),
    ],
)
def test_bad_configuration_is_one_clear_message(files, bindings, message, tmp_path):
    with pytest.raises(ValueError, match=f"(?s){message}"):
        train.launch(files, bindings, str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing written


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


def test_help_lists_every_flag_with_its_help():
    # `lplr-train --help` is answered before TensorFlow is imported.
    result = subprocess.run(
        [_command("lplr-train"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == errors.EXIT_OK
    flag_lines = [line.strip() for line in result.stdout.splitlines() if line.startswith("  --")]
    assert flag_lines == ["--gin_file", "--gin_bindings", "--gin_search_paths", "--workdir"]
    help_text = " ".join(result.stdout.split())
    for text in train.FLAG_HELP.values():
        assert " ".join(text.split()) in help_text
    assert "Try --helpfull" not in result.stdout


def _command(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def test_search_paths_find_user_configs_and_their_includes(tmp_path):
    mine = tmp_path / "configs"
    (mine / "shared").mkdir(parents=True)
    (mine / "shared" / "tiny.gin").write_text("fc.build_model.width = 8\n")
    (mine / "mine.gin").write_text(
        "include 'digits_fc_gd.gin'\ninclude 'smoke.gin'\ninclude 'shared/tiny.gin'\n"
    )
    summary = train.launch(["mine.gin"], [], str(tmp_path / "run"), search_paths=[str(mine)])
    assert summary["steps"] == 12
    operative = open(tmp_path / "run" / "operative_config.gin", encoding="utf-8").read()
    assert "fc.build_model.width = 8" in operative
    with pytest.raises(ValueError, match=r"--gin_search_paths=/no/such/dir: no such directory"):
        train.launch(["mine.gin"], [], str(tmp_path / "other"), search_paths=["/no/such/dir"])


def test_console_shows_our_lines_only_and_ends_with_the_verdict(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [
            _command("lplr-train"),
            "--gin_file=digits_fc_gd.gin",
            "--gin_file=smoke.gin",
            f"--workdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == errors.EXIT_OK, result.stderr[-3000:]
    # Every stderr line is absl's format from one of our modules: no TensorFlow start-up
    # lines (oneDNN, cudart, cuInit, cpu_feature_guard, InitializeLog).
    modules = "experiment|console|train|checkpointing|initialization"
    ours = re.compile(rf"^[IWE]\d{{4}} [\d:.]+ +\d+ ({modules})\.py:\d+\] ")
    lines = result.stderr.splitlines()
    assert lines and all(ours.match(line) for line in lines), result.stderr[:2000]
    assert re.search(
        r"step 12/12  loss [\d.e+-]+  rate so far [\d.]+/step  [\d.]+ steps/s  ETA 0 s",
        result.stderr,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    head, blank, *paragraph = result.stdout.strip().splitlines()
    assert head == (
        f"Run ended at step 12 (max_steps). Summary: {tmp_path}/summary.json  "
        f"Plot: {tmp_path}/plots/convergence.png"
    )
    assert blank == "" and " ".join(paragraph) == summary["verdict"]
    assert all(len(line) <= 88 for line in paragraph)


def _events(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return accumulator


def test_tensorboard_tags_are_grouped_and_hold_the_metrics(tmp_path):
    import tensorflow as tf

    # Probes at 0, 4, 8, 12; the full spectrum (the histogram) at every second one.
    train.launch(
        ["digits_fc_gd.gin", "smoke.gin"],
        ["diagnostics.ProbeSettings.spectrum_every = 2"],
        str(tmp_path),
    )
    rows = _rows(tmp_path)
    events = _events(tmp_path / "tb")
    scalars = set(events.Tags()["tensors"])
    for tag in (
        "loss/train",
        "loss/probe",
        "loss/linearized",
        "gradient/norm_sq",
        "pl/ratio",
        "drift/param",
        "drift/kernel",
        "ntk/lambda_min",
        "ntk/lambda_max",
        "sharpness/hessian",
        "sharpness/gauss_newton",
    ):
        assert tag in scalars, (tag, sorted(scalars))
    for tag, key in (("loss/train", "loss"), ("ntk/lambda_min", "ntk_lambda_min")):
        logged = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
        assert logged == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in rows if key in r}
    assert [e.step for e in events.Tensors("ntk/spectrum")] == [0, 8]
    operative = tf.make_ndarray(events.Tensors("config/operative")[0].tensor_proto)
    assert b"fc.build_model.width = 16" in operative.item()


def test_hparams_of_a_single_run_are_its_gin_parameters(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    train.launch(["digits_fc_gd.gin", "smoke.gin"], ["numerics.seed = 3"], str(tmp_path))
    events = _events(tmp_path / "tb")
    content = events.PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {
        name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for name, value in data.session_start_info.hparams.items()
    }
    assert hparams["fc.build_model.width"] == 16
    assert hparams["fc.build_model.depth"] == 1
    assert hparams["protocol.gd.learning_rate"] == 2.5
    assert hparams["numerics.seed"] == 3
    assert hparams["data.digits.classes"] == "(0, 1)"


def test_progress_lines_estimate_the_time_left():
    lines = []
    now = [0.0]
    progress = ProgressReporter(
        1000, 0.0, tolerance=1e-6, clock=lambda: now[0], emit=lambda *a: lines.append(a[0] % a[1:])
    )
    progress(0, 1.0)
    now[0] = 10.0
    progress(100, 0.1)  # ρ = 0.1^(1/100), 10 steps/s: 1e-6 is 500 steps away, 50 s
    assert (
        lines[-1]
        == "step 100/1000  loss 1.0000e-01  rate so far 0.97724/step  10.0 steps/s  ETA 50 s"
    )
    no_stop = ProgressReporter(
        1000, 0.0, clock=lambda: now[0], emit=lambda *a: lines.append(a[0] % a[1:])
    )
    now[0] = 0.0
    no_stop(0, 1.0)
    now[0] = 10.0
    no_stop(100, 0.1, force=True)  # 900 steps left at 10 steps/s
    assert lines[-1].endswith("ETA 1 min 30 s")
