"""Tests of lplr_tf.report (lplr-report) on synthetic run directories."""

import io
import json
import sys

import pytest

from lplr_tf import analysis, report
from lplr_tf.rundir import RunDirectory


def make_workdir(root, name, rate=0.97, steps=100, with_summary=True, **settings):
    """A run directory with metrics.jsonl and (optionally) summary.json from summarize."""
    workdir = root / name
    workdir.mkdir()
    rows = []
    for index, step in enumerate(range(0, steps + 1, 10)):
        rows.append(
            {
                "step": step,
                "loss": rate**step,
                "pl_ratio": 0.3 + 0.01 * index,
                "drift": 0.01 * index,
                "ntk_lambda_min": 0.2,
                "ntk_lambda_max": 2.0,
                "kernel_drift": 0.01 * index,
                "kernel_drift_op": 0.002 * index,
                "sharpness": 2.5,
            }
        )
    with open(workdir / "metrics.jsonl", "w") as stream:
        for row in rows:
            stream.write(json.dumps(row) + "\n")
    learning_rate = settings.pop("learning_rate", 0.1)
    num_steps = settings.pop("num_steps", None)
    summary = analysis.summarize(
        rows,
        learning_rate=learning_rate,
        num_steps=num_steps,
        settings=analysis.Settings(**settings),
    )
    if with_summary:
        RunDirectory(workdir).write_summary(summary)
    return workdir, rows, summary


def test_report_reproduces_summary_exactly(tmp_path):
    workdir, _, _ = make_workdir(
        tmp_path, "run", tolerance=1e-9, fit_window=(20, 90), num_steps=100, kernel_drift_bound=0.4
    )
    before = (workdir / "summary.json").read_bytes()
    output = io.StringIO()
    assert report.main([str(workdir), "--no_plots"], stdout=output) == 0
    assert (workdir / "summary.json").read_bytes() == before
    assert output.getvalue().startswith("run: Stayed in a locally PL region")


def test_report_writes_convergence_plot(tmp_path):
    workdir, _, _ = make_workdir(tmp_path, "run")
    report.main([str(workdir)], stdout=io.StringIO())
    assert (workdir / "plots" / "convergence.png").stat().st_size > 10_000


def test_flags_override_and_supply_settings(tmp_path):
    workdir, rows, _ = make_workdir(tmp_path, "run", with_summary=False)
    with pytest.raises(ValueError, match="summary.json does not exist.*--learning_rate"):
        report.main([str(workdir), "--no_plots"], stdout=io.StringIO())
    report.main(
        [str(workdir), "--no_plots", "--learning_rate", "0.05", "--l_star", "0.0"],
        stdout=io.StringIO(),
    )
    written = json.loads((workdir / "summary.json").read_text())
    assert written == analysis.summarize(
        rows, learning_rate=0.05, settings=analysis.Settings(l_star=0.0)
    )
    report.main([str(workdir), "--no_plots", "--learning_rate", "0.2"], stdout=io.StringIO())
    assert json.loads((workdir / "summary.json").read_text())["settings"]["learning_rate"] == 0.2


def test_comparison_table_and_plot_for_two_workdirs(tmp_path):
    first, _, fast = make_workdir(tmp_path, "fast", rate=0.9)
    second, _, slow = make_workdir(tmp_path, "slow", rate=0.99)
    output = io.StringIO()
    report.main([str(first), str(second), "--output_dir", str(tmp_path / "out")], stdout=output)
    lines = output.getvalue().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 4
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == [
        "run",
        "status",
        "steps",
        "final_loss",
        "fit rate",
        "r2",
        "μ",
        "rate_bound",
        "μ_post",
        "μ_post > 0",
        "final drift",
        "PL lower envelope",
        "sharpness max",
    ]
    fast_cells = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert fast_cells[0] == "fast" and fast_cells[1] == fast["status"]
    assert float(fast_cells[4]) == pytest.approx(0.9, abs=1e-5)
    assert fast_cells[9] == "yes"
    slow_cells = [cell.strip() for cell in table[3].strip("|").split("|")]
    assert float(slow_cells[4]) == pytest.approx(slow["fit"]["rate"], rel=1e-5)
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 10_000


def test_missing_metrics_is_a_clear_error(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty/metrics.jsonl: no metrics file"):
        RunDirectory(empty).read_metrics()
    monkeypatch.setattr(sys, "argv", ["lplr-report", str(empty)])
    with pytest.raises(SystemExit) as exit_info:
        report.console_main()
    assert exit_info.value.code == 1
    assert "metrics.jsonl: no metrics file" in capsys.readouterr().err


def test_truncated_last_line_is_skipped_and_duplicates_resolved(tmp_path):
    workdir, rows, _ = make_workdir(tmp_path, "run")
    with open(workdir / "metrics.jsonl", "a") as stream:
        stream.write(json.dumps({"step": 100, "loss": 123.0}) + "\n")
        stream.write('{"step": 110, "loss": 0.0')
    read = RunDirectory(workdir).read_metrics()
    assert [row["step"] for row in read] == [row["step"] for row in rows]
    assert read[-1]["loss"] == 123.0
    (workdir / "metrics.jsonl").write_text(
        '{"step": 0, "loss": 1.0}\n{"step": 1,\n{"step": 2, "loss": 0.5}\n'
    )
    with pytest.raises(ValueError, match="metrics.jsonl:2: malformed JSON"):
        RunDirectory(workdir).read_metrics()


def test_write_summary_is_strict_sorted_json(tmp_path):
    path = RunDirectory(tmp_path).write_summary({"b": 1, "a": [1.5, None]})
    text = open(path).read()
    assert text == json.dumps({"a": [1.5, None], "b": 1}, indent=2, sort_keys=True) + "\n"
    RunDirectory(tmp_path).write_summary({"a": float("nan"), "b": [float("inf")]})
    assert json.loads(open(path).read()) == {"a": None, "b": [None]}  # JSON has no NaN
