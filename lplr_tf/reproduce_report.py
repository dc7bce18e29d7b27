"""REPRODUCTION.md: the tables of `lplr-reproduce`, the paper beside them, and the README block.

Every number is read from the runs' summary.json (through `tables.SUMMARY_FIELDS`) or, for
β₀, from the run's step-size calibration (`summary["run"]["learning_rate_calibration"]`) or
its step-0 metrics row; across seeds through `sweep_statistics` (mean and 95 % Student-t
interval). Conventions are the package's: drift ‖θ_t − θ₀‖₂ (absolute) and ‖θ_t − θ₀‖₂/‖θ₀‖₂
(relative), kernel drift ‖K_t − K₀‖_F/‖K₀‖_F with K = Θ/n, PL envelope the lowest PL ratio
q = ‖∇L‖²/(2(L − L*)) on the rate-fit window, μ = min_t λ_min(K_t), ρ̂ the fitted per-step
rate with its 95 % interval (`summary["fit"]["rate_interval_95"]`).

The width ablation's step sizes are given in units of β₀ (the sharpness at initialization):
c = η·β₀. The fixed step runs do not probe the Hessian (see mnist_width_ablation.gin): their
β₀ is the calibrated run's of the same width and seed, which starts from the same θ₀ on the
same data (`Record.beta0_source` says which).

The block between BEGIN_MARKER and END_MARKER (the summary tables and the comparison with the
paper) is what `--readme` copies into the README, verbatim.
"""

import dataclasses
import os

from lplr_tf import reproduce_figures, sweep_statistics, tables
from lplr_tf.console import format_duration
from lplr_tf.errors import ConfigError
from lplr_tf.reproduce import (
    FIXED_STEP,
    SMALL_STEP,
    STEP_KEY,
    WIDTH_ABLATION,
    WIDTH_KEY,
)
from lplr_tf.rundir import RunDirectory, write_atomically
from lplr_tf.tables import cell

REPORT_FILE = "REPRODUCTION.md"
BEGIN_MARKER = "<!-- lplr-reproduce:begin -->"
END_MARKER = "<!-- lplr-reproduce:end -->"
PAPER_WIDTH = 1024
PAPER_FINAL_DRIFT = {FIXED_STEP: 1.870, SMALL_STEP: 0.158}  # the paper, width 1024


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long the command took and how busy the machine was."""

    seconds: float
    load_start: float | None
    load_end: float | None
    cpus: int | None
    experiment_seconds: dict = dataclasses.field(default_factory=dict)

    def describe(self):
        loads = "unknown" if self.load_start is None else f"{self.load_start:.2f}"
        if self.load_end is not None:
            loads += f" at the start, {self.load_end:.2f} at the end"
        return f"{format_duration(self.seconds)} wall, load average {loads} on {self.cpus} CPUs"


@dataclasses.dataclass
class Record:
    """One run of the reproduction with what the tables need from it."""

    experiment: str
    name: str  # the run directory relative to the reproduction's workdir
    seed: int
    status: str
    summary: dict | None
    workdir: str
    width: int | None = None
    step: str | None = None  # FIXED_STEP or SMALL_STEP (the width ablation)
    beta0: float | None = None
    beta0_source: str = ""

    def value(self, name):
        """A field of `tables.SUMMARY_FIELDS` (None without a summary)."""
        return None if self.summary is None else tables.summary_value(self.summary, name)

    @property
    def learning_rate(self):
        return None if self.summary is None else self.summary["settings"]["learning_rate"]

    @property
    def c(self):
        """η·β₀, the step in units of the sharpness at initialization."""
        if self.learning_rate is None or self.beta0 is None:
            return None
        return self.learning_rate * self.beta0

    @property
    def rate_interval(self):
        return None if self.summary is None else self.summary["fit"].get("rate_interval_95")


def initial_sharpness(summary, workdir):
    """(β₀, where it came from): the step-size calibration, else the step-0 row's sharpness."""
    calibration = ((summary or {}).get("run") or {}).get("learning_rate_calibration")
    if calibration:
        return calibration["sharpness0"], "calibration"
    try:
        rows = RunDirectory(workdir).read_metrics()
    except (FileNotFoundError, ValueError):
        return None, ""
    first = rows[0] if rows else {}
    if first.get("step") == 0 and first.get("sharpness") is not None:
        return first["sharpness"], "step-0 probe"
    return None, ""


def records(workdir, experiment, result):
    """The `Record`s of one experiment's sweep result, β₀ filled in (module docstring)."""
    found = []
    for run in result.runs:
        record = Record(
            experiment=experiment.name,
            name=os.path.relpath(run.workdir, workdir),
            seed=run.seed,
            status=run.status,
            summary=run.summary,
            workdir=run.workdir,
        )
        if WIDTH_KEY in run.settings:
            record.width = int(run.settings[WIDTH_KEY])
            record.step = run.settings[STEP_KEY]
        record.beta0, record.beta0_source = initial_sharpness(run.summary, run.workdir)
        found.append(record)
    calibrated = {(r.width, r.seed): r for r in found if r.beta0_source == "calibration"}
    for record in found:
        twin = calibrated.get((record.width, record.seed))
        if record.beta0 is None and twin is not None and record.width is not None:
            record.beta0 = twin.beta0
            record.beta0_source = f"calibrated run {twin.name}"
    return found


# --------------------------------------------------------------------------------------
# Cells.


def rate_cell(record):
    """'ρ̂ [low, high]' with the fit's 95 % interval."""
    rate = record.value("fitted_rate")
    interval = record.rate_interval
    text = cell(rate, "rate")
    if rate is not None and interval and None not in interval:
        text += f" [{cell(interval[0], 'rate')}, {cell(interval[1], 'rate')}]"
    return text


def phase_cell(record):
    model, tau = record.value("phase_model"), record.value("transition_step")
    if model is None:
        return tables.MISSING
    return model if tau is None else f"{model} (τ = {tau})"


def regime_cell(record):
    if record.summary is None:
        return tables.MISSING
    regime = record.summary["regime"]
    if regime["in_local_regime"] is None:
        return f"— ({regime['reason']})" if regime.get("reason") else tables.MISSING
    if regime["in_local_regime"]:
        return "stayed"
    return f"left at step {regime['left_step']} ({regime['left_reason']})"


def step_label(record):
    """How a run's step size reads in the tables."""
    if record.step == SMALL_STEP:
        return f"η = {SMALL_STEP}/β₀"
    if record.step == FIXED_STEP:
        return f"η = {cell(record.learning_rate)} (fixed)"
    calibration = ((record.summary or {}).get("run") or {}).get("learning_rate_calibration")
    if calibration:
        return f"η = {calibration['learning_rate_times_sharpness']:g}/β₀"
    return f"η = {cell(record.learning_rate)}"


def mean_cell(values, kind="number"):
    """'mean [low, high]' across seeds (the 95 % Student-t interval; none for one value)."""
    found = sweep_statistics.across_seeds(values)
    if not found["n"]:
        return tables.MISSING
    text = cell(found["mean"], kind)
    if found["ci95_low"] is not None:
        text += f" [{cell(found['ci95_low'], kind)}, {cell(found['ci95_high'], kind)}]"
    return text


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


RUN_HEADER = (
    "run", "seed", "step", "c = η·β₀", "status", "final loss", "ρ̂ [95 % fit interval]",
    "1 − ημ", "μ", "PL envelope", "phase model (τ)", "drift ‖θ−θ₀‖", "relative drift",
    "kernel drift", "local regime",
)  # fmt: skip


def run_rows(found):
    """One table row per run (RUN_HEADER)."""
    return [
        (
            f"`{r.name}`",
            str(r.seed),
            step_label(r),
            cell(r.c),
            r.status,
            cell(r.value("final_loss")),
            rate_cell(r),
            cell(r.value("rate_bound"), "rate"),
            cell(r.value("mu")),
            cell(r.value("pl_lower_envelope")),
            phase_cell(r),
            cell(r.value("final_drift")),
            cell(r.value("relative_drift")),
            cell(r.value("kernel_drift")),
            regime_cell(r),
        )
        for r in found
    ]


def _counted(texts):
    """'a ×2, b' for ['a', 'a', 'b']."""
    counts = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    return ", ".join(t if n == 1 else f"{t} ×{n}" for t, n in counts.items())


GROUP_HEADER = (
    "c = η·β₀", "final drift ‖θ−θ₀‖", "relative drift ‖θ−θ₀‖/‖θ₀‖", "kernel drift",
    "PL envelope", "μ", "ρ̂ across seeds", "phase model (τ per seed)", "local regime",
)  # fmt: skip


def group_row(members):
    """The across-seed cells (GROUP_HEADER) of one group of runs: mean [95 % interval]."""
    kept = [m for m in members if m.summary is not None and m.status != "diverged"]
    taus = [m.value("transition_step") for m in kept]
    phases = _counted(m.value("phase_model") or tables.MISSING for m in kept) or tables.MISSING
    if any(tau is not None for tau in taus):
        phases += " (τ = " + ", ".join(cell(t) for t in taus) + ")"
    regimes = [m.value("in_local_regime") for m in kept]
    regime = f"stayed {sum(r is True for r in regimes)}/{len(members)}"
    left_out = [f"seed={m.seed} {m.status}" for m in members if m not in kept]
    if left_out:
        regime += f" ({'; '.join(left_out)} left out)"
    fields = ("final_drift", "relative_drift", "kernel_drift", "pl_lower_envelope", "mu")
    return (
        mean_cell([m.c for m in kept]),
        *(mean_cell([m.value(name) for m in kept]) for name in fields),
        mean_cell([m.value("fitted_rate") for m in kept], "rate"),
        phases,
        regime,
    )


WIDTH_NOTE = (
    "Mean [95 % interval, Student t] across seeds; c = η·β₀ with β₀ the sharpness at "
    "initialization."
)
WIDTH_HEADER = ("width", "step", *GROUP_HEADER, "paper: final drift")
SEEDS_HEADER = ("seeds", *GROUP_HEADER)


def width_rows(found):
    """The width × step table (WIDTH_HEADER): mean [95 % interval] across seeds."""
    rows = []
    for width in sorted({r.width for r in found}):
        for step in (FIXED_STEP, SMALL_STEP):
            members = [r for r in found if r.width == width and r.step == step]
            if members:
                paper = PAPER_FINAL_DRIFT[step] if width == PAPER_WIDTH else None
                paper_cell = f"{paper:.3f}" if paper is not None else ""
                rows.append((str(width), step_label(members[0]), *group_row(members), paper_cell))
    return rows


# --------------------------------------------------------------------------------------
# The report.


INTRODUCTION = (
    "Written by `lplr-reproduce` from the runs' summary.json files (rerun the command to "
    "regenerate; finished runs are skipped). Drift ‖θ_t − θ₀‖₂ (absolute) and "
    "‖θ_t − θ₀‖₂/‖θ₀‖₂ (relative); kernel drift ‖K_t − K₀‖_F/‖K₀‖_F with K = Θ/n; PL "
    "envelope: the lowest PL ratio q = ‖∇L‖²/(2(L − L*)) on the rate-fit window; μ = "
    "min_t λ_min(K_t); ρ̂: the fitted per-step rate with its 95 % interval; local regime: "
    "λ_min(K_t) > 0 and kernel drift ≤ 0.5 at every probe."
)


def _experiment_lines(experiment, members, workdir, quick):
    """(lines of the block, lines of the 'Every run' part) of one experiment."""
    from lplr_tf import reproduce_findings

    lines = [f"### {experiment.title}", ""]
    facts = [r.summary["run"] for r in members if r.summary and r.summary.get("run")]
    if facts:
        lines.append(
            f"Data: `{facts[0]['dataset']}`, n = {facts[0]['train_size']}: "
            f"{facts[0]['data_source']}. Ran on {experiment.data_note}."
        )
    sweep_tables = os.path.join(experiment.directory, "sweep.md")
    lines += ["", f"`{experiment.sweep_command(workdir, quick)}` (`{sweep_tables}`)", ""]
    runs = _table(RUN_HEADER, run_rows(members))
    if experiment.name != WIDTH_ABLATION:
        lines += [runs, ""]
        if len(members) > 1:
            seeds = _table(SEEDS_HEADER, [(str(len(members)), *group_row(members))])
            lines += ["Across seeds (mean [95 % interval]):", "", seeds, ""]
        return lines, []
    lines += [WIDTH_NOTE, "", _table(WIDTH_HEADER, width_rows(members)), ""]
    lines += reproduce_findings.paper_drift_table(members, PAPER_FINAL_DRIFT, PAPER_WIDTH)
    return lines, [f"### {experiment.title}: every run", "", runs, ""]


def write_report(workdir, plan, results, timing, *, quick=False):
    """Writes workdir/REPRODUCTION.md and its figures; returns (path, README block)."""
    from lplr_tf import reproduce_findings

    found = {e.name: records(workdir, e, results[e.name]) for e in plan}
    figures = reproduce_figures.draw_all(workdir, plan, found, PAPER_FINAL_DRIFT, PAPER_WIDTH)
    if quick:
        mode = "`--quick` smoke version (tiny n, few steps: not the paper's numbers)"
    else:
        mode = "full reproduction"
    counts = ", ".join(
        f"{e.name} {len(results[e.name].ran)} ran / {len(results[e.name].skipped)} skipped "
        f"in {format_duration(timing.experiment_seconds.get(e.name, 0.0))}"
        for e in plan
    )
    command = f"lplr-reproduce --workdir={workdir}" + (" --quick" if quick else "")
    runs = sum(len(members) for members in found.values())
    block = [
        BEGIN_MARKER,
        f"`{command}`: {mode}; {runs} runs; this invocation took {timing.describe()}; {counts}.",
        "",
    ]
    body = []
    for experiment in plan:
        lines, every_run = _experiment_lines(experiment, found[experiment.name], workdir, quick)
        block += lines
        body += every_run
    block += reproduce_findings.agreement_section(found, PAPER_FINAL_DRIFT, PAPER_WIDTH)
    block.append(END_MARKER)
    text = ["# Reproducing the paper", "", INTRODUCTION, "", *block, ""]
    if body:
        text += ["## Every run", "", *body]
    text += ["## Figures", ""]
    for caption, path in figures:
        text += [f"**{caption}**", "", f"![{caption}]({os.path.relpath(path, workdir)})", ""]
    report_path = os.path.join(workdir, REPORT_FILE)
    write_atomically(report_path, "\n".join(text))
    return report_path, "\n".join(block)


def _marker_span(text, path):
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begin < 0 or end < begin:
        raise ConfigError(
            f"--readme={path}: no {BEGIN_MARKER} … {END_MARKER} block in it; expected both "
            "markers, in that order, where the reproduction goes (README.md has them in its "
            "section 'Reproducing the paper')."
        )
    return begin, end + len(END_MARKER)


def check_readme(path):
    """Raises ConfigError unless `path` is a readable file with the two markers."""
    try:
        with open(path, encoding="utf-8") as stream:
            _marker_span(stream.read(), path)
    except OSError as error:
        raise ConfigError(f"--readme={path}: cannot read it ({error.strerror}).") from error


def update_readme(path, block):
    """Replaces the marked block of the file at `path` by `block` (markers included)."""
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    begin, end = _marker_span(text, path)
    write_atomically(path, text[:begin] + block + text[end:])
