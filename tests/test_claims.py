"""Tests that a summary claims only what its run supports (lplr_tf.claims via summarize)."""

import json

import pytest

from lplr_tf import analysis


def probe_rows(rate=0.97, lambda_min=0.2, steps=100, every=10):
    rows = []
    for index, step in enumerate(range(0, steps + 1, every)):
        rows.append(
            {
                "step": step,
                "loss": rate**step,
                "pl_ratio": 0.5,
                "drift": 0.01 * index,
                "ntk_lambda_min": lambda_min,
                "ntk_lambda_max": 2.0,
                "kernel_drift": 0.001 * index,
                "kernel_drift_op": 0.0001 * index,
                "sharpness": 2.0,
                "gn_sharpness": 1.9,
            }
        )
    return rows


A_PRIORI = {
    "kind": "sampled check, not a proof",
    "holds": False,
    "lambda_ok": False,
    "step_size_ok": True,
    "lambda0": 0.2,
    "mu0": 0.1,
    "beta0": 2.0,
    "radius": 40.0,
    "min_lambda_min": 0.01,
    "lipschitz_ball": 0.3,
    "num_samples": 9,
    "skipped": None,
    "samples": [{"direction": "gradient", "radius_fraction": 1.0}],
}


def test_gd_run_claims_estimates_and_reports_the_a_priori_check():
    run = {"protocol": "gd", "ntk_output_mode": "full", "num_outputs": 1, "a_priori": A_PRIORI}
    summary = analysis.summarize(probe_rows(), learning_rate=0.1, run=run)
    assert summary["run"] == run  # stored so that lplr-report can recompute
    assert summary["bound"]["kind"] == "estimate" and summary["bound"]["holds"] is True
    assert summary["a_posteriori"]["kind"] == "estimate"
    prior = summary["a_priori"]
    assert prior["holds"] is False and prior["kind"] == "sampled check, not a proof"
    assert prior["radius"] == 40.0 and "samples" not in prior  # the digest; details in run
    assert "a-priori check at θ₀" in summary["verdict"]
    assert "(sampled, not a proof) fails: λ_min fell to 0.01 < μ₀" in summary["verdict"]
    # The stored facts give the same claims when lplr-report recomputes the summary.
    again = analysis.summarize(probe_rows(), learning_rate=0.1, run=summary["run"])
    assert again["a_priori"]["holds"] is False and again["a_priori"]["radius"] == 40.0
    assert again["bound"]["kind"] == "estimate" and again["run"] == run


@pytest.mark.parametrize("outputs", [4, None])
def test_trace_kernel_with_several_outputs_withholds_theory_fields(outputs):
    run = {"ntk_output_mode": "trace", "num_outputs": outputs, "a_priori": A_PRIORI}
    summary = analysis.summarize(probe_rows(), learning_rate=0.1, run=run)
    bound, post = summary["bound"], summary["a_posteriori"]
    for key in ("mu", "rate_bound", "rate_descent", "rate_envelope", "tightness", "holds"):
        assert bound[key] is None, key
    assert "trace mode" in bound["reason"]
    assert post["mu_post"] is None and post["positive"] is None and post["lambda0"] is None
    assert summary["regime"]["in_local_regime"] is None
    assert summary["sharpness"]["gauss_newton_max"] is None
    assert "trace mode" in summary["sharpness"]["gauss_newton_reason"]
    assert summary["sharpness"]["max"] == 2.0  # the loss Hessian needs no kernel
    assert summary["a_priori"]["holds"] is None
    assert summary["ntk"]["output_mode"] == "trace"
    assert summary["ntk"]["lambda_min_min"] == 0.2  # still reported, as measured
    assert summary["verdict"].startswith("Local regime not assessed: the NTK was measured in trace")
    assert "Stayed" not in summary["verdict"] and "ρ_bound" not in summary["verdict"]
    single = analysis.summarize(
        probe_rows(), learning_rate=0.1, run={"ntk_output_mode": "trace", "num_outputs": 1}
    )
    assert single["bound"]["mu"] == 0.2 and single["regime"]["in_local_regime"] is True


def test_sgd_run_gives_reference_values_and_interlacing():
    run = {"protocol": "sgd", "train_size": 1024, "probe_size": 256}
    summary = analysis.summarize(probe_rows(), learning_rate=0.1, run=run)
    bound = summary["bound"]
    assert bound["kind"] == "reference" and "SGD" in bound["reason"]
    assert bound["mu_probe"] == 0.2 and bound["interlacing_factor"] == 4.0
    assert bound["mu"] == pytest.approx(0.05)  # μ_train ≤ (m/n)·λ_min(K_probe)
    assert bound["rate_bound"] == pytest.approx(1 - 0.1 * 0.05)
    assert summary["a_posteriori"]["kind"] == "reference"
    verdict = summary["verdict"]
    assert verdict.startswith("SGD run, probe kernel kept positive")
    assert "μ of the training set ≤ 0.05 (interlacing, n/m = 4)" in verdict
    assert "is a reference value only" in verdict
    assert "Stayed in a locally PL region" not in verdict and "within the bound" not in verdict
    rows = probe_rows()
    rows[5]["train_ntk_lambda_min"] = 0.03
    measured = analysis.summarize(rows, learning_rate=0.1, run=run)
    assert measured["bound"]["mu"] == 0.03
    assert measured["bound"]["mu_source"] == "training set"


def test_diverged_run_claims_nothing():
    # Only step 0 is finite; λ_min > 0 and no drift there, which once read as certified.
    rows = probe_rows(steps=20)
    rows[1]["loss"] = float("nan")
    rows[2]["loss"] = float("inf")
    summary = analysis.summarize(rows, learning_rate=0.1)
    assert summary["status"] == "diverged" and summary["status_step"] == 10
    assert summary["regime"]["in_local_regime"] is None
    assert "diverged at step 10" in summary["regime"]["reason"]
    assert summary["a_posteriori"]["positive"] is None
    assert summary["bound"]["holds"] is None and summary["bound"]["violations"] is None
    assert summary["bound"]["tightness"] is None
    assert summary["verdict"] == (
        "Diverged at step 10: the loss became non-finite; no regime, bound or a-posteriori "
        "claim is made."
    )
    json.dumps(summary, allow_nan=False)


def test_bad_run_facts_are_named():
    with pytest.raises(ValueError, match="run\\['protocol'\\] = 'adam'"):
        analysis.summarize(probe_rows(), learning_rate=0.1, run={"protocol": "adam"})
    with pytest.raises(ValueError, match="run\\['ntk_output_mode'\\] = 'diag'"):
        analysis.summarize(probe_rows(), learning_rate=0.1, run={"ntk_output_mode": "diag"})
    with pytest.raises(ValueError, match="run=\\['gd'\\]"):
        analysis.summarize(probe_rows(), learning_rate=0.1, run=["gd"])
