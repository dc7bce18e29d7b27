"""The summary accessor table, cell formatting and the across-seed statistics of sweeps."""

import math

import pytest

from lplr_tf import sweep_statistics, tables
from lplr_tf.sweep_grid import Run


def _t_975_two_dof():
    # Student t with 2 degrees of freedom has the closed-form quantile (2p − 1)/√(2p(1 − p)).
    p = 0.975
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def test_fields_are_read_through_the_table_and_missing_ones_print_as_a_dash():
    summary = {
        "status": "converged",
        "fit": {"rate": 0.99999997, "r2": 0.5},
        "ntk": {"kernel_drift_final": 0.0123456},
        "drift": "not a dict",  # a future layout must not break the table
    }
    row = tables.summary_row(summary)
    assert row["fitted_rate"] == 0.99999997 and row["kernel_drift"] == 0.0123456
    assert row["final_drift"] is None and row["mu"] is None
    assert set(row) == {field.name for field in tables.SUMMARY_FIELDS}
    assert tables.summary_row(None)["status"] is None
    columns = [tables.FIELDS[name] for name in ("status", "fitted_rate", "kernel_drift", "mu")]
    assert tables.markdown_table([row], columns) == (
        "| status | ρ̂ | kernel drift | μ |\n"
        "|---|---|---|---|\n"
        "| converged | 1 − 3e-08 | 0.01235 | — |"
    )


@pytest.mark.parametrize(
    "value, kind, text",
    [
        (None, "number", "—"),
        ("", "text", "—"),
        (True, "flag", "yes"),
        (False, "number", "no"),
        (0.9912, "rate", "0.9912"),
        (1.00002, "rate", "1 + 2e-05"),
        (3, "rate", "3"),
        (1234.5678, "number", "1235"),
        (12, "number", "12"),
        ("a|b", "text", "a\\|b"),
        ([4, 12], "text", "[4, 12]"),
    ],
)
def test_cells(value, kind, text):
    assert tables.cell(value, kind) == text


def test_student_t_interval_against_closed_forms():
    values = [1.0, 2.0, 4.0, None, float("nan"), True]  # only the three numbers count
    statistics = sweep_statistics.across_seeds(values)
    mean = 7 / 3
    deviation = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)
    half = _t_975_two_dof() * deviation / math.sqrt(3)
    assert statistics["n"] == 3 and statistics["mean"] == pytest.approx(mean, rel=1e-15)
    assert statistics["ci95_low"] == pytest.approx(mean - half, rel=1e-12)
    assert statistics["ci95_high"] == pytest.approx(mean + half, rel=1e-12)
    assert (statistics["min"], statistics["max"]) == (1.0, 4.0)
    # One degree of freedom: the Cauchy quantile tan(π(p − 1/2)) = 12.706.
    two = sweep_statistics.across_seeds([1.0, 3.0])
    assert two["ci95_high"] - 2.0 == pytest.approx(
        math.tan(0.475 * math.pi) * math.sqrt(2) / math.sqrt(2), rel=1e-12
    )
    one = sweep_statistics.across_seeds([5.0])
    assert (one["mean"], one["ci95_low"], one["ci95_high"], one["n"]) == (5.0, None, None, 1)
    assert sweep_statistics.across_seeds([None]) == dict.fromkeys(
        sweep_statistics.STATISTICS[:-1]
    ) | {"n": 0}


def _run(seed, status, rate):
    run = Run(
        settings={"fc.build_model.width": "8"},
        label_settings={"width": "8"},
        seed=seed,
        workdir=f"w/width=8/seed={seed}",
        bindings=[],
    )
    run.status = status
    run.summary = None if status == "error" else {"status": status, "fit": {"rate": rate}}
    return run


def test_diverged_and_failed_runs_are_left_out_of_the_aggregate_and_listed():
    runs = [
        _run(0, "max_steps", 0.9),
        _run(1, "diverged", 1.5),
        _run(2, "converged", 0.8),
        _run(3, "error", None),
    ]
    (row,) = sweep_statistics.aggregate(runs, ["width"])
    assert row["width"] == 8 and row["seeds"] == 4
    assert row["statuses"] == "converged diverged error max_steps"
    assert row["left_out"] == "seed=1 diverged; seed=3 error"
    assert row["fitted_rate_n"] == 2
    assert row["fitted_rate_mean"] == pytest.approx(0.85, rel=1e-15)
    assert (row["fitted_rate_min"], row["fitted_rate_max"]) == (0.8, 0.9)
    half = math.tan(0.475 * math.pi) * 0.1 / math.sqrt(2) / math.sqrt(2)
    assert row["fitted_rate_ci95_high"] == pytest.approx(0.85 + half, rel=1e-12)
    assert row["mu_n"] == 0 and row["mu_mean"] is None
    cell = sweep_statistics.aggregate_cell(row, "fitted_rate")
    assert cell == (
        f"0.85 [{tables.cell(0.85 - half, 'rate')}, {tables.cell(0.85 + half, 'rate')}] (0.8 … 0.9)"
    )
    assert sweep_statistics.aggregate_cell(row, "mu") == "—"
