"""lplr-reproduce: the --quick path end to end (tables equal the runs' summaries), resumption,
the CIFAR-10-or-MNIST choice of experiment (c), the README block, the comparison with the
paper."""

import json
import os
import re

import numpy as np
import pytest
from scipy import stats

from lplr_tf import reproduce, reproduce_findings, reproduce_report
from lplr_tf.errors import ConfigError
from lplr_tf.reproduce_report import BEGIN_MARKER, END_MARKER, Record

NUMBER = r"[-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?"


def _summary(workdir, name):
    with open(os.path.join(workdir, name, "summary.json"), encoding="utf-8") as stream:
        return json.load(stream)


def _tables(text):
    """Every markdown table of `text` as a list of {header: cell} rows."""
    tables, lines = [], text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("|---") and index > 0 and lines[index - 1].startswith("| "):
            header = [cell.strip() for cell in lines[index - 1].strip("|").split("|")]
            rows = []
            for body in lines[index + 1 :]:
                if not body.startswith("| "):
                    break
                cells = [cell.strip() for cell in body.strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
            tables.append(rows)
    return tables


def _close(text, value, digits=4):
    """The cell `text` is `value` printed to `digits` significant digits."""
    if value is None:
        return text == "—"
    return float(text) == pytest.approx(value, rel=0.6 * 10 ** (1 - digits), abs=1e-300)


def _rate_cell(text, fit):
    """'ρ̂ [low, high]' equals the fit's rate and 95 % interval (6 significant digits)."""
    numbers = [float(x) for x in re.findall(NUMBER, text)]
    expected = [fit["rate"], *fit["rate_interval_95"]]
    return numbers == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick reproduction (no CIFAR-10 in tfds' default directory), then a second."""
    workdir = str(tmp_path_factory.mktemp("reproduce") / "quick")
    empty = str(tmp_path_factory.mktemp("no_tfds"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce, "default_cifar10_data_dir", lambda: empty)
        first_lines, second_lines = [], []
        argv = [f"--workdir={workdir}", "--quick", "--progress_seconds=1000"]
        first = reproduce.main(argv, log=first_lines.append)
        times = {path: os.stat(path).st_mtime_ns for path in _run_files(workdir, "metrics.jsonl")}
        with open(os.path.join(workdir, "REPRODUCTION.md"), encoding="utf-8") as stream:
            first_report = stream.read()
        second = reproduce.main(argv, log=second_lines.append)
    return {
        "workdir": workdir,
        "empty": empty,
        "codes": (first, second),
        "lines": (first_lines, second_lines),
        "metrics_times": times,
        "first_report": first_report,
    }


def _run_files(workdir, name):
    found = []
    for root, _, files in os.walk(workdir):
        found += [os.path.join(root, f) for f in files if f == name]
    return sorted(found)


def test_quick_report_tables_equal_the_runs_summaries(quick):
    workdir = quick["workdir"]
    assert quick["codes"] == (0, 0)
    summaries = {
        os.path.relpath(os.path.dirname(p), workdir): json.load(open(p, encoding="utf-8"))
        for p in _run_files(workdir, "summary.json")
    }
    # (a) one run, (b) 2 widths x 2 step sizes, (c) one seed: all on bundled MNIST.
    assert len(summaries) == 6
    assert {s["run"]["dataset"] for s in summaries.values()} == {"mnist(0 vs 1, bundled)"}
    report = quick["first_report"]
    run_rows = [row for table in _tables(report) for row in table if "run" in row]
    assert sorted(row["run"].strip("`") for row in run_rows) == sorted(summaries)
    for row in run_rows:
        name = row["run"].strip("`")
        summary = summaries[name]
        assert row["status"] == summary["status"]
        assert _close(row["final loss"], summary["final_loss"])
        assert _close(row["μ"], summary["bound"]["mu"])
        assert _close(row["PL envelope"], summary["pl_ratio"]["lower_envelope"])
        assert _close(row["drift ‖θ−θ₀‖"], summary["drift"]["final"])
        assert _close(row["relative drift"], summary["drift"]["relative_final"])
        assert _close(row["kernel drift"], summary["ntk"]["kernel_drift_final"])
        assert _rate_cell(row["ρ̂ [95 % fit interval]"], summary["fit"])
        assert row["phase model (τ)"].startswith(summary["phases"]["model"])
        stayed = summary["regime"]["in_local_regime"]
        assert row["local regime"] == "stayed" if stayed else row["local regime"].startswith("left")
        # c = η·β₀: β₀ measured by the run's calibration, or by its calibrated twin (same
        # width and seed: same θ₀) for the fixed step, which does not probe the Hessian.
        calibration = summary["run"]["learning_rate_calibration"]
        if calibration is None:
            twin = summaries[name.replace("sharpness=None", "sharpness=0.5")]
            beta0 = twin["run"]["learning_rate_calibration"]["sharpness0"]
            assert row["step"] == "η = 0.003 (fixed)"
        else:
            beta0 = calibration["sharpness0"]
        assert _close(row["c = η·β₀"], summary["settings"]["learning_rate"] * beta0)

    # The width × step table: one seed, so each cell is that run's value (no interval).
    width_rows = next(t for t in _tables(report) if t and "width" in t[0])
    assert [(r["width"], r["step"][:6]) for r in width_rows] == [
        ("16", "η = 0."), ("16", "η = 0."), ("32", "η = 0."), ("32", "η = 0.")
    ]  # fmt: skip
    for row in width_rows:
        step = "None" if "fixed" in row["step"] else "0.5"
        summary = summaries[
            f"width_ablation/width={row['width']},learning_rate_times_sharpness={step}/seed=0"
        ]
        assert _close(row["final drift ‖θ−θ₀‖"], summary["drift"]["final"])
        assert _close(row["relative drift ‖θ−θ₀‖/‖θ₀‖"], summary["drift"]["relative_final"])
        assert _close(row["PL envelope"], summary["pl_ratio"]["lower_envelope"])
        assert float(row["ρ̂ across seeds"]) == pytest.approx(summary["fit"]["rate"], rel=1e-5)


def test_quick_run_says_which_data_experiment_c_used(quick):
    first_lines = quick["lines"][0]
    said = [line for line in first_lines if "experiment (c) runs on" in line]
    assert said and "bundled MNIST: CIFAR-10 is not prepared in " + quick["empty"] in said[0]
    assert (
        "Ran on bundled MNIST: CIFAR-10 is not prepared in " + quick["empty"]
        in (quick["first_report"])
    )
    assert os.path.isdir(os.path.join(quick["workdir"], "resnet_sgd_mnist"))
    # Progress: which experiment and run, how far.
    assert any(
        line.startswith("[reproduce 2/3 width_ablation] [sweep] started") for line in first_lines
    )
    assert any(re.search(r"\[sweep\] \d/4 done, .* pending", line) for line in first_lines)


def test_second_quick_run_reruns_nothing(quick):
    workdir = quick["workdir"]
    second_lines = quick["lines"][1]
    assert not [line for line in second_lines if "[sweep] started" in line]
    assert len([line for line in second_lines if "finished before" in line]) == 6
    now = {p: os.stat(p).st_mtime_ns for p in _run_files(workdir, "metrics.jsonl")}
    assert now == quick["metrics_times"]
    with open(os.path.join(workdir, "REPRODUCTION.md"), encoding="utf-8") as stream:
        second_report = stream.read()
    # The same tables (the first line of the block has this invocation's wall time).
    strip = lambda text: re.sub(r"`lplr-reproduce[^\n]*\n", "", text)
    assert strip(second_report) == strip(quick["first_report"])


def test_quick_workdir_cannot_continue_as_a_full_reproduction(quick):
    with pytest.raises(ConfigError, match="holds a quick reproduction"):
        reproduce.reproduce(quick["workdir"], experiments=["fc_gd"], log=lambda line: None)


def test_resnet_runs_on_cifar10_when_it_is_prepared(tmp_path):
    from tfds_fakes import mock_prepared

    workdir = str(tmp_path / "cifar")
    lines = []
    with mock_prepared(num_examples=256) as data_dir:
        code = reproduce.main(
            [f"--workdir={workdir}", "--quick", "--experiments=resnet_sgd",
             f"--cifar10_data_dir={data_dir}"],
            log=lines.append,
        )  # fmt: skip
    assert code == 0
    summary = _summary(workdir, "resnet_sgd_cifar10/base/seed=0")
    assert summary["run"]["dataset"] == "cifar10(0 vs 1, tfds train)"
    assert not os.path.exists(os.path.join(workdir, "resnet_sgd_mnist"))
    assert any(f"experiment (c) runs on CIFAR-10 prepared in {data_dir}" in line for line in lines)
    report = open(os.path.join(workdir, "REPRODUCTION.md"), encoding="utf-8").read()
    assert "ResNet + mini-batch SGD on CIFAR-10" in report
    assert f"Ran on CIFAR-10 prepared in {data_dir}." in report


def test_cifar10_asked_for_but_not_prepared_is_an_error(tmp_path, monkeypatch):
    empty = str(tmp_path)
    with pytest.raises(
        ConfigError, match=re.escape(f"--cifar10_data_dir={empty}: CIFAR-10 is not")
    ):
        reproduce.choose_resnet_data("auto", empty)
    monkeypatch.setattr(reproduce, "default_cifar10_data_dir", lambda: empty)
    with pytest.raises(ConfigError, match="--resnet_data=mnist"):
        reproduce.choose_resnet_data("cifar10")
    assert reproduce.choose_resnet_data("auto").dataset == "mnist"
    assert reproduce.choose_resnet_data("mnist").gin_file == "mnist_resnet_sgd.gin"


def test_readme_block_is_replaced_between_the_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# Title\n\nbefore\n{BEGIN_MARKER}\nold table\n{END_MARKER}\nafter\n")
    block = f"{BEGIN_MARKER}\n| a |\n|---|\n| 1 |\n{END_MARKER}"
    reproduce_report.update_readme(str(path), block)
    assert path.read_text() == f"# Title\n\nbefore\n{block}\nafter\n"
    (tmp_path / "plain.md").write_text("# no markers\n")
    with pytest.raises(ConfigError, match="no <!-- lplr-reproduce:begin -->"):
        reproduce_report.check_readme(str(tmp_path / "plain.md"))


def _record(width, step, seed, drift, relative, envelope, regime, rate=0.99):
    summary = {
        "status": "max_steps",
        "drift": {"final": drift, "relative_final": relative},
        "ntk": {"kernel_drift_final": 0.1},
        "pl_ratio": {"lower_envelope": envelope},
        "bound": {"mu": 0.5},
        "fit": {"rate": rate, "rate_interval_95": [rate - 1e-3, rate + 1e-3]},
        "phases": {"model": "two_rate", "transition_step": 10},
        "regime": {"in_local_regime": regime, "left_step": 10, "left_reason": "kernel drift"},
        "settings": {"learning_rate": 0.003},
        "run": {"learning_rate_calibration": None},
    }
    return Record("width_ablation", f"w{width}/{step}/{seed}", seed, "max_steps", summary, "",
                  width=width, step=step, beta0=1000.0)  # fmt: skip


def test_width_table_cells_are_mean_and_student_t_interval_across_seeds():
    drifts = [1.4, 1.6, 1.5]
    found = [_record(1024, "None", s, d, d / 64, 0.5, False) for s, d in enumerate(drifts)]
    row = reproduce_report.width_rows(found)[0]
    mean = np.mean(drifts)
    half = stats.t.ppf(0.975, 2) * np.std(drifts, ddof=1) / np.sqrt(3)
    numbers = [float(x) for x in re.findall(NUMBER, row[3])]
    assert numbers == pytest.approx([mean, mean - half, mean + half], rel=1e-3)
    assert row[2] == "3 [3, 3]"  # c = 0.003 × 1000 at every seed
    assert row[9] == "two_rate ×3 (τ = 10, 10, 10)" and row[10] == "stayed 0/3"
    assert row[11] == "1.870"  # the paper's figure beside width 1024


def test_paper_claims_are_judged_from_the_numbers():
    paper = reproduce_report.PAPER_FINAL_DRIFT
    fixed = [_record(1024, "None", s, d, d / 60, 0.6, False) for s, d in enumerate([1.5, 1.6, 1.4])]
    small = [
        _record(1024, "0.5", s, d, d / 60, 3.0, True) for s, d in enumerate([0.13, 0.12, 0.14])
    ]
    claims = reproduce_findings.ablation_claims(fixed + small, paper, 1024)
    verdicts = {claim: agrees for claim, _, _, agrees in claims}
    assert verdicts == {
        "at width 1024 the smaller step lowers the final drift": True,
        "the drift's normalization": True,
        "the smaller step gives the larger PL envelope (width 1024)": True,
        "the fixed step leaves the local regime, the smaller stays (width 1024)": True,
    }
    normalization = {c: ours for c, _, ours, _ in claims}["the drift's normalization"]
    # Absolute drift 1.5 / 1.870 and 0.13 / 0.158 are within x2; relative ones are ~60x off.
    assert normalization.startswith("the absolute ‖θ−θ₀‖ drift matches")
    assert "relative ‖θ−θ₀‖/‖θ₀‖ drift matches" not in normalization
    # One seed of the smaller step drifting farther than a fixed-step seed: not lowered.
    small[0] = _record(1024, "0.5", 0, 1.45, 0.02, 3.0, True)
    claims = reproduce_findings.ablation_claims(fixed + small, paper, 1024)
    assert claims[0][3] is False and "lower at every seed: no" in claims[0][2]


def test_linear_convergence_in_a_pl_region_agrees_partly_or_not():
    def judged(found):
        return reproduce_findings._linear_and_local(found, "claim")[3]

    found = [_record(None, None, s, 0.5, 0.01, 0.8, True) for s in range(3)]
    assert judged(found) is True
    found[1] = _record(None, None, 1, 0.5, 0.01, 0.8, False)  # the kernel moved
    assert judged(found) == "partly: PL holds at every seed, not the local regime"
    found[2].summary["phases"]["model"] = "sublinear"
    assert judged(found) == (
        "partly: PL holds at every seed, not a linear last phase nor the local regime"
    )
    found[0] = _record(None, None, 0, 0.5, 0.01, 0.0, True)  # PL envelope 0: PL failed
    assert judged(found) is False
