"""Tests of lplr_tf.report (lplr-report) on synthetic run directories: recomputation, the
comparison table and figure, flags, and damaged or crafted inputs (one message, exit 2)."""

import io
import json
import sys

import pytest

from lplr_tf import analysis, errors, report
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
    assert report.main([str(workdir), "--noplots"], stdout=output) == 0
    assert (workdir / "summary.json").read_bytes() == before
    assert output.getvalue().startswith("run: Stayed in a locally PL region")


def test_report_writes_convergence_plot(tmp_path):
    workdir, _, _ = make_workdir(tmp_path, "run")
    report.main([str(workdir)], stdout=io.StringIO())
    assert (workdir / "plots" / "convergence.png").stat().st_size > 10_000


def test_flags_override_and_supply_settings(tmp_path):
    workdir, rows, _ = make_workdir(tmp_path, "run", with_summary=False)
    with pytest.raises(ValueError, match="summary.json does not exist.*--learning_rate"):
        report.main([str(workdir), "--noplots"], stdout=io.StringIO())
    report.main(
        [str(workdir), "--noplots", "--learning_rate=0.05", "--l_star=0.0"],
        stdout=io.StringIO(),
    )
    written = json.loads((workdir / "summary.json").read_text())
    assert written == analysis.summarize(
        rows, learning_rate=0.05, settings=analysis.Settings(l_star=0.0)
    )
    report.main([str(workdir), "--noplots", "--learning_rate=0.2"], stdout=io.StringIO())
    assert json.loads((workdir / "summary.json").read_text())["settings"]["learning_rate"] == 0.2


def _table(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_comparison_table_and_plot_for_two_workdirs(tmp_path):
    first, _, fast = make_workdir(tmp_path, "fast", rate=0.9)
    second, _, slow = make_workdir(tmp_path, "slow", rate=0.99)
    output = io.StringIO()
    report.main([str(first), str(second), f"--output_dir={tmp_path / 'out'}"], stdout=output)
    table = _table(output.getvalue())
    assert len(table) == 4
    assert table[0] == [
        "run",
        "status",
        "steps",
        "final loss",
        "ρ̂",
        "fit R²",
        "μ",
        "1 − ημ",
        "μ_post (estimate)",
        "μ_post > 0",
        "drift ‖θ−θ₀‖",
        "relative drift",
        "kernel drift",
        "PL envelope",
        "max sharpness",
    ]
    fast_cells = dict(zip(table[0], table[2]))
    assert fast_cells["run"] == "fast" and fast_cells["status"] == fast["status"]
    assert float(fast_cells["ρ̂"]) == pytest.approx(0.9, abs=1e-5)
    assert fast_cells["μ_post > 0"] == "yes"
    assert float(fast_cells["kernel drift"]) == pytest.approx(0.1, rel=1e-3)  # 0.01 × 10 probes
    assert fast_cells["relative drift"] == "—"  # the rows carry no relative_drift
    slow_cells = dict(zip(table[0], table[3]))
    assert float(slow_cells["ρ̂"]) == pytest.approx(slow["fit"]["rate"], rel=1e-5)
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 10_000
    assert f"Comparison figure: {tmp_path / 'out' / 'comparison.png'}" in output.getvalue()


def test_comparison_figure_defaults_to_the_directory_holding_the_runs(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    first, _, _ = make_workdir(runs, "a")
    second, _, _ = make_workdir(runs, "b")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report.main([str(first), str(second)], stdout=io.StringIO())
    assert (runs / "comparison.png").stat().st_size > 10_000
    assert not list(elsewhere.iterdir())


def test_help_lists_the_flags(capsys):
    output = io.StringIO()
    assert report.main(["--help"], stdout=output) == 0
    text = output.getvalue()
    for flag in ("--learning_rate: Step size η", "--l_star", "--output_dir", "--[no]plots"):
        assert flag in text


def _console(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["lplr-report", *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        report.console_main()
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.startswith("lplr-report: error: ")
    assert error.count("\n") == 1  # one message
    return exit_info.value.code, error


def test_missing_metrics_is_a_clear_error(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty/metrics.jsonl: no metrics file"):
        RunDirectory(empty).read_metrics()
    code, error = _console(monkeypatch, capsys, empty)
    assert code == errors.EXIT_CONFIG_ERROR
    assert "metrics.jsonl: no metrics file" in error


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"step": 1e999, "loss": 0.5}', "step = inf; expected a finite integer step"),
        ('{"step": [10], "loss": 0.5}', "step = [10]; expected a finite integer step"),
        ('{"step": true, "loss": 0.5}', "step = True; expected a finite integer step"),
        ('{"step": 20, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests too deeply"),
    ],
)
def test_crafted_metrics_lines_are_one_message_and_exit_2(
    tmp_path, monkeypatch, capsys, line, expected
):
    workdir, _, _ = make_workdir(tmp_path, "run")
    summary_before = (workdir / "summary.json").read_bytes()
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, line)  # not the last line: a damaged row, not a truncated one
    (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    code, error = _console(monkeypatch, capsys, workdir, "--noplots")
    assert code == errors.EXIT_CONFIG_ERROR
    assert "metrics.jsonl:3: " in error and expected in error
    assert (workdir / "summary.json").read_bytes() == summary_before


@pytest.mark.parametrize(
    "stored, expected",
    [
        ([1, 2], "holds a JSON list; expected the JSON object lplr-train writes"),
        ({"settings": [0.1]}, "settings = [0.1]; expected a JSON object"),
        ({"settings": {"learning_rate": "0.1"}}, "settings.learning_rate = '0.1'; expected a pos"),
        (
            {"settings": {"learning_rate": 0.1, "tolerance": "tiny"}},
            "settings.tolerance = 'tiny'; expected a positive number",
        ),
        (
            {"settings": {"learning_rate": 0.1, "fit_window": ["a", "b"]}},
            "settings.fit_window = ['a', 'b']; expected null or [first_step, last_step]",
        ),
        (
            {"settings": {"learning_rate": 0.1, "num_steps": "100"}},
            "settings.num_steps = '100'; expected an integer or null",
        ),
    ],
)
def test_crafted_summaries_are_one_message_and_exit_2(
    tmp_path, monkeypatch, capsys, stored, expected
):
    workdir, _, _ = make_workdir(tmp_path, "run", with_summary=False)
    (workdir / "summary.json").write_text(json.dumps(stored))
    code, error = _console(monkeypatch, capsys, workdir, "--noplots")
    assert code == errors.EXIT_CONFIG_ERROR
    assert expected in error
    assert json.loads((workdir / "summary.json").read_text()) == stored


def test_a_string_learning_rate_can_be_overridden_by_the_flag(tmp_path):
    workdir, rows, _ = make_workdir(tmp_path, "run", with_summary=False)
    (workdir / "summary.json").write_text(json.dumps({"settings": {"learning_rate": "0.1"}}))
    report.main([str(workdir), "--noplots", "--learning_rate=0.1"], stdout=io.StringIO())
    written = json.loads((workdir / "summary.json").read_text())
    assert written == analysis.summarize(rows, learning_rate=0.1)


def test_a_finished_run_with_a_truncated_last_line_is_not_downgraded(tmp_path, monkeypatch, capsys):
    # Converges at step 60 (loss 0.5**50 > 1e-16 > 0.5**60) and stops there, as lplr-train does.
    workdir, rows, summary = make_workdir(tmp_path, "run", rate=0.5, steps=60, tolerance=1e-16)
    assert (summary["status"], summary["status_step"], summary["steps"]) == ("converged", 60, 60)
    before = (workdir / "summary.json").read_bytes()
    text = (workdir / "metrics.jsonl").read_text()
    (workdir / "metrics.jsonl").write_text(text[: text.rindex('"step"')])  # cut the last line
    assert RunDirectory(workdir).read_metrics()[-1]["step"] == 50
    code, error = _console(monkeypatch, capsys, workdir, "--noplots")
    assert code == errors.EXIT_CONFIG_ERROR
    assert "has no row for step 60 (its last step is 50)" in error
    assert "ended `converged` with 60 steps" in error and "Restore metrics.jsonl" in error
    assert (workdir / "summary.json").read_bytes() == before
    # The repair the message names: summarize what remains, on purpose.
    (workdir / "summary.json").unlink()
    report.main([str(workdir), "--noplots", "--learning_rate=0.1"], stdout=io.StringIO())
    assert json.loads((workdir / "summary.json").read_text())["steps"] == 50


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
