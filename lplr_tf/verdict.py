"""The one-sentence verdict of a summary: did the run stay in a locally PL region, and why.

Pure formatting of the fields `analysis.summarize` computed; no numbers are derived here.
"""


def format_rate(rate):
    """Formats a per-step rate readably near 1: 0.9912 → '0.9912', 0.99999997 → '1 − 3e-08'."""
    if rate is None:
        return "n/a"
    gap = 1.0 - rate
    if gap != 0 and abs(gap) < 1e-4:
        return f"1 − {gap:.3g}" if gap > 0 else f"1 + {-gap:.3g}"
    return f"{rate:.6g}"


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}g}"


def _rate_phrase(fit, bound, sharp):
    """Describes the fitted rate against the bound, e.g. 'loss fell linearly at ρ̂ = 0.99 ...'."""
    if fit["rate"] is None:
        return ""
    rate, r2 = fit["rate"], fit["r2"]
    if rate >= 1.0:
        phrase = f"the loss did not contract (ρ̂ = {format_rate(rate)})"
    elif r2 < 0.9:
        phrase = f"the loss fell at ρ̂ = {format_rate(rate)} but not linearly (R² = {r2:.3f})"
    else:
        phrase = f"the loss fell linearly at ρ̂ = {format_rate(rate)} (R² = {r2:.3f})"
    if bound["holds"] is True:
        phrase += f", within the bound ρ_bound = {format_rate(bound['rate_bound'])}"
    elif bound["holds"] is False:
        phrase += (
            f", but {len(bound['violations'])} logged contractions exceed the bound "
            f"ρ_bound = {format_rate(bound['rate_bound'])} "
            f"(first at step {bound['violations'][0]})"
        )
    if sharp["step_size_ok"] is False:
        phrase += f", with η·β = {sharp['eta_times_max']:.3g} > 1 (the bound assumes η ≤ 1/β)"
    return phrase


def verdict_sentence(summary, divergence_loss):
    """One sentence: did the run stay in a locally PL region, and why."""
    status, step = summary["status"], summary["status_step"]
    fit, bound, cert = summary["fit"], summary["bound"], summary["certificate"]
    sharp = summary["sharpness"]
    rate = _rate_phrase(fit, bound, sharp)
    if status == "diverged":
        why = (
            f"η·β = {sharp['eta_times_max']:.3g} ≥ 2, past the edge of stability; "
            if sharp["edge_of_stability"]
            else ""
        )
        cause = (
            "the loss became non-finite"
            if divergence_loss is None
            else f"the loss {_fmt(divergence_loss)} exceeded the bound "
            f"{_fmt(summary['loss_bound'])}"
        )
        return f"Diverged at step {step}: {cause}; {why}no locally PL region was kept."
    outcome = {
        "converged": f"converged at step {step}",
        "max_steps": f"ended at step {summary['steps']} above the tolerance",
        "incomplete": f"stopped at step {summary['steps']} before num_steps",
    }[status]
    tail = f"; {rate}" if rate else "; too few points above the precision floor to fit a rate"
    if cert["in_local_regime"] is None:
        return f"Local regime not measured (no NTK probes); the run {outcome}{tail}."
    if not cert["in_local_regime"]:
        return (
            f"Left the local regime at step {cert['left_step']}: {cert['left_reason']}; "
            f"the run {outcome}{tail}."
        )
    drift = summary["ntk"]["kernel_drift_final"]
    parts = [f"λ_min(K_t) ≥ {_fmt(bound['mu'])} > 0 at every probe"]
    if drift is not None:
        parts.append(f"kernel drift {_fmt(drift)} ≤ {summary['settings']['kernel_drift_bound']:g}")
    if cert["mu_cert"] is not None:
        relation = "> 0" if cert["certified"] else "≤ 0, not certified by Weyl's bound"
        parts.append(f"certificate μ_cert = {_fmt(cert['mu_cert'])} {relation}")
    return f"Stayed in a locally PL region: {', '.join(parts)}; the run {outcome}{tail}."
