"""Every number a GD run reports, against independent references on a nonlinear net.

A one-hidden-layer tanh net (width 8) with O = 3 outputs on n = 8 examples is trained by the
launcher's `experiment.run`; the same trajectory is recomputed in float64 by hand
(reference_nets.TanhNet: Jacobian in NumPy, dense Hessian, NumPy eigenvalues), and every
metrics row and summary field is compared with its definition in docs/theory.md. The kernel
of this net moves (relative drift ≫ 1 %), so the kernel-drift norms, the Lipschitz secant and
the linearized residual are tested on values that a wrong normalization or a wrong output
ordering would change.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from reference_nets import TanhNet, flat_weights, operator_norm, tanh_model
from reference_summary import line_fit, phase_models, rate_window

from lplr_tf import analysis, experiment, protocol
from lplr_tf.data import Dataset
from lplr_tf.rundir import RunDirectory

N, D, OUTPUTS, WIDTH = 8, 6, 3, 8
NUM_STEPS, LOG_EVERY, PROBE_EVERY = 20, 2, 4
STEP_TIMES_SHARPNESS = 1.5  # η = 1.5/β₀: η·β between 1 and 2 (the bound's hypothesis fails)
SETTINGS = analysis.Settings(tolerance=1e-12, kernel_drift_bound=0.3, linearized_threshold=0.076)
RTOL = 2e-4  # the run is float32, the reference float64
RTOL_SPECTRUM = 2e-3  # λ_min ≈ 0.01 of a kernel with λ_max ≈ 4, measured in float32


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.standard_normal((N, OUTPUTS)).astype(np.float32)
    return x, y


def _model(input_shape, output_dim):
    return tanh_model(input_shape[0], output_dim, WIDTH)


@pytest.fixture(scope="module")
def gd_run(tmp_path_factory):
    """The launcher's run and the float64 reference of the same GD trajectory."""
    x, y = _data()
    net = TanhNet(x, y, WIDTH)
    theta0 = flat_weights(tanh_model(D, OUTPUTS, WIDTH))
    learning_rate = STEP_TIMES_SHARPNESS / net.sharpness(theta0)
    workdir = tmp_path_factory.mktemp("gd")
    summary = experiment.run(
        str(workdir),
        dataset=lambda: Dataset(name="tanh_three_outputs", x=x, y=y),
        model=_model,
        protocol=lambda: protocol.gd(
            learning_rate=learning_rate,
            num_steps=NUM_STEPS,
            log_every=LOG_EVERY,
            probe_every=PROBE_EVERY,
        ),
        analysis_settings=SETTINGS,
    )
    thetas = net.gradient_descent(theta0, learning_rate, NUM_STEPS)
    rows = RunDirectory(str(workdir)).read_metrics()
    return {
        "net": net,
        "thetas": thetas,
        "eta": learning_rate,
        "rows": rows,
        "summary": summary,
        "reference": [_reference_row(net, thetas, learning_rate, row["step"]) for row in rows],
    }


def _reference_row(net, thetas, learning_rate, step):
    """Every metrics key at step t, from its definition (docs/theory.md §1)."""
    theta, theta0 = thetas[step], thetas[0]
    loss, gradient = net.loss(theta), net.gradient(theta)
    drift = float(np.linalg.norm(theta - theta0))
    row = {
        "step": step,
        "loss": loss,
        "probe_loss": loss,
        "grad_norm_sq": float(gradient @ gradient),
        "pl_ratio": float(gradient @ gradient) / (2 * loss),
        "drift": drift,
        "relative_drift": drift / float(np.linalg.norm(theta0)),
    }
    kernel0, residual0 = net.kernel(theta0), net.residual(theta0)
    # r_t^lin = (I − ηK₀)^t r₀, with K₀ and r₀ both example-major (entry i·O + o).
    linear = np.linalg.matrix_power(np.eye(N * OUTPUTS) - learning_rate * kernel0, step) @ residual0
    row.update(
        loss_linearized=float(linear @ linear) / (2 * N),
        linearized_deviation=float(
            np.linalg.norm(net.residual(theta) - linear) / np.linalg.norm(residual0)
        ),
    )
    if step % PROBE_EVERY == 0:
        kernel = net.kernel(theta)
        eigenvalues = np.linalg.eigvalsh(kernel)
        row.update(
            ntk_lambda_min=eigenvalues[0],
            ntk_lambda_max=eigenvalues[-1],
            ntk_trace=float(np.trace(kernel)),
            ntk_condition=eigenvalues[-1] / eigenvalues[0],
            kernel_drift=np.linalg.norm(kernel - kernel0) / np.linalg.norm(kernel0),
            kernel_drift_op=operator_norm(kernel - kernel0),
            gn_sharpness=eigenvalues[-1],
            sharpness=net.sharpness(theta),
            kernel_drift_fro_unnormalized=float(np.linalg.norm(kernel - kernel0)),
        )
    return row


def test_reference_jacobian_is_the_gradient_tape_jacobian():
    x, y = _data()
    model = tanh_model(D, OUTPUTS, WIDTH)
    with tf.GradientTape() as tape:
        outputs = tf.reshape(model(tf.constant(x)), [-1])  # example-major: i·O + o
    blocks = tape.jacobian(outputs, model.trainable_variables)
    expected = np.concatenate([np.reshape(b, (N * OUTPUTS, -1)) for b in blocks], axis=1)
    net = TanhNet(x, y, WIDTH)
    np.testing.assert_allclose(net.jacobian(flat_weights(model)), expected, atol=2e-6)
    np.testing.assert_allclose(net.outputs(flat_weights(model)), model(x), atol=2e-6)


def test_the_kernel_moves_enough_for_the_norms_to_matter(gd_run):
    # Guards of this file's power: each wrong normalization below changes a number by > 1 %.
    last = gd_run["reference"][-1]
    theta0, theta_t = gd_run["thetas"][0], gd_run["thetas"][-1]
    assert last["kernel_drift"] > 0.2
    assert abs(np.linalg.norm(theta_t) / np.linalg.norm(theta0) - 1) > 0.01
    assert last["kernel_drift_fro_unnormalized"] > 1.05 * last["kernel_drift_op"]
    kernel_t = gd_run["net"].kernel(theta_t)
    kernel0 = gd_run["net"].kernel(theta0)
    assert abs(np.linalg.norm(kernel_t) / np.linalg.norm(kernel0) - 1) > 0.01


def test_every_row_matches_the_explicit_jacobian_and_dense_hessian(gd_run):
    rows, reference = gd_run["rows"], gd_run["reference"]
    assert [row["step"] for row in rows] == list(range(0, NUM_STEPS + 1, LOG_EVERY))
    for row, expected in zip(rows, reference):
        step = row["step"]
        probed = step % PROBE_EVERY == 0
        assert ("ntk_lambda_min" in row) is probed, step
        for key, value in expected.items():
            if key in ("step", "kernel_drift_fro_unnormalized"):
                continue
            if step == 0 and key in ("drift", "relative_drift", "kernel_drift", "kernel_drift_op"):
                assert row[key] == 0.0, key
                continue
            rtol = RTOL_SPECTRUM if key.startswith(("ntk_", "kernel_", "gn_")) else RTOL
            if key == "linearized_deviation":
                np.testing.assert_allclose(row[key], value, atol=1e-5, err_msg=f"{step} {key}")
                continue
            np.testing.assert_allclose(row[key], value, rtol=rtol, err_msg=f"step {step} {key}")


def _gaps(gd_run):
    reference = gd_run["reference"]
    return np.array([r["step"] for r in reference]), np.array([r["loss"] for r in reference])


def test_summary_measured_fields_match_numpy(gd_run):
    summary, reference, eta = gd_run["summary"], gd_run["reference"], gd_run["eta"]
    probes = [r for r in reference if "ntk_lambda_min" in r]
    steps, gaps = _gaps(gd_run)
    assert summary["status"] == "max_steps" and summary["status_step"] is None
    assert summary["steps"] == NUM_STEPS
    np.testing.assert_allclose(summary["initial_loss"], gaps[0], rtol=RTOL)
    np.testing.assert_allclose(summary["final_loss"], gaps[-1], rtol=RTOL)
    pl = np.array([r["pl_ratio"] for r in reference])
    np.testing.assert_allclose(summary["pl_ratio"]["min"], pl.min(), rtol=RTOL)
    np.testing.assert_allclose(summary["pl_ratio"]["median"], np.median(pl), rtol=RTOL)
    first, last = summary["fit"]["window"]
    in_window = (steps >= first) & (steps <= last)
    envelope = pl[in_window].min()
    np.testing.assert_allclose(summary["pl_ratio"]["lower_envelope"], envelope, rtol=RTOL)
    drift = [r["drift"] for r in reference]
    np.testing.assert_allclose(summary["drift"]["final"], drift[-1], rtol=RTOL)
    np.testing.assert_allclose(summary["drift"]["max"], max(drift), rtol=RTOL)
    np.testing.assert_allclose(
        summary["drift"]["relative_final"], reference[-1]["relative_drift"], rtol=RTOL
    )
    ntk = summary["ntk"]
    lambda_min = [r["ntk_lambda_min"] for r in probes]
    np.testing.assert_allclose(ntk["lambda_min_init"], lambda_min[0], rtol=RTOL_SPECTRUM)
    np.testing.assert_allclose(ntk["lambda_min_min"], min(lambda_min), rtol=RTOL_SPECTRUM)
    np.testing.assert_allclose(
        ntk["lambda_max_max"], max(r["ntk_lambda_max"] for r in probes), rtol=RTOL_SPECTRUM
    )
    np.testing.assert_allclose(
        ntk["kernel_drift_final"], probes[-1]["kernel_drift"], rtol=RTOL_SPECTRUM
    )
    # Sharpness and the edge-of-stability flags from the dense Hessian at every probe.
    betas = np.array([r["sharpness"] for r in probes])
    products = eta * betas
    assert np.all(np.abs(products - 1) > 1e-3) and np.all(np.abs(products - 2) > 1e-3)
    sharp = summary["sharpness"]
    np.testing.assert_allclose(sharp["max"], betas.max(), rtol=RTOL)
    np.testing.assert_allclose(sharp["eta_times_max"], eta * betas.max(), rtol=RTOL)
    np.testing.assert_allclose(
        sharp["gauss_newton_max"], max(r["gn_sharpness"] for r in probes), rtol=RTOL_SPECTRUM
    )
    assert sharp["step_size_ok"] is bool(np.all(products <= 1))
    assert sharp["step_size_ok"] is False
    assert sharp["edge_of_stability"] is bool(np.any(products >= 2)) is False
    # Regime: λ_min(K_t) > 0 and kernel drift ≤ the bound, first failing probe.
    drifts = np.array([r["kernel_drift"] for r in probes])
    assert np.all(np.abs(drifts - SETTINGS.kernel_drift_bound) > 1e-3)
    left = [r["step"] for r in probes if r["kernel_drift"] > SETTINGS.kernel_drift_bound]
    assert summary["regime"]["in_local_regime"] is False
    assert summary["regime"]["left_step"] == left[0]
    # Linearized deviation: max and the first step above the threshold.
    deviations = np.array([r["linearized_deviation"] for r in reference])
    assert np.all(np.abs(deviations - SETTINGS.linearized_threshold) > 1e-4)
    np.testing.assert_allclose(summary["linearized"]["max_deviation"], deviations.max(), atol=1e-5)
    threshold = SETTINGS.linearized_threshold
    departures = [r["step"] for r in reference if r["linearized_deviation"] > threshold]
    assert summary["linearized"]["departure_step"] == departures[0]


def test_summary_phases_and_rate_fit_match_least_squares(gd_run):
    summary = gd_run["summary"]
    steps, gaps = _gaps(gd_run)
    floor = max(SETTINGS.tolerance, 1e-10 * gaps[0])
    assert np.all(gaps > floor)  # every logged step is a phase point
    fits, selected = phase_models(steps, gaps)
    phases = summary["phases"]
    assert phases["model"] == selected
    assert phases["points"] == steps.size and phases["window"] == [0, NUM_STEPS]
    for model, fit in fits.items():
        reported = phases["models"][model]
        np.testing.assert_allclose(reported["rss"], fit["rss"], rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(reported["bic"], fit["bic"], rtol=1e-4, err_msg=model)
        assert reported["parameters"].get("transition_step") == (
            None if fit["tau"] is None else int(fit["tau"])
        )
    coefficients = fits["linear"]["coefficients"]
    np.testing.assert_allclose(
        phases["models"]["linear"]["parameters"]["rate"], math.exp(coefficients[1]), rtol=1e-5
    )
    np.testing.assert_allclose(
        phases["models"]["sublinear"]["parameters"]["exponent"],
        fits["sublinear"]["coefficients"][1],
        rtol=1e-4,
    )
    tau = fits[selected]["tau"]
    assert phases["transition_step"] == (None if tau is None else int(tau))
    window = rate_window(steps, tau)
    fit = summary["fit"]
    assert fit["window"] == [int(window[0]), int(window[-1])]
    assert fit["window_source"] == ("automatic" if tau is None else "phases")
    expected = line_fit(window, gaps[np.isin(steps, window)])
    np.testing.assert_allclose(fit["rate"], expected["rate"], rtol=1e-6)
    np.testing.assert_allclose(fit["r2"], expected["r2"], rtol=1e-5)
    np.testing.assert_allclose(fit["log_rate_std_error"], expected["std_error"], rtol=1e-3)
    np.testing.assert_allclose(fit["rate_interval_95"], expected["interval"], rtol=1e-6)
    assert fit["points"] == window.size


def test_summary_bounds_and_a_posteriori_match_numpy(gd_run):
    summary, reference, eta = gd_run["summary"], gd_run["reference"], gd_run["eta"]
    probes = [r for r in reference if "ntk_lambda_min" in r]
    steps, gaps = _gaps(gd_run)
    bound = summary["bound"]
    mu = min(r["ntk_lambda_min"] for r in probes)
    beta_max = max(r["sharpness"] for r in probes)
    first, last = summary["fit"]["window"]
    envelope = min(r["pl_ratio"] for r in reference if first <= r["step"] <= last)
    rate = summary["fit"]["rate"]
    np.testing.assert_allclose(bound["mu"], mu, rtol=RTOL_SPECTRUM)
    assert bound["mu_source"] == "probe set"
    np.testing.assert_allclose(bound["rate_bound"], 1 - eta * mu, rtol=1e-6)
    factor = eta * (2 - eta * beta_max)
    np.testing.assert_allclose(bound["rate_descent"], 1 - factor * mu, rtol=1e-6)
    np.testing.assert_allclose(bound["rate_envelope"], 1 - factor * envelope, rtol=1e-5)
    assert bound["descent_valid"] is True and bound["step_size_ok"] is False
    np.testing.assert_allclose(
        bound["tightness"], math.log(rate) / math.log(1 - eta * mu), rtol=RTOL_SPECTRUM
    )
    np.testing.assert_allclose(bound["fitted_rate"], rate)
    allowed = (1 - eta * mu) ** np.diff(steps) * (1 + 1e-4)
    ratios = gaps[1:] / gaps[:-1]
    assert np.all(np.abs(ratios / allowed - 1) > 1e-4)  # no borderline contraction
    assert bound["violations"] == [int(s) for s in steps[1:][ratios > allowed]]
    assert bound["holds"] is (not np.any(ratios > allowed))
    # The a-posteriori estimate: L̂_Θ = max_t ‖K_t − K₀‖₂ / ‖θ_t − θ₀‖, R = max_t ‖θ_t − θ₀‖.
    post = summary["a_posteriori"]
    lipschitz = max(r["kernel_drift_op"] / r["drift"] for r in probes if r["step"] > 0)
    radius = max(r["drift"] for r in reference)
    np.testing.assert_allclose(post["lambda0"], probes[0]["ntk_lambda_min"], rtol=RTOL_SPECTRUM)
    np.testing.assert_allclose(post["lipschitz_estimate"], lipschitz, rtol=RTOL_SPECTRUM)
    np.testing.assert_allclose(post["radius"], radius, rtol=RTOL)
    mu_post = probes[0]["ntk_lambda_min"] - lipschitz * radius
    np.testing.assert_allclose(post["mu_post"], mu_post, rtol=RTOL_SPECTRUM)
    assert post["positive"] is bool(mu_post > 0)


def test_a_priori_check_matches_dense_references(gd_run):
    net, eta, theta0 = gd_run["net"], gd_run["eta"], gd_run["thetas"][0]
    check = gd_run["summary"]["run"]["a_priori"]
    kernel0 = net.kernel(theta0)
    lambda0 = np.linalg.eigvalsh(kernel0)[0]
    beta0 = net.sharpness(theta0)
    loss0 = net.loss(theta0)
    radius = 2 * math.sqrt(2 * beta0 * loss0) / (lambda0 / 2)
    np.testing.assert_allclose(check["lambda0"], lambda0, rtol=RTOL_SPECTRUM)
    np.testing.assert_allclose(check["mu0"], lambda0 / 2, rtol=RTOL_SPECTRUM)
    np.testing.assert_allclose(check["beta0"], beta0, rtol=RTOL)
    np.testing.assert_allclose(check["loss0"], loss0, rtol=RTOL)
    np.testing.assert_allclose(check["radius"], radius, rtol=RTOL_SPECTRUM)
    assert check["step_size_ok"] is bool(eta * beta0 <= 1) is False
    # The gradient direction δ ∝ −Jᵀr₀ at R₀/4, R₀/2, R₀ (eigenvector directions have an
    # arbitrary sign, so only this one is recomputed).
    direction = -net.jacobian(theta0).T @ net.residual(theta0)
    gradient_samples = [s for s in check["samples"] if s["direction"] == "gradient"]
    assert sorted(s["radius_fraction"] for s in gradient_samples) == [0.25, 0.5, 1.0]
    for sample in gradient_samples:
        delta = direction * (sample["radius_fraction"] * radius / np.linalg.norm(direction))
        kernel = net.kernel(theta0 + delta)
        change = operator_norm(kernel - kernel0)
        np.testing.assert_allclose(sample["radius"], np.linalg.norm(delta), rtol=RTOL_SPECTRUM)
        np.testing.assert_allclose(sample["kernel_change"], change, rtol=RTOL_SPECTRUM)
        np.testing.assert_allclose(
            sample["lambda_min"], np.linalg.eigvalsh(kernel)[0], atol=1e-5 * change
        )
        np.testing.assert_allclose(sample["lipschitz"], change / np.linalg.norm(delta), rtol=2e-3)
    samples = check["samples"]
    assert check["num_samples"] == len(samples) == 9
    assert check["min_lambda_min"] == min(s["lambda_min"] for s in samples)
    assert check["lipschitz_ball"] == max(s["lipschitz"] for s in samples)
    assert check["lambda_ok"] is (check["min_lambda_min"] >= check["mu0"])
    assert check["holds"] is (check["lambda_ok"] and check["step_size_ok"])
    digest = gd_run["summary"]["a_priori"]
    for key in ("holds", "lambda0", "mu0", "beta0", "radius", "lipschitz_ball", "num_samples"):
        assert digest[key] == check[key], key
