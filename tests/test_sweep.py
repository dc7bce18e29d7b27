"""lplr-sweep: grid × seeds, tables, skipping finished runs, errors recorded, bad --grid."""

import csv
import os

import pytest

from lplr_tf import analysis, sweep

GRID = ["fc.build_model.width=[8,16]", "protocol.gd.learning_rate=[0.5,1.0]"]
FAST = ["diagnostics.ProbeSettings.measure_sharpness = False"]


def _quiet(*_):
    pass


def _csv(path):
    with open(path, encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_two_by_two_grid_with_two_seeds_then_skips_finished_runs(tmp_path):
    workdir = str(tmp_path / "ablation")
    result = sweep.run_sweep(["digits_fc_gd.gin"], FAST, GRID, 2, workdir, smoke=True, log=_quiet)
    rows = _csv(os.path.join(workdir, "sweep.csv"))
    assert len(rows) == 8 and len(result.ran) == 8
    assert {(r["width"], r["learning_rate"], r["seed"]) for r in rows} == {
        (w, lr, s) for w in ("8", "16") for lr in ("0.5", "1.0") for s in ("0", "1")
    }
    assert all(r["status"] in analysis.FINAL_STATUSES for r in rows), rows
    for column in (
        "fitted_rate",
        "mu",
        "mu_cert",
        "certified",
        "final_drift",
        "pl_lower_envelope",
        "final_loss",
        "kernel_drift",
    ):
        assert column in rows[0]
    assert float(rows[0]["final_loss"]) > 0
    run_dir = os.path.join(workdir, "width=16,learning_rate=0.5", "seed=1")
    operative = open(os.path.join(run_dir, "operative_config.gin"), encoding="utf-8").read()
    assert "numerics.seed = 1" in operative and "build_model.seed = 1" in operative
    assert "build_model.width = 16" in operative and "learning_rate = 0.5" in operative
    assert len(_csv(os.path.join(workdir, "sweep_aggregate.csv"))) == 4
    markdown = open(os.path.join(workdir, "sweep.md"), encoding="utf-8").read()
    assert "| width | learning_rate | seed | status |" in markdown
    assert "Across seeds (min / median / max)" in markdown
    for name in ("sweep.png", "loss_curves.png"):
        assert os.path.getsize(os.path.join(workdir, "plots", name)) > 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))  # HParams

    summaries = [os.path.join(r.workdir, "summary.json") for r in result.runs]
    before = {path: os.stat(path).st_mtime_ns for path in summaries}
    again = sweep.run_sweep(["digits_fc_gd.gin"], FAST, GRID, 2, workdir, smoke=True, log=_quiet)
    assert len(again.skipped) == 8 and not again.ran
    assert {path: os.stat(path).st_mtime_ns for path in summaries} == before
    assert len(_csv(os.path.join(workdir, "sweep.csv"))) == 8


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    workdir = str(tmp_path / "sweep")
    result = sweep.run_sweep(
        ["digits_fc_gd.gin"],
        FAST,
        ["data.digits.n=[24,100000]"],
        1,
        workdir,
        smoke=True,
        plot=False,
        log=_quiet,
    )
    statuses = {r.label_settings["n"]: r for r in result.runs}
    assert statuses["24"].status in analysis.FINAL_STATUSES
    assert statuses["100000"].status == "error"
    assert "n=100000" in statuses["100000"].error
    rows = _csv(os.path.join(workdir, "sweep.csv"))
    assert [r["status"] for r in rows] == ["max_steps", "error"] or rows[1]["status"] == "error"
    assert "## Errors" in open(os.path.join(workdir, "sweep.md"), encoding="utf-8").read()
    assert (
        sweep.main(
            [
                "--gin_file=digits_fc_gd.gin",
                "--smoke",
                f"--workdir={workdir}",
                "--gin_bindings=diagnostics.ProbeSettings.measure_sharpness = False",
                "--grid",
                "data.digits.n=[24,100000]",
                "--no_plots",
            ],
            log=_quiet,
        )
        == 1
    )


def test_parallel_subprocesses(tmp_path):
    workdir = str(tmp_path / "parallel")
    code = sweep.main(
        [
            "--gin_file=digits_fc_gd.gin",
            "--smoke",
            f"--workdir={workdir}",
            "--gin_bindings=diagnostics.ProbeSettings.measure_sharpness = False",
            "--grid",
            "fc.build_model.width=[8,16]",
            "--seeds",
            "1",
            "--parallel",
            "2",
            "--no_plots",
        ],
        log=_quiet,
    )
    assert code == 0
    rows = _csv(os.path.join(workdir, "sweep.csv"))
    assert [r["status"] for r in rows] == ["max_steps", "max_steps"]
    assert os.path.getsize(os.path.join(workdir, "width=8", "seed=0", "train.log")) > 0


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
        sweep.parse_grid(text)
    message = str(error.value)
    assert text in message and why in message
    assert "configurable.parameter=[v1,v2,...]" in message


def test_grid_of_an_unknown_parameter_fails_before_running(tmp_path):
    with pytest.raises(ValueError, match="widht"):
        sweep.main(
            [
                "--gin_file=digits_fc_gd.gin",
                "--smoke",
                f"--workdir={tmp_path}",
                "--grid",
                "fc.build_model.widht=[8,16]",
            ],
            log=_quiet,
        )
    assert not os.listdir(tmp_path)


def test_names_are_readable_and_filesystem_safe():
    assert sweep.safe_value("(16, 32)") == "16-32"
    assert sweep.safe_value("'relu'") == "relu"
    assert sweep.safe_value("@data.digits") == "data.digits"
    keys = [
        sweep.parse_grid("protocol.gd.learning_rate=[0.5]"),
        sweep.parse_grid("protocol.sgd.learning_rate=[0.1]"),
        sweep.parse_grid("resnet.build_model.stage_widths=[(16, 32),(8,16)]"),
    ]
    assert keys[2].values == ("(16, 32)", "(8,16)")
    assert sweep._labels(keys) == ["gd.learning_rate", "sgd.learning_rate", "stage_widths"]
    assert sweep.parse_seeds("3") == (0, 1, 2) and sweep.parse_seeds("0,4,7") == (0, 4, 7)
    with pytest.raises(ValueError, match="--seeds"):
        sweep.parse_seeds("many")


def test_seed_goes_to_numerics_model_and_protocol():
    assert sweep.seed_parameters(["digits_resnet_sgd.gin"], []) == [
        "numerics.seed",
        "resnet.build_model.seed",
        "protocol.sgd.seed",
    ]
    assert sweep.seed_parameters(["digits_fc_gd.gin"], []) == [
        "numerics.seed",
        "fc.build_model.seed",
    ]
