"""The verdict of a summary: what the run did and which claims it supports, in a few clauses.

Pure formatting of the fields `analysis.summarize` computed; no numbers are derived here.
Each claim names its kind: the GD bound and the a-posteriori estimate are estimates for GD
runs and reference values for SGD runs; the a-priori check is a sampled check, not a proof.
"""


def format_rate(rate):
    """Formats a per-step rate readably near 1: 0.9912 → '0.9912', 0.99999997 → '1 − 3e-08'."""
    if rate is None:
        return "n/a"
    gap = 1.0 - rate
    if gap != 0 and abs(gap) < 1e-4:
        return f"1 − {gap:.3g}" if gap > 0 else f"1 + {-gap:.3g}"
    return f"{rate:.6g}"


def format_step_ratio(value):
    """η·β with enough digits to differ from the threshold it is compared with (1 or 2)."""
    digits = 3
    while digits < 8 and value not in (1.0, 2.0) and float(f"{value:.{digits}g}") in (1.0, 2.0):
        digits += 1
    return f"{value:.{digits}g}"


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}g}"


def _linear_phrase(fit):
    rate, r2 = fit["rate"], fit["r2"]
    if rate >= 1.0:
        return f"did not contract (ρ̂ = {format_rate(rate)})"
    if r2 < 0.9:
        return f"fell at ρ̂ = {format_rate(rate)} but not linearly (R² = {r2:.3f})"
    return f"fell linearly at ρ̂ = {format_rate(rate)} (R² = {r2:.3f})"


def _phase_phrase(phases, fit):
    """'the loss fell sublinearly (p = 1.4) until step 130, then linearly at ρ̂ = ...'."""
    if fit["rate"] is None:
        return "too few points above the precision floor to fit a rate"
    model, tau = phases["model"], phases["transition_step"]
    if fit["window_source"] == "settings" or model in (None, "linear"):
        return f"the loss {_linear_phrase(fit)}"
    if model == "sublinear":
        return f"the loss fell sublinearly (g ∝ (1 + t)^−p, p = {_fmt(phases['exponent'])})"
    if model == "sublinear_then_linear":
        before = f"sublinearly (p = {_fmt(phases['exponent'])})"
    else:
        before = f"at ρ₁ = {format_rate(phases['rate_before'])}"
    after = _linear_phrase(fit).removeprefix("fell ")
    return f"the loss fell {before} until step {tau}, then {after}"


def _bound_phrase(bound, sharp, stated):
    """The fitted rate against ρ_bound; `stated` is a reason the verdict already gave."""
    if bound["rate_bound"] is None:
        if not bound["reason"]:
            return ""
        return "no GD bound" if bound["reason"] == stated else f"no GD bound ({bound['reason']})"
    rate_bound = format_rate(bound["rate_bound"])
    if bound["kind"] == "reference":
        phrase = f"the GD bound ρ_bound = {rate_bound} is a reference value only"
    elif bound["holds"] is True:
        phrase = f"within the bound ρ_bound = {rate_bound} (an estimate)"
    elif bound["holds"] is False:
        phrase = (
            f"{len(bound['violations'])} logged contractions exceed the bound "
            f"ρ_bound = {rate_bound} (first at step {bound['violations'][0]})"
        )
    else:
        phrase = f"ρ_bound = {rate_bound}"
    if bound["tightness"] is not None and bound["kind"] != "reference":
        phrase += f", log ρ̂ / log ρ_bound = {bound['tightness']:.3g}"
    if sharp["step_size_ok"] is False:
        phrase += (
            f"; η·β = {format_step_ratio(sharp['eta_times_max'])} > 1 (the bound assumes η ≤ 1/β)"
        )
    return phrase


def _regime_phrase(summary):
    """The opening clause: regime kept, left, or not assessed (and why)."""
    regime, bound, post = summary["regime"], summary["bound"], summary["a_posteriori"]
    sgd = bound["kind"] == "reference"
    if regime["reason"]:
        return f"Local regime not assessed: {regime['reason']}"
    if regime["in_local_regime"] is None:
        return "Local regime not measured (no NTK probes)"
    if not regime["in_local_regime"]:
        return f"Left the local regime at step {regime['left_step']}: {regime['left_reason']}"
    mu = summary["ntk"]["lambda_min_min"]
    kernel = "K_probe" if sgd else "K_t"
    parts = [f"λ_min({kernel}) ≥ {_fmt(mu)} > 0 at every probe"]
    drift = summary["ntk"]["kernel_drift_final"]
    if drift is not None:
        parts.append(f"kernel drift {_fmt(drift)} ≤ {summary['settings']['kernel_drift_bound']:g}")
    if sgd and bound["interlacing_factor"]:
        factor = bound["interlacing_factor"]
        parts.append(
            f"μ of the training set ≤ {_fmt(bound['mu'])} (interlacing, n/m = {factor:.3g})"
        )
    if post["mu_post"] is not None and not sgd:
        sign = "> 0" if post["positive"] else "≤ 0"
        parts.append(f"a-posteriori μ_post = {_fmt(post['mu_post'])} {sign} (secant, not a proof)")
    opening = "SGD run, probe kernel kept positive" if sgd else "Stayed in a locally PL region"
    return f"{opening}: {', '.join(parts)}"


def _extras(summary):
    """Short clauses for the a-priori check, the edge of stability and the linearization."""
    clauses = []
    prior = summary["a_priori"]
    if prior and prior["skipped"]:
        clauses.append(f"a-priori check skipped ({prior['skipped']})")
    elif prior and prior["holds"] is not None:
        failed = []
        if prior["lambda_ok"] is False:
            failed.append(f"λ_min fell to {_fmt(prior['min_lambda_min'])} < μ₀")
        if prior["step_size_ok"] is False:
            failed.append("η > 1/β₀")
        result = "holds" if prior["holds"] else "fails: " + ", ".join(failed)
        clauses.append(
            f"a-priori check at θ₀ on the ball of radius R₀ = {_fmt(prior['radius'])} "
            f"(sampled, not a proof) {result}"
        )
    sharp = summary["sharpness"]
    rise = sharp["progressive_sharpening"]
    if rise["detected"]:
        clauses.append(
            f"progressive sharpening from step {rise['start_step']} to {rise['reached_step']} "
            f"(β {_fmt(rise['sharpness_start'])} → {_fmt(rise['sharpness_reached'])}, "
            f"2/η = {_fmt(rise['threshold'])})"
        )
    if sharp["edge_of_stability"]:
        clauses.append(
            f"η·β reached {format_step_ratio(sharp['eta_times_max'])} ≥ 2 (edge of stability)"
        )
    if sharp["catapult_steps"]:
        steps = ", ".join(str(s) for s in sharp["catapult_steps"])
        clauses.append(f"catapult(s) at step {steps}")
    departure = summary["linearized"]["departure_step"]
    if departure is not None:
        clauses.append(
            f"left the linearized dynamics at step {departure} (‖r_t − r_t^lin‖/‖r_0‖ > "
            f"{summary['linearized']['threshold']:g})"
        )
    return clauses


def verdict_sentence(summary, divergence_loss):
    """A short verdict: the regime, the outcome, the phases and rate, and the bound."""
    status, step = summary["status"], summary["status_step"]
    sharp = summary["sharpness"]
    if status == "diverged":
        why = (
            f"η·β = {format_step_ratio(sharp['eta_times_max'])} ≥ 2, past the edge of stability; "
            if sharp["edge_of_stability"]
            else ""
        )
        cause = (
            "the loss became non-finite"
            if divergence_loss is None
            else f"the loss {_fmt(divergence_loss)} exceeded the bound "
            f"{_fmt(summary['loss_bound'])}"
        )
        return (
            f"Diverged at step {step}: {cause}; {why}no regime, bound or a-posteriori claim "
            "is made."
        )
    outcome = {
        "converged": f"converged at step {step}",
        "max_steps": f"ended at step {summary['steps']} above the tolerance",
        "incomplete": f"stopped at step {summary['steps']} before num_steps",
    }[status]
    clauses = [f"{_regime_phrase(summary)}; the run {outcome}"]
    clauses.append(_phase_phrase(summary["phases"], summary["fit"]))
    bound = _bound_phrase(summary["bound"], sharp, summary["regime"]["reason"])
    if bound:
        clauses.append(bound)
    clauses.extend(_extras(summary))
    return "; ".join(clauses) + "."
