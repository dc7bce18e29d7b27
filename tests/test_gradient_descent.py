"""Full-batch GD against closed forms: NumPy GD on a linear model, and the quadratic's rate."""

import json

import numpy as np

from lplr_tf import analysis, experiment, protocol
from lplr_tf.data import Dataset
from lplr_tf.diagnostics import ProbeSettings
from lplr_tf.models.fc import build_model


def _linear_dataset(num_examples, input_dim, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_examples, input_dim)).astype(np.float32)
    y = rng.standard_normal((num_examples, 2)).astype(np.float32)
    return Dataset(name="linear", x=x, y=y)


def _read_rows(workdir):
    with open(workdir / "metrics.jsonl", encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def _run_linear(tmp_path, dataset, learning_rate, num_steps, log_every, **kwargs):
    return experiment.run(
        str(tmp_path),
        dataset=lambda: dataset,
        model=lambda input_shape, output_dim: build_model(
            input_shape, output_dim, depth=0, parameterization="standard", seed=3
        ),
        protocol=lambda: protocol.gd(
            learning_rate=learning_rate, num_steps=num_steps, log_every=log_every
        ),
        **kwargs,
    )


def test_gd_matches_numpy_gd_on_a_linear_model(tmp_path):
    dataset = _linear_dataset(12, 5)
    _run_linear(
        tmp_path,
        dataset,
        0.1,
        6,
        1,
        probe_settings=ProbeSettings(measure_ntk=False, measure_sharpness=False),
    )
    rows = _read_rows(tmp_path)
    assert [row["step"] for row in rows] == list(range(7))

    init = build_model((5,), 2, depth=0, parameterization="standard", seed=3)
    kernel, bias = (v.numpy().astype(np.float64) for v in init.trainable_variables)
    theta0 = np.concatenate([kernel.ravel(), bias])
    x, y, n = dataset.x.astype(np.float64), dataset.y.astype(np.float64), 12
    for row in rows:
        residual = x @ kernel + bias - y
        loss = 0.5 * np.sum(residual**2) / n
        grad_kernel, grad_bias = x.T @ residual / n, residual.mean(axis=0)
        grad_norm_sq = np.sum(grad_kernel**2) + np.sum(grad_bias**2)
        drift = np.linalg.norm(np.concatenate([kernel.ravel(), bias]) - theta0)
        np.testing.assert_allclose(row["loss"], loss, rtol=1e-5)
        np.testing.assert_allclose(row["grad_norm_sq"], grad_norm_sq, rtol=1e-4)
        np.testing.assert_allclose(row["pl_ratio"], grad_norm_sq / (2 * loss), rtol=1e-4)
        np.testing.assert_allclose(row["drift"], drift, rtol=1e-4, atol=1e-6)
        kernel, bias = kernel - 0.1 * grad_kernel, bias - 0.1 * grad_bias
    assert rows[0]["drift"] == 0.0


def test_fitted_rate_matches_slowest_mode_of_a_quadratic(tmp_path):
    # Overparameterized linear regression (n < d): L* = 0 and the residual evolves as
    # r_t = (I - eta K)^t r_0 with K = (X X^T + 1 1^T) / n, so the loss ends up contracting
    # by (1 - eta lambda_min)^2 per step once the faster modes have died out.
    rng = np.random.default_rng(0)
    num_examples, input_dim = 6, 40
    scales = np.array([0.35, 1.0, 1.2, 1.4, 1.6, 1.8]) * np.sqrt(num_examples)
    rows, _ = np.linalg.qr(rng.standard_normal((input_dim, num_examples)))
    x = (scales[:, None] * rows.T).astype(np.float32)
    y = rng.standard_normal((num_examples, 1)).astype(np.float32)
    dataset = Dataset(name="quadratic", x=x, y=y)
    x64 = x.astype(np.float64)
    kernel = (x64 @ x64.T + 1.0) / num_examples
    lambda_min = np.linalg.eigvalsh(kernel)[0]
    learning_rate = 0.5
    summary = _run_linear(
        tmp_path,
        dataset,
        learning_rate,
        300,
        5,
        probe_settings=ProbeSettings(measure_sharpness=False),
        analysis_settings=analysis.Settings(tolerance=1e-9),
    )
    expected = (1 - learning_rate * lambda_min) ** 2
    assert abs(summary["fit"]["rate"] - expected) / (1 - expected) < 0.01 * 30
    np.testing.assert_allclose(summary["fit"]["rate"], expected, rtol=0.01)
    assert summary["fit"]["r2"] > 0.999
