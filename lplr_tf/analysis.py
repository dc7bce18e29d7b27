"""Convergence analysis: a pure function from the metric history to a JSON-ready summary.

The history is the list of rows of `metrics.jsonl` (dicts sorted by `step`). Every key but
`step` may be missing or None on a row; NTK keys exist only at probe steps. Conventions and
every formula are in docs/theory.md: L = 1/(2n) Σ‖f(x_i) − y_i‖², K = Θ/n, g_t = L_t − L*,
PL ratio q = ‖∇L‖²/(2g). The phase and rate fits live in `phases`, the GD bounds and the
a-posteriori estimate in `bounds`, the sharpness and edge-of-stability flags in `stability`,
the rules for what a run may claim (and each section's `kind`) in `claims`. This module
decides which points they see and assembles the summary.

Rules:

* Divergence: a row whose `loss` is present but None/NaN/±inf, or above `loss_bound`
  (default `DIVERGENCE_FACTOR` × max(L_0, tolerance)). Divergence takes precedence.
* Precision floor: points with g ≤ max(tolerance, `PRECISION_EPS`·g_0) are left out of the
  local rates, the phase and rate fits and the bound check.
* Phase points: finite losses above the floor, before the status step. The local rates and
  the four phase models (`phases.fit_phases`) use them.
* Rate-fit window: `settings.fit_window` (every finite g > 0 in [start, end] before the
  status step) when set; else the last segment [τ, end] when the selected phase model has a
  transition τ; else the phase points minus the first `TRANSIENT_FRACTION` of their step
  span (all of them when that leaves fewer than three).
* Claims (`claims`): a diverged run makes no regime, bound or a-posteriori claim; a trace
  kernel with O ≠ 1 outputs gives no μ, bound, a-posteriori estimate or Gauss–Newton
  sharpness; an SGD run's GD bounds are reference values.
* Linearized deviation: rows' `linearized_deviation` = ‖r_t − r_t^lin‖/‖r_0‖; departure is
  the first step above `settings.linearized_threshold`.
"""

import dataclasses
import math

import numpy as np

from lplr_tf import claims, phases, stability
from lplr_tf.bounds import series as _series
from lplr_tf.values import finite, json_safe
from lplr_tf.verdict import verdict_sentence

# Statuses of a run that ended (a resumed or re-launched run with one is not trained again).
FINAL_STATUSES = ("converged", "max_steps", "diverged")
DIVERGENCE_FACTOR = 1e6
PRECISION_EPS = 1e-10
TRANSIENT_FRACTION = 0.25
MIN_FIT_POINTS = phases.MIN_FIT_POINTS
MEASURED, ESTIMATE = claims.MEASURED, claims.ESTIMATE


def _min(values):
    return min(values) if values else None


def _max(values):
    return max(values) if values else None


def _last(pairs):
    return pairs[-1][1] if pairs else None


def divergence_bound(initial_loss, tolerance, loss_bound=None):
    """The loss above which a run counts as diverged.

    Args:
      initial_loss: The first logged loss L_0 (None or non-finite: no default bound).
      tolerance: The convergence tolerance (keeps the default positive when L_0 = 0).
      loss_bound: An explicit bound; returned unchanged when given.

    Returns:
      `loss_bound` if given, else DIVERGENCE_FACTOR · max(L_0, tolerance); +inf when
      neither is available.
    """
    if loss_bound is not None:
        return float(loss_bound)
    initial_loss = finite(initial_loss)
    if initial_loss is None:
        return math.inf
    return DIVERGENCE_FACTOR * max(initial_loss, tolerance)


def loss_status(loss, bound, l_star, tolerance):
    """ "diverged" (None/non-finite, or above `bound`), "converged" (L − L* ≤ tolerance) or
    None for one logged loss: the rule the summary applies to every row, and the launcher to
    each row as it is logged (to stop there)."""
    value = finite(loss)
    if value is None or value > bound:
        return "diverged"
    return "converged" if value - l_star <= tolerance else None


def _status(rows, l_star, tolerance, loss_bound):
    """Returns (status, status_step, effective loss bound, initial loss)."""
    losses = [(int(row["step"]), row["loss"]) for row in rows if "loss" in row]
    initial_loss = finite(losses[0][1]) if losses else None
    loss_bound = divergence_bound(initial_loss, tolerance, loss_bound)
    statuses = [(step, loss_status(raw, loss_bound, l_star, tolerance)) for step, raw in losses]
    for wanted in ("diverged", "converged"):  # divergence anywhere takes precedence
        for step, status in statuses:
            if status == wanted:
                return wanted, step, loss_bound, initial_loss
    return "max_steps", None, loss_bound, initial_loss


def phase_points(rows, l_star, floor, status_step):
    """The (step, g) points above the precision floor and before the status step."""
    points = [(s, v - l_star) for s, v in _series(rows, "loss")]
    if status_step is not None:
        points = [(s, g) for s, g in points if s < status_step]
    return [(s, g) for s, g in points if g > floor]


def local_rates(rows, summary):
    """The per-step local rates [(step, ρ_t)] of a summarized run (what the plot draws).

    Args:
      rows: The metric rows the summary was computed from.
      summary: The dict `summarize` returned for them (its l_star, precision_floor and
        status_step select the points).

    Returns:
      `phases.local_rates` of the phase points: ρ_{t₂} = (g_{t₂}/g_{t₁})^{1/(t₂ − t₁)}.
    """
    points = phase_points(
        sorted(rows, key=lambda row: int(row["step"])),
        summary["l_star"],
        summary["precision_floor"],
        summary["status_step"],
    )
    return phases.local_rates(points)


def _window_points(rows, l_star, status_step, window, candidates, phase):
    """Returns (points of the rate-fit window, where the window came from)."""
    if window is not None:
        start, end = window
        points = [(s, v - l_star) for s, v in _series(rows, "loss")]
        if status_step is not None:
            points = [(s, g) for s, g in points if s < status_step]
        return [(s, g) for s, g in points if start <= s <= end and g > 0], "settings"
    if phase["transition_step"] is not None:
        return [(s, g) for s, g in candidates if s >= phase["transition_step"]], "phases"
    if len(candidates) < MIN_FIT_POINTS:
        return candidates, "automatic"
    first, last = candidates[0][0], candidates[-1][0]
    cutoff = first + TRANSIENT_FRACTION * (last - first)
    kept = [(s, g) for s, g in candidates if s >= cutoff]
    return (kept if len(kept) >= MIN_FIT_POINTS else candidates), "automatic"


def _linearized(rows, status_step, threshold):
    """Residual-space deviation from the linearized model (module docstring)."""
    deviations = _series(rows, "linearized_deviation")
    if status_step is not None:
        deviations = [(s, d) for s, d in deviations if s <= status_step]
    departures = [s for s, d in deviations if d > threshold]
    return {
        "max_deviation": _max([d for _, d in deviations]),
        "departure_step": departures[0] if departures else None,
        "threshold": threshold,
        "kind": MEASURED,
    }


@dataclasses.dataclass(frozen=True)
class Settings:
    """The analysis settings of a run (gin: `analysis.Settings.tolerance = 1e-8`, ...).

    Attributes:
      l_star: The optimal loss L* (0 for interpolation).
      tolerance: Converged when L − L* ≤ tolerance at a logged step.
      loss_bound: Diverged above this loss; None: 1e6 × max(L_0, tolerance).
      fit_window: Optional (first_step, last_step) overriding the automatic stable window.
      kernel_drift_bound: The run is in the local regime while every probe's
        ‖K_t − K_0‖_F/‖K_0‖_F ≤ this bound (and λ_min(K_t) > 0).
      linearized_threshold: The run departs from its linearization at the first logged step
        where ‖r_t − r_t^lin‖/‖r_0‖ exceeds this threshold.
    """

    l_star: float = 0.0
    tolerance: float = 1e-6
    loss_bound: float | None = None
    fit_window: tuple | None = None
    kernel_drift_bound: float = 0.5
    linearized_threshold: float = 0.1

    def __post_init__(self):
        # Every setting is checked when the settings are made, i.e. before a run's first step.
        # (Imported here to keep this check self-contained.)
        import numbers

        from lplr_tf import validation

        name = "analysis.Settings"
        l_star = validation.number(f"{name}.l_star", self.l_star, example=0.0)
        tolerance = validation.number(f"{name}.tolerance", self.tolerance, 0.0, example=1e-6)
        if self.loss_bound is not None:
            bound = validation.number(f"{name}.loss_bound", self.loss_bound, 0.0, strict=True)
            if bound <= l_star + tolerance:
                raise ValueError(
                    f"{name}.loss_bound = {bound!r} is not above l_star + tolerance = "
                    f"{l_star + tolerance!r}: every loss would count as diverged and "
                    "converged at once. Raise loss_bound, or set it to None for the default "
                    "1e6 × max(L_0, tolerance)."
                )
            object.__setattr__(self, "loss_bound", bound)
        drift_bound = validation.number(
            f"{name}.kernel_drift_bound", self.kernel_drift_bound, 0.0, strict=True, example=0.5
        )
        object.__setattr__(self, "l_star", l_star)
        object.__setattr__(self, "tolerance", tolerance)
        object.__setattr__(self, "kernel_drift_bound", drift_bound)
        window = self.fit_window
        if window is not None:
            pair = isinstance(window, (tuple, list)) and len(window) == 2
            if not pair or any(
                isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0
                for step in window
            ):
                raise ValueError(
                    f"{name}.fit_window = {window!r}; expected (first_step, last_step), two "
                    "integers >= 0, or None for the automatic window. Fix the binding, e.g. "
                    f"{name}.fit_window = (100, 500)."
                )
            if window[0] > window[1]:
                raise ValueError(
                    f"{name}.fit_window = {tuple(window)!r}; expected first_step <= last_step. "
                    f"Swap them: {name}.fit_window = {(window[1], window[0])!r}."
                )
            object.__setattr__(self, "fit_window", (int(window[0]), int(window[1])))

    def as_dict(self):
        """The settings as the JSON-ready dict stored in summary.json's `settings`."""
        fields = dataclasses.asdict(self)
        fields["fit_window"] = None if self.fit_window is None else list(self.fit_window)
        return fields

    @classmethod
    def from_dict(cls, stored):
        """Settings from a summary's `settings` dict; unknown keys are ignored."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in stored.items() if key in names})


def summarize(rows, *, learning_rate, settings=None, num_steps=None, run=None):
    """Summarizes a run's metric history (see the module docstring for every rule).

    Args:
      rows: List of metric dicts sorted by `step` (rows of metrics.jsonl).
      learning_rate: The step size η (> 0).
      settings: The analysis `Settings` (default: Settings()).
      num_steps: Planned steps; when given and the last logged step is below it and the run
        neither converged nor diverged, status is `incomplete` instead of `max_steps`.
      run: Optional JSON-ready facts about the run, stored as `summary["run"]` so that the
        summary can be recomputed: protocol ("gd" | "sgd"), ntk_output_mode ("full" |
        "trace"), num_outputs (O), train_size (n), probe_size (m), dataset, a_priori (the
        dict of `a_priori.check`), learning_rate_calibration. Missing facts mean full-batch
        GD with the full kernel.

    Returns:
      A JSON-serializable dict (None for every missing or non-finite value) with keys status,
      status_step, steps, initial_loss, final_loss, l_star, loss_bound, precision_floor,
      phases, fit, pl_ratio, drift, ntk, sharpness, bound, a_posteriori, regime, a_priori,
      linearized, settings, run, verdict.

    Raises:
      ValueError: empty history, a row without `step`, a non-positive learning rate, or a
        `run` with an unknown protocol or NTK output mode.
    """
    if not rows:
        raise ValueError(
            "summarize: rows=[] (empty history); expected at least one metrics "
            "row with `step` and `loss`. Check that metrics.jsonl was written."
        )
    if any("step" not in row or row["step"] is None for row in rows):
        raise ValueError(
            "summarize: a row has no `step`; expected every metrics row to carry "
            "its integer step. Fix the metric writer or drop that row."
        )
    if finite(learning_rate) is None or learning_rate <= 0:
        raise ValueError(
            f"summarize: learning_rate={learning_rate!r}; expected a positive "
            "step size η. Pass the run's learning rate."
        )
    facts = claims.run_facts(run)
    settings = settings or Settings()
    l_star = settings.l_star
    rows = sorted(rows, key=lambda row: int(row["step"]))
    status, status_step, bound_used, initial_loss = _status(
        rows, l_star, settings.tolerance, settings.loss_bound
    )
    last_step = int(rows[-1]["step"])
    if status == "max_steps" and num_steps is not None and last_step < num_steps:
        status = "incomplete"
    initial_gap = None if initial_loss is None else initial_loss - l_star
    tolerance = settings.tolerance
    floor = max(tolerance, PRECISION_EPS * initial_gap) if initial_gap else tolerance
    diverged_step = status_step if status == "diverged" else None
    candidates = phase_points(rows, l_star, floor, status_step)
    phase = {**phases.fit_phases(candidates), "kind": ESTIMATE}
    points, source = _window_points(
        rows, l_star, status_step, settings.fit_window, candidates, phase
    )
    fit = {**phases.fit_rate(points), "window_source": source, "kind": ESTIMATE}
    window_steps = {s for s, _ in points} if fit["window"] else set()
    why = claims.reasons(facts, diverged_step)

    pl = _series(rows, "pl_ratio")
    pl_values = [v for _, v in pl]
    envelope = _min([v for s, v in pl if s in window_steps])
    drift = _series(rows, "drift")
    lambda_min = _series(rows, "ntk_lambda_min")
    sharpness = stability.sharpness_section(rows, learning_rate, diverged_step)
    if why.kernel:
        sharpness.update(gauss_newton_max=None, gauss_newton_reason=why.kernel)
    check_points = [(s, v - l_star) for s, v in _series(rows, "loss")]
    if diverged_step is not None:
        check_points = [(s, g) for s, g in check_points if s <= diverged_step]
    check_points = [(s, g) for s, g in check_points if g > floor]
    summary = {
        "status": status,
        "status_step": status_step,
        "steps": last_step,
        "initial_loss": initial_loss,
        "final_loss": _last(_series(rows, "loss")),
        "l_star": float(l_star),
        "loss_bound": bound_used,
        "precision_floor": floor,
        "phases": phase,
        "fit": fit,
        "pl_ratio": {
            "min": _min(pl_values),
            "median": float(np.median(pl_values)) if pl_values else None,
            "lower_envelope": envelope,
            "kind": MEASURED,
        },
        "drift": {
            "final": _last(drift),
            "max": _max([v for _, v in drift]),
            "relative_final": _last(_series(rows, "relative_drift")),
            "kind": MEASURED,
        },
        "ntk": {
            "lambda_min_init": lambda_min[0][1] if lambda_min else None,
            "lambda_min_min": _min([v for _, v in lambda_min]),
            "lambda_max_max": _max([v for _, v in _series(rows, "ntk_lambda_max")]),
            "kernel_drift_final": _last(_series(rows, "kernel_drift")),
            "output_mode": facts.get("ntk_output_mode", "full"),
            **_probe_path(facts),
        },
        "sharpness": sharpness,
        "bound": claims.bound_section(
            rows, learning_rate, facts, fit, envelope, sharpness["max"], check_points, why
        ),
        "a_posteriori": claims.a_posteriori_section(rows, why),
        "regime": claims.regime_section(rows, settings.kernel_drift_bound, why),
        "a_priori": claims.a_priori_section(facts.get("a_priori"), why),
        "linearized": _linearized(rows, diverged_step, settings.linearized_threshold),
        "settings": {
            "learning_rate": float(learning_rate),
            "num_steps": num_steps,
            **settings.as_dict(),
        },
        "run": facts or None,
    }
    divergence_loss = None
    if status == "diverged":
        divergence_loss = finite(next(r for r in rows if r["step"] == status_step)["loss"])
    summary["verdict"] = verdict_sentence(summary, divergence_loss)
    return json_safe(summary)


def _probe_path(facts):
    """How the NTK was probed: "dense" or "matrix_free" (its λ_min and trace are estimates)."""
    estimates = sorted(facts.get("ntk_estimates") or ())
    return {
        "path": facts.get("ntk_path"),
        "estimates": estimates,
        "kind": ESTIMATE if estimates else MEASURED,
    }
