"""lplr-sweep (local backend): grid × seeds, tables with seed statistics, diverged runs left
out, skipping finished runs, errors recorded, the command line, bad --grid."""

import csv
import json
import math
import os
import sys

import numpy as np
import pytest

from lplr_tf import errors, sweep, sweep_grid
from lplr_tf.errors import ConfigError

GRID = ["fc.build_model.width=[8,16]", "protocol.gd.learning_rate=[0.5,1000.0]"]
FAST = ["diagnostics.ProbeSettings.measure_sharpness = False"]
T_975_ONE_DOF = math.tan(0.475 * math.pi)  # Student t, 1 degree of freedom: the Cauchy quantile


def _quiet(*_):
    pass


def _csv(path):
    with open(path, encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _number(text):
    return float(text) if text else None


def test_grid_with_two_seeds_tables_statistics_and_skipping(tmp_path):
    workdir = str(tmp_path / "ablation")
    result = sweep.run_sweep(["digits_fc_gd.gin"], FAST, GRID, 2, workdir, smoke=True, log=_quiet)
    rows = _csv(os.path.join(workdir, "sweep.csv"))
    assert len(rows) == 8 and len(result.ran) == 8
    assert [(r["width"], r["learning_rate"], r["seed"]) for r in rows] == [
        (w, lr, s) for w in ("8", "16") for lr in ("0.5", "1000.0") for s in ("0", "1")
    ]
    assert [r["run"] for r in rows[:2]] == ["width=8,learning_rate=0.5/seed=0"] + [
        "width=8,learning_rate=0.5/seed=1"
    ]
    statuses = {r["learning_rate"]: set() for r in rows}
    for row in rows:
        statuses[row["learning_rate"]].add(row["status"])
    assert statuses == {"0.5": {"max_steps"}, "1000.0": {"diverged"}}

    # Every CSV number is the run's own summary.json value.
    for row in rows:
        with open(os.path.join(workdir, row["run"], "summary.json"), encoding="utf-8") as stream:
            summary = json.load(stream)
        assert _number(row["final_loss"]) == summary["final_loss"]
        assert _number(row["kernel_drift"]) == summary["ntk"]["kernel_drift_final"]
        assert _number(row["relative_drift"]) == summary["drift"]["relative_final"]
        assert _number(row["mu"]) == summary["bound"]["mu"]
    run_dir = os.path.join(workdir, "width=16,learning_rate=0.5", "seed=1")
    operative = open(os.path.join(run_dir, "operative_config.gin"), encoding="utf-8").read()
    assert "numerics.seed = 1" in operative and "build_model.seed = 1" in operative
    assert "build_model.width = 16" in operative and "learning_rate = 0.5" in operative

    # Across seeds: mean and Student-t interval of the two seeds; diverged runs left out.
    aggregate = {
        (r["width"], r["learning_rate"]): r for r in _csv(workdir + "/sweep_aggregate.csv")
    }
    assert len(aggregate) == 4
    for width in ("8", "16"):
        seeds = [r for r in rows if r["width"] == width and r["learning_rate"] == "0.5"]
        for name in ("fitted_rate", "final_drift", "kernel_drift", "pl_lower_envelope", "mu"):
            values = np.array([float(r[name]) for r in seeds])
            row = aggregate[(width, "0.5")]
            half = T_975_ONE_DOF * values.std(ddof=1) / math.sqrt(2)
            assert float(row[f"{name}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
            assert float(row[f"{name}_ci95_low"]) == pytest.approx(values.mean() - half, rel=1e-9)
            assert float(row[f"{name}_ci95_high"]) == pytest.approx(values.mean() + half, rel=1e-9)
            assert (float(row[f"{name}_min"]), float(row[f"{name}_max"])) == (
                values.min(),
                values.max(),
            )
            assert row[f"{name}_n"] == "2"
        diverged = aggregate[(width, "1000.0")]
        assert diverged["left_out"] == "seed=0 diverged; seed=1 diverged"
        assert diverged["final_drift_n"] == "0" and diverged["final_drift_mean"] == ""
    markdown = open(os.path.join(workdir, "sweep.md"), encoding="utf-8").read()
    assert "| width | learning_rate | seed | status | phase model | τ | ρ̂ |" in markdown
    assert markdown.count("| diverged (left out) |") == 4
    assert "Student t with n − 1 degrees of freedom" in markdown
    for name in ("sweep.png", "loss_curves.png"):
        assert os.path.getsize(os.path.join(workdir, "plots", name)) > 0
    _assert_hparams_columns_match_the_runs(workdir, result.runs)

    summaries = [os.path.join(r.workdir, "summary.json") for r in result.runs]
    before = {path: os.stat(path).st_mtime_ns for path in summaries}
    table_before = open(os.path.join(workdir, "sweep.csv"), encoding="utf-8").read()
    lines = []
    again = sweep.run_sweep(
        ["digits_fc_gd.gin"], FAST, GRID, 2, workdir, smoke=True, plot=False, log=lines.append
    )
    assert len(again.skipped) == 8 and not again.ran
    assert {path: os.stat(path).st_mtime_ns for path in summaries} == before
    table_after = open(os.path.join(workdir, "sweep.csv"), encoding="utf-8").read()
    assert table_after == table_before.replace(",ran,", ",skipped,")
    assert sum("skipped" in line for line in lines) == 8


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    workdir = str(tmp_path / "sweep")
    arguments = [
        "--gin_file=digits_fc_gd.gin",
        "--smoke",
        f"--workdir={workdir}",
        "--gin_bindings=diagnostics.ProbeSettings.measure_sharpness = False",
        "--grid=data.digits.n=[24,100000]",
        "--noplots",
    ]
    lines = []
    # Only a configuration error failed: the sweep's exit code is that of a configuration error.
    assert sweep.main(arguments, log=lines.append) == errors.EXIT_CONFIG_ERROR
    rows = {r["n"]: r for r in _csv(os.path.join(workdir, "sweep.csv"))}
    assert rows["24"]["status"] == "max_steps"
    assert rows["100000"]["status"] == "error"
    assert rows["100000"]["error"].startswith("configuration error: ")
    assert "n=100000" in rows["100000"]["error"]
    assert "## Errors" in open(os.path.join(workdir, "sweep.md"), encoding="utf-8").read()
    assert any("n=100000/seed=0: error" in line for line in lines)


def test_parallel_subprocesses_and_per_run_progress(tmp_path):
    workdir = str(tmp_path / "parallel")
    lines = []
    code = sweep.main(
        [
            "--gin_file=digits_fc_gd.gin",
            "--smoke",
            f"--workdir={workdir}",
            "--gin_bindings=diagnostics.ProbeSettings.measure_sharpness = False",
            "--grid=fc.build_model.width=[8,16]",
            "--seeds=1",
            "--parallel=2",
            "--progress_seconds=0",
            "--noplots",
        ],
        log=lines.append,
    )
    assert code == 0
    rows = _csv(os.path.join(workdir, "sweep.csv"))
    assert [r["status"] for r in rows] == ["max_steps", "max_steps"]
    log = open(os.path.join(workdir, "width=8", "seed=0", "train.log"), encoding="utf-8").read()
    assert "step 12/12" in log and "Path not found" not in log
    assert "[sweep] 2/2 done, 0 running, 0 pending" in lines
    assert any(line.startswith("[sweep] 0/2 done, 2 running, 0 pending") for line in lines)


def test_without_ray_the_ray_backend_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'lplr_tf\[ray\]' \(Ray 2\.60\.0\)"):
        sweep.main(
            [
                "--gin_file=digits_fc_gd.gin",
                f"--workdir={tmp_path / 'sweep'}",
                "--grid=fc.build_model.width=[8,16]",
                "--backend=ray",
            ],
            log=_quiet,
        )
    assert not os.listdir(tmp_path)


def test_help_lists_every_flag_with_its_help():
    lines = []
    assert sweep.main(["--help"], log=lines.append) == 0
    text = "\n".join(lines)
    for flag in sweep.define_flags():
        assert f"--{flag}" in text or f"--[no]{flag}" in text
    assert "--backend: <local|ray>: Where the runs go" in text
    assert "--cpus_per_trial: Ray backend: CPUs each run holds." in text
    assert "--flagfile" not in text  # absl's own flags are not ours to explain


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--seeds=3", "--bogus=1"], "Unknown command line flag 'bogus'"),
        (["--parallel=two"], "flag --parallel=two"),
        (["--backend=spark"], "value should be one of <local|ray>"),
        (["--workdir=x", "extra"], "Unexpected arguments ['extra']"),
        (["--workdir=x", "--gpus_per_trial=1"], "--gpus_per_trial given with --backend=local"),
        (["--workdir=x", "--backend=ray", "--parallel=2"], "these flags are for --backend=local"),
        (["--backend=ray", "--cpus_per_trial=-1"], "--cpus_per_trial=-1.0; expected a number"),
    ],
)
def test_bad_flags_are_one_message_and_exit_2(argv, expected, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lplr-sweep", *argv])
    with pytest.raises(SystemExit) as exit_info:
        sweep.console_main()
    assert exit_info.value.code == errors.EXIT_CONFIG_ERROR
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error
    assert error.startswith("lplr-sweep: error: ")


@pytest.mark.parametrize(
    "text, why",
    [
        ("fc.build_model.width", "no '='"),
        ("fc.build_model.width=64", "not a bracketed list"),
        ("width=[64,256]", "'width' is not a gin parameter name"),
        ("fc.build_model.width=[]", "an empty value"),
        ("fc.build_model.width=[64,,256]", "an empty value"),
        ("fc.build_model.activation=[relu,tanh]", "'relu' is not a gin literal"),
        ("fc.build_model.width=[(64,256]", "unbalanced"),
        ("fc.build_model.width=[64,64]", "listed twice"),
    ],
)
def test_malformed_grid_names_the_value_and_the_form(text, why):
    with pytest.raises(ValueError) as error:
        sweep_grid.parse_grid(text)
    message = str(error.value)
    assert text in message and why in message
    assert "configurable.parameter=[v1,v2,...]" in message


def test_grid_of_an_unknown_parameter_fails_before_running(tmp_path, capsys):
    with pytest.raises(ValueError, match="widht"):
        sweep.main(
            [
                "--gin_file=digits_fc_gd.gin",
                "--smoke",
                f"--workdir={tmp_path}",
                "--grid=fc.build_model.widht=[8,16]",
            ],
            log=_quiet,
        )
    assert not os.listdir(tmp_path)
    assert "Path not found" not in capsys.readouterr().err  # gin's spurious include errors


def test_names_are_readable_and_filesystem_safe():
    assert sweep_grid.safe_value("(16, 32)") == "16-32"
    assert sweep_grid.safe_value("'relu'") == "relu"
    assert sweep_grid.safe_value("@data.digits") == "data.digits"
    keys = [
        sweep_grid.parse_grid("protocol.gd.learning_rate=[0.5]"),
        sweep_grid.parse_grid("protocol.sgd.learning_rate=[0.1]"),
        sweep_grid.parse_grid("resnet.build_model.stage_widths=[(16, 32),(8,16)]"),
    ]
    assert keys[2].values == ("(16, 32)", "(8,16)")
    assert sweep_grid.grid_labels(keys) == ["gd.learning_rate", "sgd.learning_rate", "stage_widths"]
    assert sweep_grid.parse_seeds("3") == (0, 1, 2)
    assert sweep_grid.parse_seeds("0,4,7") == (0, 4, 7)
    with pytest.raises(ValueError, match="--seeds"):
        sweep_grid.parse_seeds("many")


def test_seed_goes_to_numerics_model_and_protocol_and_steps_are_planned():
    assert sweep_grid.inspect_config(["digits_resnet_sgd.gin"], []) == (
        ["numerics.seed", "resnet.build_model.seed", "protocol.sgd.seed"],
        1000,
    )
    seeds, steps = sweep_grid.inspect_config(["digits_fc_gd.gin", "smoke.gin"], [])
    assert seeds == ["numerics.seed", "fc.build_model.seed"] and steps == 12
    _, steps = sweep_grid.inspect_config(["digits_fc_gd.gin"], ["protocol.gd.num_steps = 77"])
    assert steps == 77


def _assert_hparams_columns_match_the_runs(workdir, runs):
    """The sweep's HParams columns are gin names that every run's own HParams carry."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    def hparams_content(directory, tag):
        events = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
        events.Reload()
        content = events.PluginTagToContent("hparams")[tag]
        return plugin_data_pb2.HParamsPluginData.FromString(content)

    config = hparams_content(workdir, "_hparams_/experiment").experiment
    columns = [h.name for h in config.hparam_infos]
    assert columns == ["fc.build_model.width", "protocol.gd.learning_rate", "numerics.seed"]
    for run in runs:
        start = hparams_content(os.path.join(run.workdir, "tb"), "_hparams_/session_start_info")
        values = start.session_start_info.hparams
        assert values["fc.build_model.width"].number_value == float(
            run.settings["fc.build_model.width"]
        )
        assert values["numerics.seed"].number_value == run.seed
