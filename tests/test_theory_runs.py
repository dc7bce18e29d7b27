"""The theory layer on real runs, against closed forms (DESIGN.md §1)."""

import json

import numpy as np
import pytest

from lplr_tf import analysis, experiment, protocol, report, train
from lplr_tf.data import Dataset, teacher_student
from lplr_tf.models.fc import build_model
from lplr_tf.rundir import RunDirectory


def _least_squares_problem(seed=0, num_examples=8, input_dim=20):
    """Overparameterized linear regression: L* = 0, K = (X X^T + 1 1^T) / n exactly."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_examples, input_dim)).astype(np.float32) / np.sqrt(input_dim)
    y = rng.standard_normal((num_examples, 1)).astype(np.float32)
    x64 = x.astype(np.float64)
    eigenvalues = np.linalg.eigvalsh((x64 @ x64.T + 1.0) / num_examples)
    return Dataset(name="least_squares", x=x, y=y), eigenvalues


def _run(tmp_path, dataset, learning_rate, num_steps, log_every=5, **model_kwargs):
    model_kwargs = {"depth": 0, "parameterization": "standard", **model_kwargs}
    return experiment.run(
        str(tmp_path),
        dataset=lambda: dataset,
        model=lambda input_shape, output_dim: build_model(input_shape, output_dim, **model_kwargs),
        protocol=lambda: protocol.gd(
            learning_rate=learning_rate, num_steps=num_steps, log_every=log_every
        ),
        analysis_settings=analysis.Settings(tolerance=1e-9),
    )


def test_linear_least_squares_matches_closed_forms(tmp_path):
    dataset, eigenvalues = _least_squares_problem()
    beta = eigenvalues[-1]  # the Hessian's nonzero spectrum is K's
    summary = _run(tmp_path, dataset, 0.99 / beta, 200)  # η ≤ 1/β with room for rounding
    np.testing.assert_allclose(summary["sharpness"]["max"], beta, rtol=1e-4)
    np.testing.assert_allclose(summary["bound"]["mu"], eigenvalues[0], rtol=1e-4)
    np.testing.assert_allclose(summary["ntk"]["lambda_max_max"], beta, rtol=1e-4)
    assert summary["linearized"]["max_deviation"] < 1e-3
    assert summary["linearized"]["departure_step"] is None
    assert summary["a_posteriori"]["lipschitz_estimate"] == pytest.approx(0.0, abs=1e-6)
    assert summary["a_posteriori"]["positive"] is True
    assert summary["bound"]["holds"] is True
    assert summary["sharpness"]["step_size_ok"] is True


def test_step_above_two_over_sharpness_diverges(tmp_path):
    dataset, eigenvalues = _least_squares_problem()
    summary = _run(tmp_path, dataset, 2.2 / eigenvalues[-1], 300)
    assert summary["status"] == "diverged"
    assert summary["status_step"] < 300
    assert summary["sharpness"]["edge_of_stability"] is True
    rows = RunDirectory(str(tmp_path)).read_metrics()
    assert rows[-1]["step"] == summary["status_step"]


def test_wide_net_follows_linearized_prediction_and_narrow_net_leaves_it(tmp_path):
    dataset = teacher_student(n=16, input_dim=8, seed=1)
    wide = _run(
        tmp_path / "wide",
        dataset,
        0.5,
        200,
        depth=1,
        width=4096,
        parameterization="ntk",
        activation="tanh",
        weight_std=1.0,
    )
    narrow = _run(
        tmp_path / "narrow",
        dataset,
        4.0,
        200,
        depth=1,
        width=4,
        parameterization="ntk",
        activation="tanh",
        weight_std=1.0,
    )
    assert wide["linearized"]["max_deviation"] < 0.1
    assert wide["linearized"]["departure_step"] is None
    assert narrow["linearized"]["departure_step"] is not None
    assert narrow["linearized"]["max_deviation"] > 0.1


def test_report_reproduces_the_summary_of_a_finished_run(tmp_path):
    workdir = tmp_path / "run"
    train.launch(["digits_fc_gd.gin", "smoke.gin"], [], str(workdir))
    written = (workdir / "summary.json").read_bytes()
    (workdir / "summary.json").write_text(json.dumps({"settings": json.loads(written)["settings"]}))
    assert report.main([str(workdir), "--noplots"]) == 0
    assert (workdir / "summary.json").read_bytes() == written


def test_pl_ratio_lies_in_the_ntk_band_at_every_probe(tmp_path):
    # q = ||grad L||^2 / (2L) = r^T K r / ||r||^2 is a Rayleigh quotient of K (L* = 0).
    workdir = tmp_path / "band"
    summary = train.launch(
        ["digits_fc_gd.gin"],
        [
            "data.digits.n = 20",
            "data.digits.classes = (0, 1, 2)",
            "fc.build_model.width = 64",
            "protocol.gd.num_steps = 37",
            "protocol.gd.log_every = 5",
            "protocol.gd.probe_every = 10",
            "protocol.gd.learning_rate = 1.0",
            "diagnostics.ProbeSettings.measure_sharpness = False",
        ],
        str(workdir),
    )
    rows = RunDirectory(workdir).read_metrics()
    probed = [row for row in rows if "ntk_lambda_min" in row]
    assert [row["step"] for row in probed] == [0, 10, 20, 30, 37]  # and always the last step
    for row in probed:
        assert (
            row["ntk_lambda_min"] * (1 - 1e-4)
            <= row["pl_ratio"]
            <= row["ntk_lambda_max"] * (1 + 1e-4)
        )
        assert row["ntk_lambda_min"] > 0
    assert summary["ntk"]["lambda_min_init"] == probed[0]["ntk_lambda_min"]
    assert summary["ntk"]["kernel_drift_final"] == probed[-1]["kernel_drift"]
