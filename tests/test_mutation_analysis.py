"""Tests that kill mutants of the pure analysis modules (scripts/mutation_score.py).

Each test pins a number, a boundary or a text that a small change of the code would alter
and that the other tests let pass: the exact wording of every bad-input message and verdict
clause, each `<` against `<=` at the documented thresholds (tolerance, divergence bound,
precision floor, η·β = 1 and 2, kernel-drift bound, linearized threshold, spike level), and
the exact keys and values of each summary section in the diverged, trace-kernel and SGD cases.
"""

import math

import numpy as np
import pytest

from lplr_tf import analysis, bounds, claims, phases, stability, tables, verdict
from lplr_tf.values import finite, json_safe

SETTINGS = analysis.Settings


def _message(call):
    with pytest.raises(ValueError) as error:
        call()
    return str(error.value)


@pytest.mark.parametrize(
    "call, expected",
    [
        (
            lambda: analysis.summarize([], learning_rate=0.1),
            "summarize: rows=[] (empty history); expected at least one metrics row with `step` "
            "and `loss`. Check that metrics.jsonl was written.",
        ),
        (
            lambda: analysis.summarize([{"step": 0}, {"loss": 1.0}], learning_rate=0.1),
            "summarize: a row has no `step`; expected every metrics row to carry its integer "
            "step. Fix the metric writer or drop that row.",
        ),
        (
            lambda: analysis.summarize([{"step": None, "loss": 1.0}], learning_rate=0.1),
            "summarize: a row has no `step`; expected every metrics row to carry its integer "
            "step. Fix the metric writer or drop that row.",
        ),
        (
            lambda: analysis.summarize([{"step": 0, "loss": 1.0}], learning_rate=-1.0),
            "summarize: learning_rate=-1.0; expected a positive step size η. Pass the run's "
            "learning rate.",
        ),
        (
            lambda: analysis.summarize([{"step": 0, "loss": 1.0}], learning_rate=float("nan")),
            "summarize: learning_rate=nan; expected a positive step size η. Pass the run's "
            "learning rate.",
        ),
        (
            lambda: SETTINGS(l_star=1.0, tolerance=0.5, loss_bound=1.5),
            "analysis.Settings.loss_bound = 1.5 is not above l_star + tolerance = 1.5: every "
            "loss would count as diverged and converged at once. Raise loss_bound, or set it "
            "to None for the default 1e6 × max(L_0, tolerance).",
        ),
        (
            lambda: SETTINGS(kernel_drift_bound=0.0),
            "analysis.Settings.kernel_drift_bound = 0.0; expected a finite number > 0. Fix the "
            "binding, e.g. analysis.Settings.kernel_drift_bound = 0.5.",
        ),
        (
            lambda: SETTINGS(fit_window=(1, 2, 3)),
            "analysis.Settings.fit_window = (1, 2, 3); expected (first_step, last_step), two "
            "integers >= 0, or None for the automatic window. Fix the binding, e.g. "
            "analysis.Settings.fit_window = (100, 500).",
        ),
        (
            lambda: SETTINGS(fit_window=(-1, 2)),
            "analysis.Settings.fit_window = (-1, 2); expected (first_step, last_step), two "
            "integers >= 0, or None for the automatic window. Fix the binding, e.g. "
            "analysis.Settings.fit_window = (100, 500).",
        ),
        (
            lambda: SETTINGS(fit_window=(True, 2)),
            "analysis.Settings.fit_window = (True, 2); expected (first_step, last_step), two "
            "integers >= 0, or None for the automatic window. Fix the binding, e.g. "
            "analysis.Settings.fit_window = (100, 500).",
        ),
        (
            lambda: SETTINGS(fit_window=(0, 2.5)),
            "analysis.Settings.fit_window = (0, 2.5); expected (first_step, last_step), two "
            "integers >= 0, or None for the automatic window. Fix the binding, e.g. "
            "analysis.Settings.fit_window = (100, 500).",
        ),
        (
            lambda: SETTINGS(fit_window=(5, 2)),
            "analysis.Settings.fit_window = (5, 2); expected first_step <= last_step. Swap "
            "them: analysis.Settings.fit_window = (2, 5).",
        ),
        (
            lambda: claims.run_facts(["gd"]),
            "summarize: run=['gd']; expected None or a dict of facts about the run (protocol, "
            "ntk_output_mode, num_outputs, train_size, probe_size, ...).",
        ),
        (
            lambda: claims.run_facts({"protocol": "adam"}),
            "summarize: run['protocol'] = 'adam'; expected one of ('gd', 'sgd'). Record the "
            "run's protocol as the experiment configured it.",
        ),
        (
            lambda: claims.run_facts({"ntk_output_mode": "diag"}),
            "summarize: run['ntk_output_mode'] = 'diag'; expected one of ('full', 'trace'). "
            "Record the run's ntk_output_mode as the experiment configured it.",
        ),
    ],
)
def test_bad_input_messages_are_exact(call, expected):
    assert _message(call) == expected


def test_settings_are_normalized_and_round_trip():
    settings = SETTINGS(
        l_star=1, tolerance=0, loss_bound=3, kernel_drift_bound=2, fit_window=[1, 9]
    )
    assert settings.l_star == 1.0 and isinstance(settings.l_star, float)
    assert settings.tolerance == 0.0 and isinstance(settings.tolerance, float)
    assert settings.loss_bound == 3.0 and isinstance(settings.loss_bound, float)
    assert settings.kernel_drift_bound == 2.0 and isinstance(settings.kernel_drift_bound, float)
    assert settings.fit_window == (1, 9)
    stored = settings.as_dict()
    assert stored == {
        "l_star": 1.0,
        "tolerance": 0.0,
        "loss_bound": 3.0,
        "fit_window": [1, 9],
        "kernel_drift_bound": 2.0,
        "linearized_threshold": 0.1,
    }
    assert SETTINGS.from_dict({**stored, "learning_rate": 0.5}) == settings
    assert SETTINGS(loss_bound=None).loss_bound is None
    assert SETTINGS(fit_window=(0, 0)).fit_window == (0, 0)


def test_claims_reasons_are_exact():
    why = claims.reasons({"ntk_output_mode": "trace", "num_outputs": 3, "protocol": "sgd"}, 40)
    assert why.kernel == (
        "the NTK was measured in trace mode (output-averaged, n × n) with O = 3 outputs; μ, the "
        "bounds, the a-posteriori estimate and the Gauss–Newton sharpness need the full nO × nO "
        "kernel"
    )
    assert why.diverged == (
        "the run diverged at step 40: no regime, bound or a-posteriori claim is made"
    )
    assert why.sgd == (
        "SGD run: the bounds and the a-posteriori estimate are theorems about full-batch GD, "
        "shown as reference values"
    )
    unknown = claims.reasons({"ntk_output_mode": "trace"}, None)
    assert "with an unknown number of outputs O; μ" in unknown.kernel
    assert unknown.diverged is None and unknown.sgd is None
    assert claims.reasons({}, None) == (None, None, None)
    assert claims.reasons({"ntk_output_mode": "trace", "num_outputs": 1}, None).kernel is None
    assert claims.reasons({"ntk_output_mode": "full", "num_outputs": 3}, None).kernel is None
    assert claims.reasons({"protocol": "gd"}, 0).diverged.startswith("the run diverged at step 0")


# --- verdict: every clause, from one base summary varied field by field -------------------

A_PRIORI = {
    "holds": True,
    "lambda_ok": True,
    "step_size_ok": True,
    "lambda0": 0.2,
    "mu0": 0.1,
    "beta0": 2.0,
    "radius": 31.6,
    "min_lambda_min": 0.15,
    "lipschitz_ball": 0.01,
    "num_samples": 9,
    "skipped": None,
    "kind": "sampled check, not a proof",
}


def _probe_history(**extra):
    """Probe rows every 10 steps to 100: L = 0.97^t, drifts growing linearly, fixed spectra."""
    return [
        {
            "step": step,
            "loss": 0.97**step,
            "drift": 0.01 * index,
            "ntk_lambda_min": 0.2,
            "kernel_drift": 0.01 * index,
            "kernel_drift_op": 0.001 * index,
            "sharpness": 2.0,
            **extra,
        }
        for index, step in enumerate(range(0, 101, 10))
    ]


def _base_summary():
    rows = _probe_history(ntk_lambda_max=2.0)
    run = {"protocol": "gd", "ntk_output_mode": "full", "num_outputs": 1, "a_priori": A_PRIORI}
    return analysis.summarize(rows, learning_rate=0.1, settings=SETTINGS(tolerance=1e-12), run=run)


def _varied(**sections):
    summary = _base_summary()
    for key, value in sections.items():
        if isinstance(value, dict):
            summary[key].update(value)
        else:
            summary[key] = value
    return summary


def _variants():
    prior_fails = {"holds": False, "lambda_ok": False, "step_size_ok": False}
    skipped = {"skipped": "λ_min(K₀) = -1e-08 ≤ 0: no PL constant at θ₀"}
    return {
        "stayed": _varied(),
        "converged": _varied(status="converged", status_step=90),
        "incomplete": _varied(status="incomplete"),
        "left": _varied(
            regime={
                "in_local_regime": False,
                "left_step": 30,
                "left_reason": "λ_min(K_t) = -0.01 ≤ 0",
            }
        ),
        "no_probes": _varied(regime={"in_local_regime": None}),
        "not_assessed": _varied(
            regime={"reason": "a reason"}, bound={"rate_bound": None, "reason": "a reason"}
        ),
        "no_bound_other": _varied(bound={"rate_bound": None, "reason": "other"}),
        "no_bound_silent": _varied(bound={"rate_bound": None, "reason": None}),
        "violations": _varied(bound={"holds": False, "violations": [40, 50]}),
        "bound_unchecked": _varied(bound={"holds": None, "tightness": None}),
        "step_too_large": _varied(sharpness={"step_size_ok": False, "eta_times_max": 1.5}),
        "sgd": _varied(bound={"kind": "reference", "interlacing_factor": 4.0, "mu": 0.05}),
        "sgd_full_probe": _varied(bound={"kind": "reference", "interlacing_factor": None}),
        "no_kernel_drift": _varied(ntk={"kernel_drift_final": None}),
        "mu_post_negative": _varied(a_posteriori={"mu_post": -0.3, "positive": False}),
        "no_mu_post": _varied(a_posteriori={"mu_post": None}),
        "no_fit": _varied(fit={"rate": None}),
        "no_contraction": _varied(fit={"rate": 1.0000001}),
        "not_linear": _varied(fit={"r2": 0.5}),
        "sublinear": _varied(phases={"model": "sublinear", "exponent": 1.23456}),
        "sublinear_then_linear": _varied(
            phases={"model": "sublinear_then_linear", "exponent": 0.9, "transition_step": 40}
        ),
        "two_rate": _varied(
            phases={"model": "two_rate", "rate_before": 0.9, "transition_step": 40}
        ),
        "settings_window": _varied(
            phases={"model": "two_rate", "rate_before": 0.9, "transition_step": 40},
            fit={"window_source": "settings"},
        ),
        "a_priori_fails": _varied(a_priori={**prior_fails, "min_lambda_min": 0.01}),
        "a_priori_skipped": _varied(a_priori=skipped),
        "no_a_priori": _varied(a_priori=None),
        "a_priori_withheld": _varied(a_priori={"holds": None}),
        "sharpening": _varied(),
        "edge": _varied(
            sharpness={"edge_of_stability": True, "eta_times_max": 2.2, "catapult_steps": [40, 70]}
        ),
        "departure": _varied(linearized={"departure_step": 30}),
        "diverged_nan": _varied(status="diverged", status_step=60),
        "diverged_edge": _varied(
            status="diverged",
            status_step=60,
            sharpness={"edge_of_stability": True, "eta_times_max": 2.5},
        ),
    }


VERDICTS = {
    "stayed": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check "
        "at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "converged": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run converged at "
        "step 90; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within the bound ρ_bound "
        "= 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check at θ₀ on the ball "
        "of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "incomplete": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run stopped at step "
        "100 before num_steps; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within the "
        "bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check at "
        "θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "left": (
        "Left the local regime at step 30: λ_min(K_t) = -0.01 ≤ 0; the run ended at step 100 "
        "above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within the "
        "bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check at "
        "θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "no_probes": (
        "Local regime not measured (no NTK probes); the run ended at step 100 above the "
        "tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within the bound "
        "ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check at θ₀ on "
        "the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "not_assessed": (
        "Local regime not assessed: a reason; the run ended at step 100 above the tolerance; "
        "the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); no GD bound; a-priori check at θ₀ "
        "on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "no_bound_other": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); no GD "
        "bound (other); a-priori check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a "
        "proof) holds."
    ),
    "no_bound_silent": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); a-priori "
        "check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "violations": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); 2 logged "
        "contractions exceed the bound ρ_bound = 0.98 (first at step 40), log ρ̂ / log "
        "ρ_bound = 1.51; a-priori check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a "
        "proof) holds."
    ),
    "bound_unchecked": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); ρ_bound = "
        "0.98; a-priori check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) "
        "holds."
    ),
    "step_too_large": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; η·β = 1.5 > 1 "
        "(the bound assumes η ≤ 1/β); a-priori check at θ₀ on the ball of radius R₀ = 31.6 "
        "(sampled, not a proof) holds."
    ),
    "sgd": (
        "SGD run, probe kernel kept positive: λ_min(K_probe) ≥ 0.2 > 0 at every probe, kernel "
        "drift 0.1 ≤ 0.5, μ of the training set ≤ 0.05 (interlacing, n/m = 4); the run ended "
        "at step 100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); "
        "the GD bound ρ_bound = 0.98 is a reference value only; a-priori check at θ₀ on the "
        "ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "sgd_full_probe": (
        "SGD run, probe kernel kept positive: λ_min(K_probe) ≥ 0.2 > 0 at every probe, kernel "
        "drift 0.1 ≤ 0.5; the run ended at step 100 above the tolerance; the loss fell "
        "linearly at ρ̂ = 0.97 (R² = 1.000); the GD bound ρ_bound = 0.98 is a reference value "
        "only; a-priori check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) "
        "holds."
    ),
    "no_kernel_drift": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, a-posteriori "
        "μ_post = 0.19 > 0 (secant, not a proof); the run ended at step 100 above the "
        "tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within the bound "
        "ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check at θ₀ on "
        "the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "mu_post_negative": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = -0.3 ≤ 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check "
        "at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "no_mu_post": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5; the run ended at step 100 above the tolerance; the loss fell linearly at ρ̂ = "
        "0.97 (R² = 1.000); within the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log "
        "ρ_bound = 1.51; a-priori check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a "
        "proof) holds."
    ),
    "no_fit": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; too few points above the precision floor to fit a rate; "
        "within the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori "
        "check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "no_contraction": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss did not contract (ρ̂ = 1 + 1e-07); within the "
        "bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check at "
        "θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "not_linear": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell at ρ̂ = 0.97 but not linearly (R² = 0.500); "
        "within the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori "
        "check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "sublinear": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell sublinearly (g ∝ (1 + t)^−p, p = 1.23); "
        "within the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori "
        "check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "sublinear_then_linear": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell sublinearly (p = 0.9) until step 40, then "
        "linearly at ρ̂ = 0.97 (R² = 1.000); within the bound ρ_bound = 0.98 (an estimate), "
        "log ρ̂ / log ρ_bound = 1.51; a-priori check at θ₀ on the ball of radius R₀ = 31.6 "
        "(sampled, not a proof) holds."
    ),
    "two_rate": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell at ρ₁ = 0.9 until step 40, then linearly at "
        "ρ̂ = 0.97 (R² = 1.000); within the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log "
        "ρ_bound = 1.51; a-priori check at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a "
        "proof) holds."
    ),
    "settings_window": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check "
        "at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds."
    ),
    "a_priori_fails": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check "
        "at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) fails: λ_min fell to "
        "0.01 < μ₀, η > 1/β₀."
    ),
    "a_priori_skipped": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check "
        "skipped (λ_min(K₀) = -1e-08 ≤ 0: no PL constant at θ₀)."
    ),
    "no_a_priori": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51."
    ),
    "a_priori_withheld": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51."
    ),
    "sharpening": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check "
        "at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds; progressive "
        "sharpening from step 10 to 60 (β 3 → 18.5, 2/η = 20)."
    ),
    "edge": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check "
        "at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds; η·β reached 2.2 "
        "≥ 2 (edge of stability); catapult(s) at step 40, 70."
    ),
    "departure": (
        "Stayed in a locally PL region: λ_min(K_t) ≥ 0.2 > 0 at every probe, kernel drift 0.1 "
        "≤ 0.5, a-posteriori μ_post = 0.19 > 0 (secant, not a proof); the run ended at step "
        "100 above the tolerance; the loss fell linearly at ρ̂ = 0.97 (R² = 1.000); within "
        "the bound ρ_bound = 0.98 (an estimate), log ρ̂ / log ρ_bound = 1.51; a-priori check "
        "at θ₀ on the ball of radius R₀ = 31.6 (sampled, not a proof) holds; left the "
        "linearized dynamics at step 30 (‖r_t − r_t^lin‖/‖r_0‖ > 0.1)."
    ),
    "diverged_nan": (
        "Diverged at step 60: the loss became non-finite; no regime, bound or a-posteriori "
        "claim is made."
    ),
    "diverged_edge": (
        "Diverged at step 60: the loss 5e+06 exceeded the bound 1e+06; η·β = 2.5 ≥ 2, past "
        "the edge of stability; no regime, bound or a-posteriori claim is made."
    ),
}


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_verdict_sentences_are_exact(name):
    summary = _variants()[name]
    if name == "sharpening":
        summary["sharpness"]["progressive_sharpening"].update(
            detected=True,
            start_step=10,
            reached_step=60,
            sharpness_start=3.0,
            sharpness_reached=18.5,
            threshold=20.0,
        )
    divergence_loss = 5e6 if name == "diverged_edge" else None
    assert verdict.verdict_sentence(summary, divergence_loss) == VERDICTS[name]


def test_format_helpers():
    assert verdict.format_rate(1.0) == "1"
    assert verdict.format_rate(1 - 2e-4) == "0.9998"
    assert verdict.format_rate(1 - 0.99e-4) == "1 − 9.9e-05"
    assert verdict.format_rate(1 + 0.99e-4) == "1 + 9.9e-05"
    assert verdict._fmt(None) == "n/a" and verdict._fmt(1234.5) == "1.23e+03"
    assert verdict._fmt(1234.5, digits=5) == "1234.5"


# --- analysis: each threshold at its boundary ------------------------------------------------


def _rows(losses, every=10, **columns):
    rows = [{"step": every * index, "loss": loss} for index, loss in enumerate(losses)]
    for key, values in columns.items():
        for row, value in zip(rows, values):
            if value is not None:
                row[key] = value
    return rows


def test_status_thresholds_are_inclusive_where_documented():
    # Converged at g = L − L* ≤ tolerance (equality counts), with L* subtracted.
    rows = _rows([2.5, 1.0, 0.75, 0.5])
    converged = analysis.summarize(
        rows, learning_rate=0.1, settings=SETTINGS(l_star=0.5, tolerance=0.25)
    )
    assert (converged["status"], converged["status_step"]) == ("converged", 20)
    assert converged["initial_loss"] == 2.5 and converged["final_loss"] == 0.5
    # Diverged only above the bound: a loss equal to it is not a divergence.
    at_bound = analysis.summarize(
        _rows([1.0, 2.0, 1.0]), learning_rate=0.1, settings=SETTINGS(loss_bound=2.0)
    )
    assert at_bound["status"] == "max_steps" and at_bound["loss_bound"] == 2.0
    # Incomplete only when the last logged step is below num_steps.
    assert analysis.summarize(rows, learning_rate=0.1, num_steps=30)["status"] == "max_steps"
    assert analysis.summarize(rows, learning_rate=0.1, num_steps=31)["status"] == "incomplete"


def test_precision_floor_and_fit_windows_at_their_edges():
    # g_0 = 1e5: the floor is 1e-10·g_0 = 1e-5 > tolerance; g equal to it is left out.
    gaps = [1e5 * 0.1**k for k in range(11)]  # 1e5 ... 1e-5
    rows = _rows([0.5 + g for g in gaps])
    summary = analysis.summarize(
        rows, learning_rate=0.1, settings=SETTINGS(l_star=0.5, tolerance=1e-12)
    )
    assert summary["precision_floor"] == pytest.approx(1e-5)
    assert summary["phases"]["points"] == 10 and summary["phases"]["window"] == [0, 90]
    assert summary["fit"]["rate"] == pytest.approx(0.1**0.1, rel=1e-6)
    # A settings window takes every g > 0 inside it (none at or below 0), before the status.
    rows = _rows([1.0, 0.5, 0.25, 0.0, 0.125, 0.0625, 1e-9])
    window = analysis.summarize(
        rows, learning_rate=0.1, settings=SETTINGS(tolerance=1e-6, fit_window=(0, 60))
    )
    assert window["status_step"] == 30 and window["fit"]["window"] == [0, 20]
    assert window["fit"]["points"] == 3 and window["fit"]["window_source"] == "settings"
    # Automatic window: the last three points when a quarter of the span leaves exactly three.
    auto = analysis.summarize(
        _rows([0.9**k for k in (0, 1, 2, 3)], every=1),
        learning_rate=0.1,
        settings=SETTINGS(tolerance=1e-12),
    )
    assert auto["fit"]["window"] == [1, 3] and auto["fit"]["window_source"] == "automatic"
    short = analysis.summarize(
        _rows([1.0, 0.5, 0.25]), learning_rate=0.1, settings=SETTINGS(tolerance=1e-12)
    )
    assert short["fit"]["window"] == [0, 20] and short["fit"]["points"] == 3
    spread = analysis.summarize(
        [{"step": s, "loss": 0.9**s} for s in (0, 1, 2, 10, 20)],
        learning_rate=0.1,
        settings=SETTINGS(tolerance=1e-12),
    )
    assert spread["fit"]["points"] == 5  # only two of five past the first quarter: all kept


def test_linearized_threshold_and_divergence_cut():
    deviations = [0.0, 0.1, 0.2, 0.3, 5.0]
    rows = _rows([1.0, 0.9, 0.8, 2e6, 1.0], linearized_deviation=deviations)
    summary = analysis.summarize(rows, learning_rate=0.1)
    assert summary["status"] == "diverged" and summary["status_step"] == 30
    # Up to and including the divergence step; a deviation equal to the threshold is no departure.
    assert summary["linearized"] == {
        "max_deviation": 0.3,
        "departure_step": 20,
        "threshold": 0.1,
        "kind": "measured",
    }
    assert summary["phases"]["kind"] == "estimate" and summary["fit"]["kind"] == "estimate"


def test_sharpness_section_stops_at_the_divergence_step():
    rows = _rows([1.0, 0.5, 0.2, 1.0, 3e6, 0.1], sharpness=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    summary = analysis.summarize(rows, learning_rate=0.1)
    spikes = summary["sharpness"]["loss_spikes"]
    assert summary["status_step"] == 40
    assert [(s["spike_step"], s["peak_step"], s["return_step"]) for s in spikes] == [(30, 40, None)]


# --- bounds and claims: exact sections and boundaries -----------------------------------------


def test_rate_bounds_at_eta_beta_one_and_two():
    at_one = bounds.rate_bounds(
        learning_rate=0.5, mu=0.5, beta_max=2.0, pl_envelope=1.0, fitted_rate=0.5
    )
    assert at_one == {
        "rate_bound": 0.75,
        "rate_descent": 0.75,
        "rate_envelope": 0.5,
        "descent_valid": True,
        "step_size_ok": True,
        "tightness": pytest.approx(math.log(0.5) / math.log(0.75)),
    }
    at_two = bounds.rate_bounds(
        learning_rate=0.5, mu=0.5, beta_max=4.0, pl_envelope=1.0, fitted_rate=0.5
    )
    assert at_two["descent_valid"] is False and at_two["step_size_ok"] is False
    assert at_two["rate_descent"] is None and at_two["rate_envelope"] is None
    for fitted, rate_bound_mu in ((1.0, 0.5), (0.0, 0.5), (0.5, 0.0), (0.5, 2.0)):
        edge = bounds.rate_bounds(
            learning_rate=1.0,
            mu=rate_bound_mu,
            beta_max=None,
            pl_envelope=None,
            fitted_rate=fitted,
        )
        assert edge["tightness"] is None, (fitted, rate_bound_mu)
        assert edge["descent_valid"] is None and edge["step_size_ok"] is None
    assert bounds.bound_violations([(0, 1.0), (1, 0.5 * (1 + 1e-4))], 0.5) == []
    assert bounds.bound_violations([(0, 1.0), (1, 0.5 * (1 + 2e-4))], 0.5) == [1]


def test_regime_boundaries_and_a_posteriori_branches():
    rows = [
        {"step": 0, "ntk_lambda_min": 0.1, "kernel_drift": 0.5},
        {"step": 10, "kernel_drift": 0.5},
        {"step": 20, "ntk_lambda_min": 0.0},
    ]
    assert bounds.local_regime(rows, 0.5) == (False, 20, "λ_min(K_t) = 0 ≤ 0")
    assert bounds.local_regime(rows[:2], 0.5) == (True, None, None)
    assert bounds.local_regime([{"step": 0, "kernel_drift": 0.6}], 0.5) == (
        False,
        0,
        "kernel drift 0.6 > 0.5",
    )
    assert bounds.local_regime([{"step": 0, "loss": 1.0}], 0.5) == (None, None, None)
    post = bounds.a_posteriori(
        [
            {"step": 0, "drift": 0.0, "ntk_lambda_min": 0.5, "kernel_drift_op": 0.0},
            {"step": 10, "drift": 0.5, "kernel_drift_op": 0.25},
            {"step": 20, "kernel_drift_op": 9.0},  # no drift logged: not a secant
            {"step": 30, "drift": 1.0},
        ]
    )
    assert post == {
        "lambda0": 0.5,
        "lipschitz_estimate": 0.5,
        "radius": 1.0,
        "mu_post": 0.0,
        "positive": False,
        "note": bounds.A_POSTERIORI_NOTE,
    }
    moved_without_drift = bounds.a_posteriori(
        [{"step": 0, "drift": 0.0, "ntk_lambda_min": 0.5, "kernel_drift_op": 0.3}]
    )
    assert moved_without_drift["lipschitz_estimate"] == 0.0
    none = bounds.a_posteriori([{"step": 0, "loss": 1.0}])
    assert none == {
        "lambda0": None,
        "lipschitz_estimate": None,
        "radius": None,
        "mu_post": None,
        "positive": None,
        "note": bounds.A_POSTERIORI_NOTE,
    }


def test_pl_constant_in_every_branch():
    rows = [{"step": 0, "ntk_lambda_min": 0.4}, {"step": 10, "ntk_lambda_min": 0.2}]
    assert bounds.pl_constant(rows) == {
        "mu": 0.2,
        "mu_source": "probe set",
        "mu_probe": 0.2,
        "interlacing_factor": None,
    }
    assert bounds.pl_constant(rows, train_size=8, probe_size=8)["interlacing_factor"] is None
    assert bounds.pl_constant(rows, train_size=None, probe_size=4)["mu"] == 0.2
    assert bounds.pl_constant(rows, train_size=8, probe_size=None)["mu"] == 0.2
    assert bounds.pl_constant(rows, train_size=8, probe_size=2) == {
        "mu": 0.05,
        "mu_source": "probe subset, interlacing upper value (m/n)·λ_min(K_probe)",
        "mu_probe": 0.2,
        "interlacing_factor": 4.0,
    }
    train = [*rows, {"step": 20, "train_ntk_lambda_min": 0.01}]
    assert bounds.pl_constant(train, train_size=8, probe_size=2) == {
        "mu": 0.01,
        "mu_source": "training set",
        "mu_probe": 0.2,
        "interlacing_factor": 4.0,
    }
    assert bounds.pl_constant([{"step": 0}]) == {
        "mu": None,
        "mu_source": None,
        "mu_probe": None,
        "interlacing_factor": None,
    }


def _probe_rows(**extra):
    return _probe_history(gn_sharpness=1.5, **extra)


def test_sections_when_claims_are_withheld():
    trace = analysis.summarize(
        _probe_rows(), learning_rate=0.1, run={"ntk_output_mode": "trace", "num_outputs": 2}
    )
    why = claims.reasons({"ntk_output_mode": "trace", "num_outputs": 2}, None).kernel
    post = trace["a_posteriori"]
    assert {k: post[k] for k in ("lambda0", "lipschitz_estimate", "radius", "mu_post")} == (
        dict.fromkeys(("lambda0", "lipschitz_estimate", "radius", "mu_post"))
    )
    assert post["positive"] is None and post["reason"] == why and post["kind"] == "estimate"
    assert trace["bound"]["reason"] == why and trace["regime"]["reason"] == why
    assert trace["sharpness"]["gauss_newton_reason"] == why
    diverged_rows = _probe_rows()
    diverged_rows[5]["loss"] = float("nan")
    diverged = analysis.summarize(diverged_rows, learning_rate=0.1)
    reason = "the run diverged at step 50: no regime, bound or a-posteriori claim is made"
    assert diverged["bound"]["reason"] == reason and diverged["bound"]["tightness"] is None
    assert diverged["bound"]["rate_bound"] == pytest.approx(0.98)
    assert diverged["a_posteriori"]["reason"] == reason
    assert diverged["a_posteriori"]["positive"] is None
    assert diverged["a_posteriori"]["mu_post"] == pytest.approx(0.2 - 0.1 * 0.1)
    assert diverged["regime"] == {
        "in_local_regime": None,
        "left_step": None,
        "left_reason": None,
        "kind": "measured",
        "reason": reason,
    }
    sgd_facts = {"protocol": "sgd", "a_priori": A_PRIORI}
    sgd = analysis.summarize(_probe_rows(), learning_rate=0.1, run=sgd_facts)
    sgd_reason = claims.reasons({"protocol": "sgd"}, None).sgd
    assert sgd["a_posteriori"]["reason"] == sgd_reason
    assert sgd["a_posteriori"]["kind"] == "reference"
    assert sgd["a_priori"]["reason"] == sgd_reason and sgd["a_priori"]["holds"] is True
    gd = analysis.summarize(_probe_rows(), learning_rate=0.1, run={"a_priori": A_PRIORI})
    assert gd["a_posteriori"]["reason"] is None and gd["a_priori"]["reason"] is None
    assert gd["regime"]["reason"] is None and gd["sharpness"]["gauss_newton_max"] == 1.5
    assert gd["ntk"]["kind"] == "measured" and gd["drift"]["kind"] == "measured"
    assert gd["pl_ratio"]["kind"] == "measured"
    trace_prior = analysis.summarize(
        _probe_rows(),
        learning_rate=0.1,
        run={"ntk_output_mode": "trace", "num_outputs": 2, "a_priori": A_PRIORI},
    )
    assert trace_prior["a_priori"]["reason"] == why and trace_prior["a_priori"]["holds"] is None


# --- phases: parameter names and degenerate fits ---------------------------------------------


def test_phase_parameters_by_name():
    steps = np.arange(0.0, 100.0, 10.0)
    gaps = np.where(steps <= 40, 0.9**steps, 0.9**40 * 0.99 ** (steps - 40))
    result = phases.fit_phases(list(zip(steps, gaps)))
    models = result["models"]
    assert models["linear"]["parameters"].keys() == {"a", "rate"}
    assert models["sublinear"]["parameters"].keys() == {"a", "exponent"}
    assert models["sublinear_then_linear"]["parameters"].keys() == {
        "a",
        "exponent",
        "transition_step",
        "rate",
    }
    two = models["two_rate"]["parameters"]
    assert two == {
        "a": pytest.approx(0.0, abs=1e-9),
        "rate_before": pytest.approx(0.9),
        "transition_step": 40,
        "rate": pytest.approx(0.99),
    }
    assert result["rate_before"] == pytest.approx(0.9) and result["exponent"] is None
    assert models["two_rate"]["rss"] == pytest.approx(0.0, abs=1e-20)
    assert models["two_rate"]["r2"] == pytest.approx(1.0)
    linear = phases.fit_phases([(0, 2.0), (1, 2.0), (2, 2.0)])
    assert linear["models"]["linear"]["r2"] == 1.0  # constant log g: R² = 1 by convention
    assert linear["models"]["linear"]["parameters"]["a"] == pytest.approx(math.log(2.0))
    assert phases.fit_rate([(0, 2.0), (1, 2.0), (2, 2.0)])["r2"] == 1.0


# --- stability: the thresholds at equality ---------------------------------------------------


def test_stability_thresholds_at_equality():
    # 2/η = 10: β = 9 is exactly 0.9·2/η and exactly 1.2 × the running minimum 7.5.
    rise = stability.progressive_sharpening([(0, 8.0), (10, 7.5), (20, 7.5), (30, 9.0)], 0.2)
    assert rise["detected"] is True and rise["start_step"] == 10 and rise["reached_step"] == 30
    assert rise["sharpness_start"] == 7.5 and rise["sharpness_reached"] == 9.0
    assert stability.progressive_sharpening([], 0.2)["detected"] is None
    # A loss equal to twice the lowest before it is no spike; the spike after it starts later.
    spikes = stability.loss_spikes(
        [(0, 1.0), (10, 0.5), (20, 1.0), (30, 1.5), (40, 0.4), (50, 1.0), (60, 0.3)],
        [(0, 10.0), (25, 12.0), (35, 9.0), (45, 9.5), (55, 8.0)],
        0.2,
    )
    assert [(s["spike_step"], s["return_step"]) for s in spikes] == [(30, 40), (50, 60)]
    first, second = spikes
    assert first["sharpness_before"] == 12.0 and first["sharpness_after_step"] == 45
    assert first["catapult"] is True  # from 12 ≥ 2/η = 10 to 9.5 below it
    # No probe at or after its return: the last probe after the spike started decides.
    assert second["sharpness_before"] == 9.5 and second["sharpness_after_step"] == 55
    assert second["sharpness_after"] == 8.0 and second["catapult"] is True
    crossing = stability.loss_spikes(
        [(0, 1.0), (10, 3.0), (20, 1.0)], [(0, 10.0), (15, 9.95), (20, 9.99)], 0.2
    )
    assert crossing[0]["catapult"] is True  # from 2/η = 10 to below it
    exact_drop = stability.loss_spikes([(0, 1.0), (10, 3.0), (20, 1.0)], [(0, 5.0), (20, 4.5)], 0.2)
    assert exact_drop[0]["catapult"] is True  # 4.5 = 0.9 × 5
    late = stability.loss_spikes(
        [(0, 1.0), (10, 3.0), (20, 1.0)], [(0, 5.0), (10, 4.0), (15, 4.4)], 0.2
    )
    assert late[0]["sharpness_after_step"] == 15 and late[0]["catapult"] is True
    section = stability.sharpness_section(
        [{"step": 0, "loss": 1.0, "sharpness": 5.0}, {"step": 10, "loss": 0.5, "sharpness": 10.0}],
        0.2,
    )
    assert section["step_size_ok"] is False and section["edge_of_stability"] is True
    calm = stability.sharpness_section([{"step": 0, "loss": 1.0, "sharpness": 5.0}], 0.2)
    assert calm["step_size_ok"] is True and calm["edge_of_stability"] is False
    assert calm["gauss_newton_max"] is None and calm["note"] == stability.SHARPNESS_NOTE


# --- tables and values ------------------------------------------------------------------------


def test_tables_and_values():
    assert tables.Field("tightness").title == "tightness"
    assert tables.Field("x", title="the x").title == "the x"
    assert tables.cell(3, "rate") == "3"
    assert tables.cell(0.99999999, "rate") == "1 − 1e-08"
    assert tables.cell("", "text") == "—" and tables.cell(False) == "no"
    assert finite(True) is None and finite(np.bool_(False)) is None and finite("1") == 1.0
    assert json_safe({"a": (np.float32(1.5), np.int64(2), np.bool_(True))}) == {"a": [1.5, 2, True]}


# --- added after the measured mutmut run: the survivors that were missing tests --------------


@pytest.mark.parametrize(
    "settings, expected",
    [
        (
            {"l_star": float("nan")},
            "analysis.Settings.l_star = nan; expected a finite number. Fix the binding, e.g. "
            "analysis.Settings.l_star = 0.0.",
        ),
        (
            {"tolerance": -1.0},
            "analysis.Settings.tolerance = -1.0; expected a finite number >= 0. Fix the "
            "binding, e.g. analysis.Settings.tolerance = 1e-06.",
        ),
        (
            {"loss_bound": 0.0},
            "analysis.Settings.loss_bound = 0.0; expected a finite number > 0. Fix the "
            "binding, e.g. analysis.Settings.loss_bound = 1.0.",
        ),
    ],
)
def test_settings_value_messages_are_exact(settings, expected):
    assert _message(lambda: SETTINGS(**settings)) == expected


def test_summaries_at_the_edges_of_the_history():
    # A finite loss above the bound is named in the verdict (not "non-finite").
    above = analysis.summarize(
        [{"step": 0, "loss": 1.0}, {"step": 10, "loss": 1e9}], learning_rate=0.1
    )
    assert above["verdict"] == (
        "Diverged at step 10: the loss 1e+09 exceeded the bound 1e+06; no regime, bound or "
        "a-posteriori claim is made."
    )
    # A non-finite first loss: diverged at step 0, no initial loss, the tolerance as floor.
    first_nan = analysis.summarize(
        [{"step": 0, "loss": float("nan")}, {"step": 10, "loss": 1.0}], learning_rate=0.1
    )
    assert (first_nan["status"], first_nan["status_step"]) == ("diverged", 0)
    assert first_nan["initial_loss"] is None and first_nan["precision_floor"] == 1e-6
    no_loss = analysis.summarize([{"step": 0, "drift": 0.0}], learning_rate=0.1)
    assert no_loss["status"] == "max_steps" and no_loss["initial_loss"] is None
    # A converged run keeps its claims (only a divergence withholds them).
    rows = _probe_rows()
    converged = analysis.summarize(rows, learning_rate=0.1, settings=SETTINGS(tolerance=0.1))
    assert converged["status"] == "converged"
    assert converged["regime"]["reason"] is None and converged["bound"]["reason"] is None
    assert converged["bound"]["relative_slack"] == 1e-4
    # Too few points for a fit: no window, so no PL envelope.
    short = analysis.summarize(
        [{"step": 0, "loss": 1.0, "pl_ratio": 0.3}, {"step": 1, "loss": 0.5, "pl_ratio": 0.2}],
        learning_rate=0.1,
    )
    assert short["pl_ratio"]["lower_envelope"] is None and short["pl_ratio"]["min"] == 0.2


def test_l_star_in_a_settings_window_and_the_bound_check():
    # g_t = 0.5^t above L* = 10; the bound check and the window both subtract L*.
    rows = [{"step": s, "loss": 10.0 + 0.5**s, "ntk_lambda_min": 2.0} for s in range(0, 11)]
    summary = analysis.summarize(
        rows, learning_rate=0.2, settings=SETTINGS(l_star=10.0, tolerance=1e-12, fit_window=(2, 8))
    )
    assert summary["fit"]["rate"] == pytest.approx(0.5) and summary["fit"]["window"] == [2, 8]
    assert summary["bound"]["rate_bound"] == pytest.approx(0.6)
    assert summary["bound"]["holds"] is True and summary["bound"]["violations"] == []


def test_empty_results_and_degenerate_bounds():
    assert phases.fit_phases([(0, 1.0), (1, 0.5)]) == {
        "model": None,
        "transition_step": None,
        "exponent": None,
        "rate": None,
        "rate_before": None,
        "points": 2,
        "window": None,
        "models": {},
    }
    assert stability.progressive_sharpening([(0, 1.0), (10, 1.1)], 0.2) == {
        "detected": False,
        "start_step": None,
        "reached_step": None,
        "sharpness_start": None,
        "sharpness_reached": None,
        "threshold": 10.0,
    }
    # η·μ = 1: ρ_bound = 0, no tightness (log 0).
    edge = bounds.rate_bounds(
        learning_rate=1.0, mu=1.0, beta_max=None, pl_envelope=None, fitted_rate=0.5
    )
    assert edge["rate_bound"] == 0.0 and edge["tightness"] is None
    assert verdict._linear_phrase({"rate": 1.0, "r2": 1.0}) == "did not contract (ρ̂ = 1)"
    assert verdict._linear_phrase({"rate": 0.5, "r2": 0.9}) == (
        "fell linearly at ρ̂ = 0.5 (R² = 0.900)"
    )
