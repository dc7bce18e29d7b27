"""Across seeds: mean, 95 % Student-t interval, min and max of a summary field per grid point.

For the n finite values x₁…xₙ of a field (one per seed) of one grid combination:

    mean = Σ xᵢ / n,   s² = Σ (xᵢ − mean)² / (n − 1),
    95 % interval = mean ± t₀.₉₇₅,ₙ₋₁ · s / √n     (Student t with n − 1 degrees of freedom)

the usual confidence interval for the mean when the seed-to-seed spread is roughly normal.
With one value there is no interval (None); min and max are reported beside it because with
three seeds the interval is wide (t₀.₉₇₅,₂ = 4.30).

Runs that diverged are left out of every aggregate (their rate, drift and kernel drift describe
a blow-up, not the regime the sweep compares) and are listed in the row's `left_out`; runs
that failed (status `error`) have no summary and are left out too.
"""

import math

from lplr_tf import tables
from lplr_tf.values import finite

# The fields aggregated across seeds (names of tables.SUMMARY_FIELDS).
AGGREGATED = (
    "fitted_rate",
    "pl_lower_envelope",
    "mu",
    "final_drift",
    "relative_drift",
    "kernel_drift",
)
STATISTICS = ("mean", "ci95_low", "ci95_high", "min", "max", "n")


def student_t_quantile(probability, degrees_of_freedom):
    """The `probability` quantile of Student's t distribution (scipy.stats.t.ppf)."""
    from scipy import stats  # scikit-learn's dependency; imported late (0.3 s)

    return float(stats.t.ppf(probability, degrees_of_freedom))


def across_seeds(values):
    """Mean, 95 % Student-t interval, min, max and count of the finite numbers in `values`.

    Args:
      values: One value per seed; None, booleans and non-finite numbers are ignored.

    Returns:
      A dict with keys STATISTICS; every statistic is None when no value is finite, and the
      interval is None when only one is.
    """
    numbers = [number for number in map(finite, values) if number is not None]
    n = len(numbers)
    if not n:
        return dict.fromkeys(STATISTICS[:-1]) | {"n": 0}
    mean = sum(numbers) / n
    low = high = None
    if n > 1:
        deviation = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (n - 1))
        half_width = student_t_quantile(0.975, n - 1) * deviation / math.sqrt(n)
        low, high = mean - half_width, mean + half_width
    return {
        "mean": mean,
        "ci95_low": low,
        "ci95_high": high,
        "min": min(numbers),
        "max": max(numbers),
        "n": n,
    }


def aggregated(run):
    """Whether a run enters the aggregates: it finished and did not diverge."""
    return run.summary is not None and run.status != "diverged"


def aggregate(runs, labels):
    """One row per grid combination: its settings, statuses, left-out runs and statistics.

    Args:
      runs: The sweep's runs (`sweep_grid.Run` with status and summary filled in).
      labels: The grid's column labels (keys of each run's `label_settings`).

    Returns:
      A list of dicts with the labels, `combination`, `seeds` (runs planned), `statuses`,
      `left_out` ("seed=1 diverged; ..." or ""), and `<field>_<statistic>` for every field of
      AGGREGATED and statistic of STATISTICS.
    """
    from lplr_tf.sweep_grid import python_value

    groups = {}
    for run in runs:
        groups.setdefault(run.combination, []).append(run)
    table = []
    for combination, members in groups.items():
        row = {label: python_value(members[0].label_settings[label]) for label in labels}
        row["combination"] = combination
        row["seeds"] = len(members)
        row["statuses"] = " ".join(sorted({m.status for m in members}))
        row["left_out"] = "; ".join(
            f"seed={m.seed} {m.status}" for m in members if not aggregated(m)
        )
        kept = [m for m in members if aggregated(m)]
        for name in AGGREGATED:
            statistics = across_seeds(tables.summary_value(m.summary, name) for m in kept)
            row.update({f"{name}_{key}": value for key, value in statistics.items()})
        table.append(row)
    return table


def aggregate_cell(row, name):
    """The markdown cell of one aggregated field: 'mean [low, high] (min … max)'."""
    kind = tables.FIELDS[name].kind
    mean = row.get(f"{name}_mean")
    if mean is None:
        return tables.MISSING
    text = tables.cell(mean, kind)
    if row.get(f"{name}_ci95_low") is not None:
        low, high = (tables.cell(row[f"{name}_ci95_{end}"], kind) for end in ("low", "high"))
        text += f" [{low}, {high}]"
    if row.get(f"{name}_n", 0) > 1:
        smallest, largest = (tables.cell(row[f"{name}_{end}"], kind) for end in ("min", "max"))
        text += f" ({smallest} … {largest})"
    return text
