"""L* ≠ 0: least squares with more examples than parameters, against NumPy GD and lstsq.

The linear model f(x) = xW + b with O = 2 outputs on n = 12 examples of dimension d = 3 cannot
interpolate: L* = min L > 0 comes from `np.linalg.lstsq` on A = [X 1]. GD on L is run by the
launcher with `analysis.Settings(l_star=L*)` and by hand in float64. With H = AᵀA/n, the
suboptimality g_t = L_t − L* = ½ e_tᵀ H e_t (e_t the error of each output's weights), the PL
inequality holds with μ = λ_min(H) (q_t ≥ λ_min(H)), the loss Hessian is I_O ⊗ H (sharpness
λ_max(H)) and the rate tends to (1 − ηλ_min(H))².
"""

import numpy as np
import pytest
from reference_summary import line_fit

from lplr_tf import analysis, experiment, protocol
from lplr_tf.data import Dataset
from lplr_tf.diagnostics import ProbeSettings
from lplr_tf.models.fc import build_model
from lplr_tf.rundir import RunDirectory

N, D, OUTPUTS = 12, 3, 2
NUM_STEPS, LOG_EVERY = 300, 4
TOLERANCE = 1.2e-5


def _problem(seed=2):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, D)) * np.array([1.0, 0.8, 0.3])).astype(np.float32)
    teacher = rng.standard_normal((D, OUTPUTS))
    y = (x @ teacher + 0.7 * rng.standard_normal((N, OUTPUTS))).astype(np.float32)
    return x, y


def _model(input_shape, output_dim):
    return build_model(input_shape, output_dim, depth=0, parameterization="standard", seed=5)


@pytest.fixture(scope="module")
def l_star_run(tmp_path_factory):
    x, y = _problem()
    design = np.hstack([x.astype(np.float64), np.ones((N, 1))])
    targets = y.astype(np.float64)
    solution, *_ = np.linalg.lstsq(design, targets, rcond=None)
    l_star = 0.5 * np.sum((design @ solution - targets) ** 2) / N
    hessian = design.T @ design / N
    eigenvalues = np.linalg.eigvalsh(hessian)
    learning_rate = 0.95 / eigenvalues[-1]
    workdir = tmp_path_factory.mktemp("l_star")
    summary = experiment.run(
        str(workdir),
        dataset=lambda: Dataset(name="least_squares_n_above_d", x=x, y=y),
        model=_model,
        protocol=lambda: protocol.gd(
            learning_rate=learning_rate, num_steps=NUM_STEPS, log_every=LOG_EVERY
        ),
        probe_settings=ProbeSettings(measure_ntk=False, a_priori_check=False),
        analysis_settings=analysis.Settings(l_star=float(l_star), tolerance=TOLERANCE),
    )
    kernel, bias = (np.asarray(v, np.float64) for v in _model((D,), OUTPUTS).get_weights())
    weights = np.vstack([kernel, bias])  # (d + 1, O): the rows of A's columns
    trajectory = []
    for _ in range(NUM_STEPS + 1):
        residual = design @ weights - targets
        gradient = design.T @ residual / N
        loss = 0.5 * np.sum(residual**2) / N
        trajectory.append({"loss": loss, "grad_norm_sq": float(np.sum(gradient**2))})
        weights = weights - learning_rate * gradient
    return {
        "summary": summary,
        "rows": RunDirectory(str(workdir)).read_metrics(),
        "trajectory": trajectory,
        "l_star": l_star,
        "eigenvalues": eigenvalues,
        "eta": learning_rate,
    }


def test_rows_pl_ratio_uses_l_star(l_star_run):
    rows, trajectory, l_star = l_star_run["rows"], l_star_run["trajectory"], l_star_run["l_star"]
    assert l_star > 0.1  # the problem cannot be interpolated
    for row in rows:
        expected = trajectory[row["step"]]
        gap = expected["loss"] - l_star
        q = expected["grad_norm_sq"] / (2 * gap)
        np.testing.assert_allclose(row["loss"], expected["loss"], rtol=1e-6)
        np.testing.assert_allclose(row["grad_norm_sq"], expected["grad_norm_sq"], rtol=1e-4)
        # The float32 loss carries ~1e-7·L of error, i.e. 1e-7·L/g of the gap's.
        rtol = 1e-4 + 5e-7 * expected["loss"] / gap
        np.testing.assert_allclose(row["pl_ratio"], q, rtol=rtol, err_msg=str(row["step"]))
        assert q >= l_star_run["eigenvalues"][0] * (1 - 1e-9)  # PL with μ = λ_min(H)


def test_summary_with_l_star_matches_numpy(l_star_run):
    summary, trajectory, l_star = (l_star_run[k] for k in ("summary", "trajectory", "l_star"))
    eta, eigenvalues = l_star_run["eta"], l_star_run["eigenvalues"]
    steps = np.array([row["step"] for row in l_star_run["rows"]])
    gaps = np.array([trajectory[s]["loss"] - l_star for s in steps])
    assert np.all(np.abs(gaps / TOLERANCE - 1) > 0.05)  # no step is at the tolerance's edge
    converged = steps[gaps <= TOLERANCE][0]
    assert summary["status"] == "converged" and summary["status_step"] == converged
    assert converged < NUM_STEPS  # the run stopped at convergence
    assert steps[-1] == converged
    assert summary["l_star"] == pytest.approx(l_star)
    assert summary["precision_floor"] == pytest.approx(max(TOLERANCE, 1e-10 * gaps[0]))
    np.testing.assert_allclose(summary["initial_loss"], trajectory[0]["loss"], rtol=1e-6)
    # The rate fit over the reported window, on the float64 gaps.
    first, last = summary["fit"]["window"]
    window = (steps >= first) & (steps <= last)
    assert last < converged and window.sum() >= 5
    expected = line_fit(steps[window], gaps[window])
    np.testing.assert_allclose(summary["fit"]["rate"], expected["rate"], rtol=1e-4)
    np.testing.assert_allclose(summary["fit"]["r2"], expected["r2"], atol=1e-4)
    # ... which is the slowest mode's (1 − ηλ_min(H))² once the faster ones died out.
    np.testing.assert_allclose(summary["fit"]["rate"], (1 - eta * eigenvalues[0]) ** 2, rtol=0.02)
    q = np.array([trajectory[s]["grad_norm_sq"] for s in steps]) / (2 * gaps)
    budget = 1e-4 + 5e-7 * trajectory[0]["loss"] / gaps.min()  # float32 losses (see above)
    np.testing.assert_allclose(summary["pl_ratio"]["min"], q.min(), rtol=budget)
    np.testing.assert_allclose(summary["pl_ratio"]["median"], np.median(q), rtol=budget)
    np.testing.assert_allclose(summary["sharpness"]["max"], eigenvalues[-1], rtol=1e-4)
    assert summary["sharpness"]["step_size_ok"] is True  # η = 0.95/λ_max(H)
