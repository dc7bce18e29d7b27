"""Phases of the suboptimality curve: local rates, the linear rate fit, four phase models.

Pure NumPy/SciPy on (step, g) points, g_t = L_t − L* > 0, sorted by step (the analysis
passes the logged points above the precision floor, before any divergence). Formulas, in
the notation of docs/theory.md:

* Local rate between consecutive points t₁ < t₂: ρ_{t₂} = (g_{t₂} / g_{t₁})^{1/(t₂ − t₁)}.
* Linear rate fit: least squares of log g_t = a + t·log ρ̂; the standard error of log ρ̂ is
  the ordinary least-squares one, s / √Σ(t − t̄)² with s² = RSS / (m − 2), and the 95 %
  interval of ρ̂ is exp(log ρ̂ ± t₀.₉₇₅(m − 2)·SE). It treats the residuals as independent:
  on a smooth deterministic curve it measures how far log g is from a line, not noise.
* Phase models of log g_t, fitted by least squares in log space (t is the absolute step):

    linear                  a + t·log ρ                                         k = 2
    sublinear               a − p·log(1 + t)                                    k = 2
    sublinear_then_linear   a − p·log(1 + min(t, τ)) + max(t − τ, 0)·log ρ      k = 4
    two_rate                a + min(t, τ)·log ρ₁ + max(t − τ, 0)·log ρ₂         k = 4

  Both piecewise models are continuous at τ by construction. τ is scanned over the logged
  steps that leave at least `MIN_SEGMENT_POINTS` points on each side (t ≤ τ and t ≥ τ).
  Selection is by BIC = m·log(RSS/m) + k·log m, with RSS floored at m·`RESIDUAL_FLOOR`²
  (a float32 loss carries about 1e-7 relative error, so a smaller RSS is a perfect fit and
  ties are then decided by k). A transition is found when a piecewise model is selected.
"""

import math

import numpy as np
from scipy import stats

MIN_FIT_POINTS = 3
MIN_SEGMENT_POINTS = 3
RESIDUAL_FLOOR = 1e-6
MODELS = ("linear", "sublinear", "sublinear_then_linear", "two_rate")
NUM_PARAMETERS = {"linear": 2, "sublinear": 2, "sublinear_then_linear": 4, "two_rate": 4}
CONFIDENCE = 0.95


def local_rates(points):
    """Per-step contraction between consecutive points.

    Args:
      points: [(step, g)] with g > 0, sorted by strictly increasing step.

    Returns:
      [(t₂, (g_{t₂} / g_{t₁})^{1/(t₂ − t₁)})] for each consecutive pair, as Python floats.
    """
    rates = []
    for (step1, gap1), (step2, gap2) in zip(points, points[1:]):
        rates.append((int(step2), float((gap2 / gap1) ** (1.0 / (step2 - step1)))))
    return rates


def _arrays(points):
    steps = np.array([s for s, _ in points], dtype=np.float64)
    logs = np.log(np.array([g for _, g in points], dtype=np.float64))
    return steps, logs


def _r2(rss, logs):
    total = float(np.sum((logs - logs.mean()) ** 2))
    return 1.0 if total <= 1e-30 else 1.0 - rss / total


def fit_rate(points):
    """Least squares of log g_t = a + t·log ρ̂, with its standard error and 95 % interval.

    Args:
      points: [(step, g)], g > 0, at least `MIN_FIT_POINTS` of them for a fit.

    Returns:
      Dict rate (ρ̂), r2, window ([first, last] step), points (m), log_rate_std_error (the
      SE of log ρ̂) and rate_interval_95 ([low, high] of ρ̂); every value but `points` is
      None with fewer than `MIN_FIT_POINTS` points.
    """
    empty = {
        "rate": None,
        "r2": None,
        "window": None,
        "points": len(points),
        "log_rate_std_error": None,
        "rate_interval_95": None,
    }
    if len(points) < MIN_FIT_POINTS:
        return empty
    steps, logs = _arrays(points)
    slope, intercept = np.polyfit(steps, logs, 1)
    rss = float(np.sum((logs - (intercept + slope * steps)) ** 2))
    spread = float(np.sum((steps - steps.mean()) ** 2))
    dof = len(points) - 2
    std_error = math.sqrt(rss / dof / spread)
    half_width = float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof)) * std_error
    return {
        "rate": float(np.exp(slope)),
        "r2": float(_r2(rss, logs)),
        "window": [int(steps[0]), int(steps[-1])],
        "points": len(points),
        "log_rate_std_error": std_error,
        "rate_interval_95": [float(np.exp(slope - half_width)), float(np.exp(slope + half_width))],
    }


def _least_squares(designs, logs):
    """Batched least squares: designs (T, m, k), logs (m,) → coefficients (T, k), RSS (T,).

    Columns are scaled to unit max-norm before a QR solve (steps reach 1e5, logs ~10).
    """
    scale = np.max(np.abs(designs), axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    q, r = np.linalg.qr(designs / scale)
    projected = np.einsum("tmk,m->tk", q, logs)
    coefficients = np.linalg.solve(r, projected[..., None])[..., 0] / scale[:, 0, :]
    residual = logs[None, :] - np.einsum("tmk,tk->tm", designs, coefficients)
    return coefficients, np.sum(residual**2, axis=1)


def _designs(model, steps, taus):
    """The design matrices of one model: (len(taus), m, k); taus is ignored (one row) when
    the model has no transition."""
    ones = np.ones_like(steps)
    if model == "linear":
        return np.stack([ones, steps], axis=-1)[None]
    if model == "sublinear":
        return np.stack([ones, -np.log1p(steps)], axis=-1)[None]
    before = np.minimum(steps[None, :], taus[:, None])
    after = np.maximum(steps[None, :] - taus[:, None], 0.0)
    ones = np.broadcast_to(ones, before.shape)
    if model == "sublinear_then_linear":
        return np.stack([ones, -np.log1p(before), after], axis=-1)
    return np.stack([ones, before, after], axis=-1)


def _parameters(model, coefficients, tau):
    a, second = float(coefficients[0]), float(coefficients[1])
    if model == "linear":
        return {"a": a, "rate": math.exp(second)}
    if model == "sublinear":
        return {"a": a, "exponent": second}
    third = math.exp(float(coefficients[2]))
    if model == "sublinear_then_linear":
        return {"a": a, "exponent": second, "transition_step": int(tau), "rate": third}
    return {"a": a, "rate_before": math.exp(second), "transition_step": int(tau), "rate": third}


def _bic(rss, count, num_parameters):
    floored = max(rss, count * RESIDUAL_FLOOR**2)
    return count * math.log(floored / count) + num_parameters * math.log(count)


def _fit_model(model, steps, logs):
    """The best fit of one model (best τ for the piecewise ones), or None if too few points."""
    count = len(steps)
    taus = np.zeros(1)
    if NUM_PARAMETERS[model] == 4:
        taus = steps[MIN_SEGMENT_POINTS - 1 : count - MIN_SEGMENT_POINTS + 1]
        if taus.size == 0:
            return None
    coefficients, rss = _least_squares(_designs(model, steps, taus), logs)
    best = int(np.argmin(rss))
    return {
        "bic": _bic(float(rss[best]), count, NUM_PARAMETERS[model]),
        "r2": float(_r2(float(rss[best]), logs)),
        "rss": float(rss[best]),
        "parameters": _parameters(model, coefficients[best], taus[best]),
    }


def fit_phases(points):
    """Fits the four phase models to log g_t and selects one by BIC (module docstring).

    Args:
      points: [(step, g)] with g > 0, sorted by step (logged points above the precision floor).

    Returns:
      Dict model (the selected name, None with fewer than `MIN_FIT_POINTS` points),
      transition_step (τ, None without a transition), exponent (p of the sublinear phase),
      rate (ρ of the last, linear phase), rate_before (ρ₁ of `two_rate`), points (m),
      window ([first, last] step), models ({name: {bic, r2, rss, parameters}} for every
      model that could be fitted).
    """
    result = {
        "model": None,
        "transition_step": None,
        "exponent": None,
        "rate": None,
        "rate_before": None,
        "points": len(points),
        "window": None,
        "models": {},
    }
    if len(points) < MIN_FIT_POINTS:
        return result
    steps, logs = _arrays(points)
    fits = {}
    for model in MODELS:
        fit = _fit_model(model, steps, logs)
        if fit is not None:
            fits[model] = fit
    # Strict improvement only: on a tie the earlier (simpler) model stays selected.
    selected = None
    for model, fit in fits.items():
        if selected is None or fit["bic"] < fits[selected]["bic"]:
            selected = model
    chosen = fits[selected]["parameters"]
    result.update(
        model=selected,
        transition_step=chosen.get("transition_step"),
        exponent=chosen.get("exponent"),
        rate=chosen.get("rate"),
        rate_before=chosen.get("rate_before"),
        window=[int(steps[0]), int(steps[-1])],
        models=fits,
    )
    return result
