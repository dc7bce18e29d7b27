"""Convergence analysis: a pure function from the metric history to a JSON-ready summary.

The history is the list of rows of `metrics.jsonl` (dicts sorted by `step`). Every key but
`step` may be missing or None on a row; NTK keys exist only at probe steps. Conventions follow
DESIGN.md §1: L = 1/(2n) Σ‖f(x_i) − y_i‖², K = Θ/n, PL ratio q = ‖∇L‖²/(2(L − L*)),
ρ_bound = 1 − η·min_t λ_min(K_t), μ_cert = λ_min(K_0) − L̂_Θ·max_t d_t.

Rules and normalizations (also recorded in the module constants below):

* Divergence: a row whose `loss` is present but None/NaN/±inf, or above `loss_bound`
  (default `DIVERGENCE_FACTOR` × max(L_0, tolerance) with L_0 the first logged loss).
  Divergence anywhere takes precedence over convergence.
* Precision floor: points with L − L* ≤ max(tolerance, `PRECISION_EPS` · (L_0 − L*)) are at
  the floor of numerical precision and are left out of the rate fit, the bound check and the
  linearized comparison.
* Stable window (automatic): the logged points with finite loss above the precision floor and
  before the status step (convergence or divergence); of those, the first
  `TRANSIENT_FRACTION` of the step span is skipped as a transient. If that leaves fewer than
  three points, all candidates are used. `window=(start, end)` overrides this with every
  finite point with L − L* > 0 and start ≤ step ≤ end (both inclusive, before divergence).
* Bound check: for consecutive logged points above the floor, the contraction
  (L_{t2} − L*)/(L_{t1} − L*) must be ≤ ρ_bound^(t2 − t1) · (1 + `BOUND_RELATIVE_SLACK`);
  ρ_bound is clamped at 0 when η·μ > 1 (then the theorem's step-size hypothesis fails).
* Linearized deviation: |L_t − L_t^lin| / max(L_t^lin, floor) over the steps where the
  linearized loss was logged and at least one of L_t − L*, L_t^lin is above the floor;
  departure_step is the first step where it exceeds `LINEARIZED_DEPARTURE`.
"""

import dataclasses
import math

import numpy as np

from lplr_tf.values import finite, json_safe
from lplr_tf.verdict import verdict_sentence

# Statuses of a run that ended (a resumed or re-launched run with one is not trained again).
FINAL_STATUSES = ("converged", "max_steps", "diverged")
DIVERGENCE_FACTOR = 1e6
PRECISION_EPS = 1e-10
TRANSIENT_FRACTION = 0.25
BOUND_RELATIVE_SLACK = 1e-4
LINEARIZED_DEPARTURE = 0.1
MIN_FIT_POINTS = 3


def _series(rows, key):
    """Returns [(step, value)] for the rows where `key` holds a finite number."""
    pairs = []
    for row in rows:
        value = finite(row.get(key))
        if value is not None:
            pairs.append((int(row["step"]), value))
    return pairs


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


def _status(rows, l_star, tolerance, loss_bound):
    """Returns (status, status_step, effective loss bound, initial loss)."""
    losses = [(int(row["step"]), row["loss"]) for row in rows if "loss" in row]
    initial_loss = finite(losses[0][1]) if losses else None
    loss_bound = divergence_bound(initial_loss, tolerance, loss_bound)
    for step, raw in losses:
        value = finite(raw)
        if value is None or value > loss_bound:
            return "diverged", step, loss_bound, initial_loss
    for step, raw in losses:
        if finite(raw) - l_star <= tolerance:
            return "converged", step, loss_bound, initial_loss
    return "max_steps", None, loss_bound, initial_loss


def _stable_points(rows, l_star, floor, status_step, window):
    """Returns the (step, L − L*) points of the stable window (see module docstring)."""
    points = [(s, v - l_star) for s, v in _series(rows, "loss")]
    if status_step is not None:
        points = [(s, g) for s, g in points if s < status_step]
    if window is not None:
        start, end = window
        return [(s, g) for s, g in points if start <= s <= end and g > 0]
    points = [(s, g) for s, g in points if g > floor]
    if len(points) < MIN_FIT_POINTS:
        return points
    cutoff = points[0][0] + TRANSIENT_FRACTION * (points[-1][0] - points[0][0])
    kept = [(s, g) for s, g in points if s >= cutoff]
    return kept if len(kept) >= MIN_FIT_POINTS else points


def _fit(points):
    """Least squares of log(L_t − L*) = a + t·log ρ̂ on the given points."""
    if len(points) < MIN_FIT_POINTS:
        return {"rate": None, "r2": None, "window": None}
    steps = np.array([s for s, _ in points], dtype=np.float64)
    logs = np.log(np.array([g for _, g in points], dtype=np.float64))
    slope, intercept = np.polyfit(steps, logs, 1)
    residual = logs - (intercept + slope * steps)
    total = float(np.sum((logs - logs.mean()) ** 2))
    ss_res = float(np.sum(residual**2))
    r2 = 1.0 if total <= 1e-30 else 1.0 - ss_res / total
    return {
        "rate": float(np.exp(slope)),
        "r2": float(r2),
        "window": [int(steps[0]), int(steps[-1])],
    }


def _check_bound(rows, l_star, floor, status_step, rate_bound):
    """Lists the steps t2 whose contraction from the previous logged step beats the bound."""
    points = [(s, v - l_star) for s, v in _series(rows, "loss")]
    if status_step is not None:
        points = [(s, g) for s, g in points if s <= status_step]
    points = [(s, g) for s, g in points if g > floor]
    per_step = max(rate_bound, 0.0)
    violations = []
    for (step1, gap1), (step2, gap2) in zip(points, points[1:]):
        allowed = per_step ** (step2 - step1) * (1.0 + BOUND_RELATIVE_SLACK)
        if gap2 / gap1 > allowed:
            violations.append(step2)
    return violations


def _local_regime(rows, kernel_drift_bound):
    """Returns (in_local_regime, first failing step, reason) over the NTK probes."""
    lambda_min = dict(_series(rows, "ntk_lambda_min"))
    kernel_drift = dict(_series(rows, "kernel_drift"))
    if not lambda_min and not kernel_drift:
        return None, None, None
    for step in sorted(set(lambda_min) | set(kernel_drift)):
        if step in lambda_min and lambda_min[step] <= 0:
            return False, step, f"λ_min(K_t) = {lambda_min[step]:.3g} ≤ 0"
        if step in kernel_drift and kernel_drift[step] > kernel_drift_bound:
            return False, step, f"kernel drift {kernel_drift[step]:.3g} > {kernel_drift_bound:g}"
    return True, None, None


def _certificate(rows, kernel_drift_bound):
    lambda_min = _series(rows, "ntk_lambda_min")
    drifts = dict(_series(rows, "drift"))
    operator_drift = _series(rows, "kernel_drift_op")
    lambda0 = lambda_min[0][1] if lambda_min else None
    lipschitz = None
    if operator_drift:
        ratios = [d / drifts[s] for s, d in operator_drift if drifts.get(s, 0.0) > 0]
        lipschitz = max(ratios) if ratios else 0.0
        if all(d == 0.0 for _, d in operator_drift):
            lipschitz = 0.0
    radius = _max(list(drifts.values()))
    mu_cert = None
    if lambda0 is not None and lipschitz is not None and radius is not None:
        mu_cert = lambda0 - lipschitz * radius
    in_regime, left_step, reason = _local_regime(rows, kernel_drift_bound)
    return {
        "lambda0": lambda0,
        "lipschitz_estimate": lipschitz,
        "radius": radius,
        "mu_cert": mu_cert,
        "certified": None if mu_cert is None else bool(mu_cert > 0),
        "in_local_regime": in_regime,
        "left_step": left_step,
        "left_reason": reason,
    }


def _linearized(rows, l_star, floor, status_step):
    losses = dict(_series(rows, "loss"))
    deviations = []
    for step, lin in _series(rows, "loss_linearized"):
        if step not in losses or (status_step is not None and step > status_step):
            continue
        if losses[step] - l_star <= floor and lin <= floor:
            continue
        deviations.append((step, abs(losses[step] - lin) / max(lin, floor)))
    departures = [s for s, d in deviations if d > LINEARIZED_DEPARTURE]
    return {
        "max_relative_deviation": _max([d for _, d in deviations]),
        "departure_step": departures[0] if departures else None,
        "threshold": LINEARIZED_DEPARTURE,
    }


def _sharpness(rows, learning_rate):
    values = [v for _, v in _series(rows, "sharpness")]
    gauss_newton = [v for _, v in _series(rows, "gn_sharpness")]
    top = _max(values)
    return {
        "max": top,
        "eta_times_max": None if top is None else learning_rate * top,
        "step_size_ok": None if not values else all(learning_rate * v <= 1.0 for v in values),
        "edge_of_stability": None if not values else any(learning_rate * v >= 2.0 for v in values),
        "gauss_newton_max": _max(gauss_newton),
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
    """

    l_star: float = 0.0
    tolerance: float = 1e-6
    loss_bound: float | None = None
    fit_window: tuple | None = None
    kernel_drift_bound: float = 0.5

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


def summarize(rows, *, learning_rate, settings=None, num_steps=None):
    """Summarizes a run's metric history (see the module docstring for every rule).

    Args:
      rows: List of metric dicts sorted by `step` (rows of metrics.jsonl).
      learning_rate: The GD step size η (> 0).
      settings: The analysis `Settings` (default: Settings()).
      num_steps: Planned steps; when given and the last logged step is below it and the run
        neither converged nor diverged, status is `incomplete` instead of `max_steps`.

    Returns:
      A JSON-serializable dict (None for every missing or non-finite value) with keys status,
      status_step, steps, initial_loss, final_loss, l_star, loss_bound, precision_floor, fit,
      pl_ratio, drift, ntk, sharpness, bound, certificate, linearized, settings, verdict.

    Raises:
      ValueError: empty history, a row without `step`, or a non-positive learning rate.
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
    settings = settings or Settings()
    l_star, tolerance, loss_bound = settings.l_star, settings.tolerance, settings.loss_bound
    window, kernel_drift_bound = settings.fit_window, settings.kernel_drift_bound
    rows = sorted(rows, key=lambda row: int(row["step"]))
    status, status_step, bound_used, initial_loss = _status(rows, l_star, tolerance, loss_bound)
    last_step = int(rows[-1]["step"])
    if status == "max_steps" and num_steps is not None and last_step < num_steps:
        status = "incomplete"
    initial_gap = None if initial_loss is None else initial_loss - l_star
    floor = max(tolerance, PRECISION_EPS * initial_gap) if initial_gap else tolerance
    points = _stable_points(rows, l_star, floor, status_step, window)
    fit = _fit(points)
    window_steps = {s for s, _ in points} if fit["window"] else set()

    pl = _series(rows, "pl_ratio")
    pl_values = [v for _, v in pl]
    drift = _series(rows, "drift")
    lambda_min = _series(rows, "ntk_lambda_min")
    mu = _min([v for _, v in lambda_min])
    rate_bound = None if mu is None else 1.0 - learning_rate * mu
    violations = (
        None
        if rate_bound is None
        else _check_bound(
            rows, l_star, floor, status_step if status == "diverged" else None, rate_bound
        )
    )
    summary = {
        "status": status,
        "status_step": status_step,
        "steps": last_step,
        "initial_loss": initial_loss,
        "final_loss": _last(_series(rows, "loss")),
        "l_star": float(l_star),
        "loss_bound": bound_used,
        "precision_floor": floor,
        "fit": fit,
        "pl_ratio": {
            "min": _min(pl_values),
            "median": float(np.median(pl_values)) if pl_values else None,
            "lower_envelope": _min([v for s, v in pl if s in window_steps]),
        },
        "drift": {
            "final": _last(drift),
            "max": _max([v for _, v in drift]),
            "relative_final": _last(_series(rows, "relative_drift")),
        },
        "ntk": {
            "lambda_min_init": lambda_min[0][1] if lambda_min else None,
            "lambda_min_min": mu,
            "lambda_max_max": _max([v for _, v in _series(rows, "ntk_lambda_max")]),
            "kernel_drift_final": _last(_series(rows, "kernel_drift")),
        },
        "sharpness": _sharpness(rows, learning_rate),
        "bound": {
            "mu": mu,
            "rate_bound": rate_bound,
            "fitted_rate": fit["rate"],
            "holds": None if violations is None else not violations,
            "violations": violations,
            "relative_slack": BOUND_RELATIVE_SLACK,
        },
        "certificate": _certificate(rows, kernel_drift_bound),
        "linearized": _linearized(
            rows, l_star, floor, status_step if status == "diverged" else None
        ),
        "settings": {
            "learning_rate": float(learning_rate),
            "num_steps": num_steps,
            **settings.as_dict(),
        },
    }
    divergence_loss = None
    if status == "diverged":
        divergence_loss = finite(next(r for r in rows if r["step"] == status_step)["loss"])
    summary["verdict"] = verdict_sentence(summary, divergence_loss)
    return json_safe(summary)
