"""SGD: the logged loss is the full training set's, the probe fields are the probe subset's.

A tanh net with O = 2 outputs is trained by `protocol.sgd` on n = 12 examples with a probe
subset of m = 5. The weights of every logged step are read back from the run's checkpoints
and every row is recomputed in NumPy: `loss` on all n examples, `probe_loss`, ‖∇L‖², the PL
ratio, λ_min(K) and the sharpness on the m probe examples. Which m examples form the subset
is not assumed: the one subset whose loss and gradient match step 0 is found by search.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from reference_nets import TanhNet, flat_weights, tanh_model

from lplr_tf import experiment, protocol
from lplr_tf.data import Dataset
from lplr_tf.rundir import RunDirectory

N, D, OUTPUTS, WIDTH = 12, 4, 2, 8
PROBE_SIZE, BATCH_SIZE, NUM_STEPS, LOG_EVERY = 5, 4, 6, 3
LEARNING_RATE = 0.2
RTOL = 2e-4


def _model(input_shape, output_dim):
    return tanh_model(input_shape[0], output_dim, WIDTH)


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.standard_normal((N, OUTPUTS)).astype(np.float32)
    workdir = tmp_path_factory.mktemp("sgd")
    summary = experiment.run(
        str(workdir),
        dataset=lambda: Dataset(name="sgd_reference", x=x, y=y),
        model=_model,
        protocol=lambda: protocol.sgd(
            learning_rate=LEARNING_RATE,
            num_steps=NUM_STEPS,
            batch_size=BATCH_SIZE,
            log_every=LOG_EVERY,
            probe_size=PROBE_SIZE,
        ),
    )
    rows = RunDirectory(str(workdir)).read_metrics()
    thetas = {}
    for path in tf.train.CheckpointManager(
        tf.train.Checkpoint(), str(workdir / "checkpoints"), max_to_keep=None
    ).checkpoints:
        network = tanh_model(D, OUTPUTS, WIDTH)
        tf.train.Checkpoint(network=network).restore(path).expect_partial()
        thetas[int(path.rsplit("-", 1)[1])] = flat_weights(network)
    return {"x": x, "y": y, "rows": rows, "thetas": thetas, "summary": summary}


def _probe_subset(net, row, theta):
    """The one m-subset of the training set whose loss and ‖∇L‖² are the row's probe values."""
    matches = []
    for subset in itertools.combinations(range(N), PROBE_SIZE):
        index = list(subset)
        loss = net.loss(theta, net.x[index], net.y[index])
        if abs(loss / row["probe_loss"] - 1) < RTOL:
            gradient = net.gradient(theta, net.x[index], net.y[index])
            if abs(gradient @ gradient / row["grad_norm_sq"] - 1) < RTOL:
                matches.append(index)
    assert len(matches) == 1, matches
    return matches[0]


def test_sgd_loss_is_the_full_set_and_probe_fields_the_subset(sgd_run):
    rows, thetas = sgd_run["rows"], sgd_run["thetas"]
    assert [row["step"] for row in rows] == [0, 3, 6] == sorted(thetas)
    net = TanhNet(sgd_run["x"], sgd_run["y"], WIDTH)
    np.testing.assert_array_equal(thetas[0], flat_weights(tanh_model(D, OUTPUTS, WIDTH)))
    index = _probe_subset(net, rows[0], thetas[0])
    x_probe, y_probe = net.x[index], net.y[index]
    probe_net = TanhNet(x_probe, y_probe, WIDTH)
    for row in rows:
        theta = thetas[row["step"]]
        loss, probe_loss = net.loss(theta), probe_net.loss(theta)
        assert abs(probe_loss / loss - 1) > 0.05  # the two sets' losses differ
        gradient = probe_net.gradient(theta)
        kernel = probe_net.kernel(theta)
        expected = {
            "loss": loss,
            "probe_loss": probe_loss,
            "grad_norm_sq": gradient @ gradient,
            "pl_ratio": gradient @ gradient / (2 * probe_loss),
            "ntk_lambda_min": np.linalg.eigvalsh(kernel)[0],
            "ntk_lambda_max": np.linalg.eigvalsh(kernel)[-1],
            "sharpness": probe_net.sharpness(theta),
            "drift": np.linalg.norm(theta - thetas[0]),
        }
        for key, value in expected.items():
            if row["step"] == 0 and key == "drift":
                assert row[key] == 0.0
                continue
            rtol = 2e-3 if key.startswith("ntk_") else RTOL
            np.testing.assert_allclose(row[key], value, rtol=rtol, err_msg=f"{row['step']} {key}")
    # The weights moved: three SGD steps of batch 4 between logged rows.
    assert np.linalg.norm(thetas[6] - thetas[3]) > 1e-3
    # The training set's kernel fits the budget: each probe also measures its λ_min, and the
    # summary's μ is the training set's, below the interlacing value (m/n)·λ_min(K_probe).
    for row in rows:
        if "ntk_lambda_min" in row:
            expected = np.linalg.eigvalsh(net.kernel(thetas[row["step"]]))[0]
            np.testing.assert_allclose(row["train_ntk_lambda_min"], expected, rtol=2e-3)
    bound = sgd_run["summary"]["bound"]
    lambda_probe = min(np.linalg.eigvalsh(probe_net.kernel(thetas[s]))[0] for s in thetas)
    lambda_train = min(np.linalg.eigvalsh(net.kernel(theta))[0] for theta in thetas.values())
    np.testing.assert_allclose(bound["mu_probe"], lambda_probe, rtol=2e-3)
    np.testing.assert_allclose(bound["mu"], lambda_train, rtol=2e-3)
    assert 0 < bound["mu"] <= lambda_probe * PROBE_SIZE / N
    assert bound["kind"] == "reference" and bound["mu_source"] == "training set"
    np.testing.assert_allclose(sgd_run["summary"]["final_loss"], net.loss(thetas[6]), rtol=RTOL)
