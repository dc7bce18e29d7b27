"""Which claims a summary makes from a run, and of which kind.

The analysis computes numbers; this module decides what they may claim, from the facts
about the run (`summarize(..., run=...)`) and its status:

* kind: "measured" (read off the logged rows), "estimate" (derived from probes, which see
  only some steps: μ, β, the GD bounds, the a-posteriori μ_post), "reference" (a theorem
  about full-batch GD, shown for an SGD run and not claimed). The a-priori check carries
  its own kind, "sampled check, not a proof".
* Trace kernel: with `ntk_output_mode = "trace"` and O ≠ 1 outputs (or O unknown), the
  output-averaged n × n kernel is not the theory's nO × nO kernel: μ, the bounds, the
  a-posteriori estimate, the regime check and the Gauss–Newton sharpness are null, with
  the reason.
* Diverged run: no regime, bound-check or a-posteriori claim (null, with the reason).
* SGD run: the GD bounds and the a-posteriori estimate are reference values; μ comes from
  the training-set kernel when the rows carry `train_ntk_lambda_min`, else from the probe
  subset with the interlacing factor n/m (`bounds.pl_constant`).
"""

import typing

from lplr_tf import bounds

PROTOCOLS = ("gd", "sgd")
OUTPUT_MODES = ("full", "trace")
MEASURED, ESTIMATE, REFERENCE = "measured", "estimate", "reference"

# Keys of the bound section that a trace kernel with O ≠ 1 cannot support.
_KERNEL_BOUND_KEYS = (
    "mu",
    "mu_source",
    "mu_probe",
    "rate_bound",
    "rate_descent",
    "rate_envelope",
    "tightness",
)
_A_PRIORI_KEYS = (
    "holds",
    "lambda_ok",
    "step_size_ok",
    "lambda0",
    "mu0",
    "beta0",
    "radius",
    "min_lambda_min",
    "lipschitz_ball",
    "num_samples",
    "skipped",
    "kind",
)


class Reasons(typing.NamedTuple):
    """Why claims are withheld (None: no reason). `sgd` makes values references instead."""

    kernel: str | None
    diverged: str | None
    sgd: str | None


def run_facts(run):
    """Checks the optional facts about the run; returns them as a dict ({} for None).

    Raises:
      ValueError: `run` is not a dict, or names an unknown protocol or NTK output mode.
    """
    if run is None:
        return {}
    if not isinstance(run, dict):
        raise ValueError(
            f"summarize: run={run!r}; expected None or a dict of facts about the run "
            "(protocol, ntk_output_mode, num_outputs, train_size, probe_size, ...)."
        )
    for key, allowed in (("protocol", PROTOCOLS), ("ntk_output_mode", OUTPUT_MODES)):
        if run.get(key) is not None and run[key] not in allowed:
            raise ValueError(
                f"summarize: run[{key!r}] = {run[key]!r}; expected one of {allowed}. "
                f"Record the run's {key} as the experiment configured it."
            )
    return run


def reasons(facts, diverged_step):
    """The reasons that withhold or qualify claims for this run (module docstring)."""
    kernel = None
    if facts.get("ntk_output_mode", "full") == "trace" and facts.get("num_outputs") != 1:
        outputs = facts.get("num_outputs")
        count = f"O = {outputs} outputs" if outputs else "an unknown number of outputs O"
        kernel = (
            f"the NTK was measured in trace mode (output-averaged, n × n) with {count}; μ, "
            "the bounds, the a-posteriori estimate and the Gauss–Newton sharpness need the "
            "full nO × nO kernel"
        )
    diverged = None
    if diverged_step is not None:
        diverged = (
            f"the run diverged at step {diverged_step}: no regime, bound or a-posteriori "
            "claim is made"
        )
    sgd = None
    if facts.get("protocol", "gd") == "sgd":
        sgd = (
            "SGD run: the bounds and the a-posteriori estimate are theorems about full-batch "
            "GD, shown as reference values"
        )
    return Reasons(kernel, diverged, sgd)


def bound_section(rows, learning_rate, facts, fit, envelope, beta_max, check_points, why):
    """The `bound` section: μ, ρ_bound, ρ_descent, ρ_envelope, tightness, the bound check.

    Args:
      rows: Metric rows sorted by step.
      learning_rate: η.
      facts: The checked `run` facts (train_size and probe_size set the interlacing).
      fit: The rate fit (`phases.fit_rate`); its ρ̂ gives the tightness.
      envelope: q_env, the lower envelope of the PL ratio on the fit window.
      beta_max: The largest sharpness measured at a probe.
      check_points: The (step, g) points of the bound check.
      why: The `Reasons` of this run.
    """
    mu = bounds.pl_constant(
        rows, train_size=facts.get("train_size"), probe_size=facts.get("probe_size")
    )
    rates = bounds.rate_bounds(
        learning_rate=learning_rate,
        mu=mu["mu"],
        beta_max=beta_max,
        pl_envelope=envelope,
        fitted_rate=fit["rate"],
    )
    section = {
        **mu,
        **rates,
        "fitted_rate": fit["rate"],
        "holds": None,
        "violations": None,
        "relative_slack": bounds.BOUND_RELATIVE_SLACK,
        "kind": REFERENCE if why.sgd else ESTIMATE,
        "reason": why.sgd,
    }
    if why.kernel:
        section.update(dict.fromkeys(_KERNEL_BOUND_KEYS), reason=why.kernel)
    elif why.diverged:
        section.update(tightness=None, reason=why.diverged)
    elif section["rate_bound"] is not None:
        violations = bounds.bound_violations(check_points, section["rate_bound"])
        section.update(holds=not violations, violations=violations)
    return section


def a_posteriori_section(rows, why):
    """The `a_posteriori` section: μ_post with the secant L̂_Θ (`bounds.a_posteriori`)."""
    section = {**bounds.a_posteriori(rows), "kind": REFERENCE if why.sgd else ESTIMATE}
    section["reason"] = why.sgd
    if why.kernel:
        numbers = ("lambda0", "lipschitz_estimate", "radius", "mu_post", "positive")
        section.update(dict.fromkeys(numbers), reason=why.kernel)
    elif why.diverged:
        section.update(positive=None, reason=why.diverged)
    return section


def regime_section(rows, kernel_drift_bound, why):
    """The `regime` section: λ_min(K_t) > 0 and kernel drift ≤ bound at every probe."""
    in_regime, left_step, left_reason = bounds.local_regime(rows, kernel_drift_bound)
    reason = why.kernel or why.diverged
    if reason:
        in_regime, left_step, left_reason = None, None, None
    return {
        "in_local_regime": in_regime,
        "left_step": left_step,
        "left_reason": left_reason,
        "kind": MEASURED,
        "reason": reason,
    }


def a_priori_section(check, why):
    """The summary's digest of the a-priori check (its full dict stays in `run`), or None."""
    if not check:
        return None
    section = {key: check.get(key) for key in _A_PRIORI_KEYS}
    section["reason"] = why.kernel or why.sgd
    if why.kernel:
        section["holds"] = None
    return section
