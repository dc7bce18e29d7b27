"""Summary fields as table cells: the one accessor table and the one markdown formatter.

`lplr-report`'s comparison table and `lplr-sweep`'s sweep.csv / sweep.md read a run's
summary.json only through `SUMMARY_FIELDS` (a column name, the path of keys into the summary,
a human title and how to format it) and print it only through `cell` and `markdown_table`.
Adding a column is adding one `Field`. A field missing from a summary (an older or a newer
summary layout, or a value the run could not measure) reads as None and prints as "—".
"""

import dataclasses

from lplr_tf.verdict import format_rate

MISSING = "—"


@dataclasses.dataclass(frozen=True)
class Field:
    """One table column.

    Attributes:
      name: The column's key in rows and its header in CSV files, e.g. "fitted_rate".
      path: The keys that lead to the value in summary.json, e.g. ("fit", "rate"); empty for
        columns that do not come from the summary (grid settings, seed, run name).
      title: The column's header in markdown tables.
      kind: How `cell` formats it: "number" (4 significant digits), "rate" (a per-step rate
        near 1, `verdict.format_rate`), "flag" (yes/no) or "text".
    """

    name: str
    path: tuple = ()
    title: str = ""
    kind: str = "number"

    def __post_init__(self):
        if not self.title:
            object.__setattr__(self, "title", self.name)


SUMMARY_FIELDS = (
    Field("status", ("status",), "status", "text"),
    Field("status_step", ("status_step",), "status step"),
    Field("steps", ("steps",), "steps"),
    Field("final_loss", ("final_loss",), "final loss"),
    Field("fitted_rate", ("fit", "rate"), "ρ̂", "rate"),
    Field("fit_r2", ("fit", "r2"), "fit R²"),
    Field("fit_window", ("fit", "window"), "fit window", "text"),
    Field("mu", ("bound", "mu"), "μ"),
    Field("rate_bound", ("bound", "rate_bound"), "1 − ημ", "rate"),
    Field("rate_descent", ("bound", "rate_descent"), "ρ_descent", "rate"),
    Field("tightness", ("bound", "tightness"), "log ρ̂ / log ρ_bound"),
    Field("phase_model", ("phases", "model"), "phase model", "text"),
    Field("transition_step", ("phases", "transition_step"), "τ"),
    Field("mu_post", ("a_posteriori", "mu_post"), "μ_post (estimate)"),
    Field("mu_post_positive", ("a_posteriori", "positive"), "μ_post > 0", "flag"),
    Field("a_priori_holds", ("a_priori", "holds"), "a-priori check", "flag"),
    Field("in_local_regime", ("regime", "in_local_regime"), "local regime", "flag"),
    Field("final_drift", ("drift", "final"), "drift ‖θ−θ₀‖"),
    Field("relative_drift", ("drift", "relative_final"), "relative drift"),
    Field("kernel_drift", ("ntk", "kernel_drift_final"), "kernel drift"),
    Field("pl_lower_envelope", ("pl_ratio", "lower_envelope"), "PL envelope"),
    Field("sharpness_max", ("sharpness", "max"), "max sharpness"),
)
FIELDS = {field.name: field for field in SUMMARY_FIELDS}


def summary_value(summary, name):
    """The value of the field `name` (a key of `FIELDS`) in a summary dict, or None if absent.

    Raises:
      KeyError: `name` is not a field of `SUMMARY_FIELDS` (a programming error).
    """
    value = summary
    for key in FIELDS[name].path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def summary_row(summary):
    """Every field of `SUMMARY_FIELDS` read from `summary` (None when it is None)."""
    return {field.name: summary_value(summary, field.name) for field in SUMMARY_FIELDS}


def cell(value, kind="number"):
    """One markdown cell: None → "—", booleans → yes/no, rates near 1 readable, '|' escaped."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and kind == "rate":
        return format_rate(float(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows, columns):
    """A markdown table of `rows` (dicts) with one column per `Field` of `columns`."""
    lines = [
        "| " + " | ".join(column.title for column in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = (cell(row.get(column.name), column.kind) for column in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
