"""GD rate bounds, their check against the logged losses, and the a-posteriori estimate.

Pure functions of the metric rows and of numbers the analysis already extracted. Notation
of docs/theory.md: g_t = L_t − L*, K_t = Θ_t / n, μ = min over probes of λ_min(K_t),
β_max = max over probes of the sharpness β_t, q_env the lower envelope of the PL ratio on
the rate-fit window, η the step size.

* ρ_bound = 1 − ημ: the GD theorem's rate (it assumes η ≤ 1/β along the path).
* ρ_descent = 1 − η(2 − ηβ_max)·μ: the descent lemma g_{t+1} ≤ (1 − η(2 − ηβ)q_t)·g_t with
  q_t ≥ μ; valid when ηβ_max < 2, and tighter than ρ_bound when ηβ_max < 1.
* ρ_envelope = 1 − η(2 − ηβ_max)·q_env: the same with the measured PL envelope.
* tightness = log ρ̂ / log ρ_bound: how many times faster than the bound the loss fell.

μ and β are measured at probes only, so every bound here is an estimate. The a-posteriori
quantity μ_post = λ_min(K_0) − L̂_Θ·max_t d_t uses the secant L̂_Θ = max_t ‖K_t − K_0‖₂/d_t
along the trajectory, a lower estimate of the NTK's Lipschitz constant: a positive μ_post is
evidence for a locally PL region, not a proof of one.
"""

import math

from lplr_tf.values import finite

BOUND_RELATIVE_SLACK = 1e-4
# η·β ≤ 1 is judged with this relative slack: β is a float32 Lanczos value, and a run with
# η = 1/β₀ measures β₀ again (the a-priori check, the step-0 probe) to within ~1e-6, so
# without it η = 1/β₀ itself would "violate" η ≤ 1/β₀.
STEP_SIZE_RELATIVE_SLACK = 1e-4
A_POSTERIORI_NOTE = "secant Lipschitz estimate along the trajectory: evidence, not a proof"


def step_size_ok(learning_rate, sharpness):
    """η·β ≤ 1 (within STEP_SIZE_RELATIVE_SLACK): the step-size hypothesis of ρ_bound."""
    return learning_rate * sharpness <= 1.0 + STEP_SIZE_RELATIVE_SLACK


def series(rows, key):
    """Returns [(step, value)] for the rows where `key` holds a finite number."""
    pairs = []
    for row in rows:
        value = finite(row.get(key))
        if value is not None:
            pairs.append((int(row["step"]), value))
    return pairs


def _descent_factor(learning_rate, beta_max):
    """η(2 − ηβ_max), or None when β was not measured or ηβ_max ≥ 2 (no descent lemma)."""
    if beta_max is None or learning_rate * beta_max >= 2.0:
        return None
    return learning_rate * (2.0 - learning_rate * beta_max)


def rate_bounds(*, learning_rate, mu, beta_max, pl_envelope, fitted_rate):
    """The three GD rate bounds and the tightness of the fitted rate (module docstring).

    Args:
      learning_rate: η > 0.
      mu: μ = min over probes of λ_min(K_t), or None.
      beta_max: max over probes of the sharpness β_t, or None.
      pl_envelope: the lower envelope q_env of the PL ratio on the fit window, or None.
      fitted_rate: ρ̂ of the rate fit, or None.

    Returns:
      Dict rate_bound, rate_descent, rate_envelope, descent_valid (ηβ_max < 2; None when β
      was not measured), step_size_ok (ηβ_max ≤ 1, the hypothesis of ρ_bound), tightness.
      A value is None when an input it needs is None or its hypothesis fails.
    """
    factor = _descent_factor(learning_rate, beta_max)
    rate_bound = None if mu is None else 1.0 - learning_rate * mu
    tightness = None
    if rate_bound is not None and fitted_rate is not None:
        if 0.0 < fitted_rate < 1.0 and 0.0 < rate_bound < 1.0:
            tightness = math.log(fitted_rate) / math.log(rate_bound)
    return {
        "rate_bound": rate_bound,
        "rate_descent": None if factor is None or mu is None else 1.0 - factor * mu,
        "rate_envelope": (
            None if factor is None or pl_envelope is None else 1.0 - factor * pl_envelope
        ),
        "descent_valid": None if beta_max is None else learning_rate * beta_max < 2.0,
        "step_size_ok": None if beta_max is None else step_size_ok(learning_rate, beta_max),
        "tightness": tightness,
    }


def bound_violations(points, rate_bound):
    """The steps t₂ whose contraction from the previous point beats ρ_bound.

    Args:
      points: [(step, g)] with g above the precision floor, sorted by step.
      rate_bound: ρ_bound; clamped at 0 (η·μ > 1: the theorem's step-size hypothesis fails).

    Returns:
      The steps t₂ with g_{t₂}/g_{t₁} > max(ρ_bound, 0)^{t₂ − t₁}·(1 + BOUND_RELATIVE_SLACK).
    """
    per_step = max(rate_bound, 0.0)
    violations = []
    for (step1, gap1), (step2, gap2) in zip(points, points[1:]):
        allowed = per_step ** (step2 - step1) * (1.0 + BOUND_RELATIVE_SLACK)
        if gap2 / gap1 > allowed:
            violations.append(step2)
    return violations


def local_regime(rows, kernel_drift_bound):
    """Whether every probe kept λ_min(K_t) > 0 and the relative kernel drift ≤ the bound.

    Returns:
      (in_local_regime, first failing step, reason); (None, None, None) without probes.
    """
    lambda_min = dict(series(rows, "ntk_lambda_min"))
    kernel_drift = dict(series(rows, "kernel_drift"))
    if not lambda_min and not kernel_drift:
        return None, None, None
    for step in sorted(set(lambda_min) | set(kernel_drift)):
        if step in lambda_min and lambda_min[step] <= 0:
            return False, step, f"λ_min(K_t) = {lambda_min[step]:.3g} ≤ 0"
        if step in kernel_drift and kernel_drift[step] > kernel_drift_bound:
            return False, step, f"kernel drift {kernel_drift[step]:.3g} > {kernel_drift_bound:g}"
    return True, None, None


def a_posteriori(rows):
    """μ_post = λ_min(K_0) − L̂_Θ·max_t d_t with the secant L̂_Θ (module docstring).

    Returns:
      Dict lambda0, lipschitz_estimate (L̂_Θ; 0 when the kernel never moved), radius
      (max_t d_t), mu_post, positive (μ_post > 0), note. None where not measured.
    """
    lambda_min = series(rows, "ntk_lambda_min")
    drifts = dict(series(rows, "drift"))
    operator_drift = series(rows, "kernel_drift_op")
    lambda0 = lambda_min[0][1] if lambda_min else None
    lipschitz = None
    if operator_drift:
        ratios = [d / drifts[s] for s, d in operator_drift if drifts.get(s, 0.0) > 0]
        lipschitz = max(ratios) if ratios else 0.0
        if all(d == 0.0 for _, d in operator_drift):
            lipschitz = 0.0
    radius = max(drifts.values()) if drifts else None
    mu_post = None
    if lambda0 is not None and lipschitz is not None and radius is not None:
        mu_post = lambda0 - lipschitz * radius
    return {
        "lambda0": lambda0,
        "lipschitz_estimate": lipschitz,
        "radius": radius,
        "mu_post": mu_post,
        "positive": None if mu_post is None else bool(mu_post > 0),
        "note": A_POSTERIORI_NOTE,
    }


def pl_constant(rows, *, train_size=None, probe_size=None):
    """μ of the training set, from the best measurement the rows hold.

    Rows with `train_ntk_lambda_min` (λ_min of K on the full training set) give μ directly.
    Otherwise μ comes from the probe kernel's `ntk_lambda_min`; when the probe set is a
    subset (m < n examples), Θ_probe is a principal submatrix of Θ and Cauchy interlacing
    gives λ_min(K_train) ≤ (m/n)·λ_min(K_probe), so μ is reported as that upper value.

    Returns:
      Dict mu, mu_source ("training set", "probe set" or "probe subset, interlacing upper
      value"), mu_probe (min λ_min(K_probe)), interlacing_factor (n/m, or None).
    """
    train = [v for _, v in series(rows, "train_ntk_lambda_min")]
    probe = [v for _, v in series(rows, "ntk_lambda_min")]
    mu_probe = min(probe) if probe else None
    factor = None
    if train_size and probe_size and probe_size < train_size:
        factor = train_size / probe_size
    if train:
        return {
            "mu": min(train),
            "mu_source": "training set",
            "mu_probe": mu_probe,
            "interlacing_factor": factor,
        }
    if factor is None or mu_probe is None:
        return {
            "mu": mu_probe,
            "mu_source": None if mu_probe is None else "probe set",
            "mu_probe": mu_probe,
            "interlacing_factor": factor,
        }
    return {
        "mu": mu_probe / factor,
        "mu_source": "probe subset, interlacing upper value (m/n)·λ_min(K_probe)",
        "mu_probe": mu_probe,
        "interlacing_factor": factor,
    }
