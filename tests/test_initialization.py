"""Measured before the first step: η = c/β₀ from the sharpness, recorded once, reused on resume."""

import json

import numpy as np
import pytest

from lplr_tf import analysis, experiment, protocol
from lplr_tf.data import Dataset
from lplr_tf.diagnostics import ProbeSettings
from lplr_tf.models.fc import build_model
from lplr_tf.rundir import RunDirectory


def _least_squares(num_examples=10, input_dim=3, outputs=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_examples, input_dim)).astype(np.float32)
    y = rng.standard_normal((num_examples, outputs)).astype(np.float32)
    return Dataset(name="least squares", x=x, y=y)


def _run(workdir, dataset, factor, num_steps=6):
    return experiment.run(
        str(workdir),
        dataset=lambda: dataset,
        model=lambda input_shape, output_dim: build_model(
            input_shape, output_dim, depth=0, parameterization="standard", seed=1
        ),
        protocol=lambda: protocol.gd(
            learning_rate=123.0,  # replaced by c/β₀
            num_steps=num_steps,
            log_every=1,
            learning_rate_times_sharpness=factor,
        ),
        probe_settings=ProbeSettings(measure_sharpness=False),
        analysis_settings=analysis.Settings(tolerance=1e-12),
    )


def test_step_size_is_c_over_the_sharpness_at_initialization(tmp_path):
    dataset = _least_squares()
    summary = _run(tmp_path, dataset, factor=0.8)
    # A linear model's loss Hessian is ([X, 1]ᵀ[X, 1] / n) ⊗ I_O: β₀ is its top eigenvalue.
    augmented = np.concatenate([dataset.x.astype(np.float64), np.ones((10, 1))], axis=1)
    beta0 = np.linalg.eigvalsh(augmented.T @ augmented / 10).max()
    calibration = summary["run"]["learning_rate_calibration"]
    assert calibration["sharpness0"] == pytest.approx(beta0, rel=1e-4)
    assert calibration["learning_rate"] == pytest.approx(0.8 / beta0, rel=1e-4)
    assert calibration["configured_learning_rate"] == 123.0
    assert summary["settings"]["learning_rate"] == calibration["learning_rate"]
    # The run took GD steps of that size: the losses follow NumPy's GD with η = 0.8/β₀.
    init = build_model((3,), 2, depth=0, parameterization="standard", seed=1)
    kernel, bias = (v.numpy().astype(np.float64) for v in init.trainable_variables)
    eta = calibration["learning_rate"]
    x, y = dataset.x.astype(np.float64), dataset.y.astype(np.float64)
    for row in RunDirectory(tmp_path).read_metrics():
        residual = x @ kernel + bias - y
        assert row["loss"] == pytest.approx(0.5 * np.sum(residual**2) / 10, rel=1e-5)
        kernel, bias = kernel - eta * x.T @ residual / 10, bias - eta * residual.mean(axis=0)


def test_facts_are_recorded_once_and_reused_on_resume(tmp_path):
    dataset = _least_squares(seed=2)
    _run(tmp_path, dataset, factor=1.0, num_steps=3)
    run_dir = RunDirectory(tmp_path)
    facts = run_dir.read_facts()
    # The a-priori check judges η = 1/β₀ on the very β₀ the step was calibrated on.
    assert facts["a_priori"]["beta0"] == facts["learning_rate_calibration"]["sharpness0"]
    assert facts["a_priori"]["step_size_ok"] is True
    # A resumed run must report the recorded η, not measure it again: plant another value.
    planted = dict(facts, learning_rate=facts["learning_rate"] * 0.5)
    run_dir.write_facts(planted)
    (tmp_path / "summary.json").unlink()
    summary = _run(tmp_path, dataset, factor=1.0, num_steps=3)
    assert summary["settings"]["learning_rate"] == planted["learning_rate"]
    assert json.loads((tmp_path / "run.json").read_text()) == planted


@pytest.mark.parametrize("factor", [0.0, 2.0, -1.0, "one"])
def test_factor_outside_the_stable_range_is_refused(factor):
    with pytest.raises(ValueError, match=r"protocol.gd.learning_rate_times_sharpness = "):
        protocol.gd(learning_rate_times_sharpness=factor)
