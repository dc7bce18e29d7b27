"""NumPy re-derivations of the summary's fits from docs/theory.md §2, for the tests.

Written from the formulas, not from lplr_tf/phases.py: the phase models are fitted by
`np.linalg.lstsq` for every admissible τ, selected by BIC with the documented RSS floor, and
the rate fit's standard error and Student-t interval follow the textbook least-squares
formulas. Inputs are (steps, g) arrays, g_t = L_t − L* > 0.
"""

import math

import numpy as np
from scipy import stats

RSS_FLOOR_PER_POINT = 1e-12  # docs/theory.md: RSS floored at m·10⁻¹²
MIN_SIDE_POINTS = 3
TRANSIENT_FRACTION = 0.25


def line_fit(steps, gaps):
    """log g = a + t·log ρ by least squares: dict rate, r2, std_error (of log ρ), interval."""
    steps = np.asarray(steps, np.float64)
    logs = np.log(np.asarray(gaps, np.float64))
    design = np.stack([np.ones_like(steps), steps], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, logs, rcond=None)
    rss = float(np.sum((logs - intercept - slope * steps) ** 2))
    tss = float(np.sum((logs - logs.mean()) ** 2))
    m = steps.size
    std_error = math.sqrt(rss / (m - 2) / np.sum((steps - steps.mean()) ** 2))
    half = stats.t.ppf(0.975, m - 2) * std_error
    return {
        "rate": math.exp(slope),
        "r2": 1.0 - rss / tss,
        "std_error": std_error,
        "interval": [math.exp(slope - half), math.exp(slope + half)],
    }


def _design(model, steps, tau):
    ones = np.ones_like(steps)
    before, after = np.minimum(steps, tau), np.maximum(steps - tau, 0.0)
    return {
        "linear": [ones, steps],
        "sublinear": [ones, -np.log1p(steps)],
        "sublinear_then_linear": [ones, -np.log1p(before), after],
        "two_rate": [ones, before, after],
    }[model]


def phase_models(steps, gaps):
    """Every phase model's best fit: {model: (rss, bic, coefficients, τ)} and the selection."""
    steps = np.asarray(steps, np.float64)
    logs = np.log(np.asarray(gaps, np.float64))
    m = steps.size
    taus = [
        tau
        for tau in steps
        if np.sum(steps <= tau) >= MIN_SIDE_POINTS and np.sum(steps >= tau) >= MIN_SIDE_POINTS
    ]
    fits = {}
    models = (("linear", 2), ("sublinear", 2), ("sublinear_then_linear", 4), ("two_rate", 4))
    for model, k in models:
        best = None
        for tau in [None] if k == 2 else taus:
            design = np.stack(_design(model, steps, 0.0 if tau is None else tau), axis=1)
            coefficients, *_ = np.linalg.lstsq(design, logs, rcond=None)
            rss = float(np.sum((logs - design @ coefficients) ** 2))
            if best is None or rss < best[0]:
                best = (rss, coefficients, tau)
        if best is None:
            continue
        rss, coefficients, tau = best
        bic = m * math.log(max(rss, m * RSS_FLOOR_PER_POINT) / m) + k * math.log(m)
        fits[model] = {"rss": rss, "bic": bic, "coefficients": coefficients, "tau": tau}
    selected = min(fits, key=lambda name: fits[name]["bic"])  # first of equals: the simpler
    return fits, selected


def rate_window(steps, selected_tau):
    """The automatic rate-fit window's steps: [τ, end] after a transition, else the points
    without the first quarter of their step span (all of them if fewer than three remain)."""
    steps = np.asarray(steps, np.float64)
    if selected_tau is not None:
        return steps[steps >= selected_tau]
    cutoff = steps[0] + TRANSIENT_FRACTION * (steps[-1] - steps[0])
    kept = steps[steps >= cutoff]
    return kept if kept.size >= 3 else steps
