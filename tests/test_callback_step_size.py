"""LPLRCallback's step size for Keras' mean squared error with O = 3 outputs.

Keras' "mse" is the mean over outputs and examples of (f − y)², i.e. 2L/O for the squared
loss L = 1/(2n) Σ‖f(x_i) − y_i‖². SGD with step η_opt on it is GD on L with η = 2·η_opt/O, so
a user model compiled with η_opt = η·O/2 takes the launcher's steps of size η exactly. The
callback, left to read η from the optimizer, must find that η: its rows (whose linearized
prediction uses η) and its summary (whose bounds use η) must equal the launcher's run with η.
"""

import keras
import numpy as np
import pytest
from reference_nets import tanh_model

import lplr_tf
from lplr_tf import experiment, protocol
from lplr_tf.data import Dataset
from lplr_tf.diagnostics import ProbeSettings
from lplr_tf.rundir import RunDirectory

N, D, OUTPUTS, WIDTH = 8, 4, 3, 8
LEARNING_RATE, NUM_STEPS, LOG_EVERY = 0.3, 12, 3
PROBES = ProbeSettings(measure_sharpness=False, a_priori_check=False)
# The launcher also knows the whole training set and its run facts; the rest must agree.
NOT_COMPARED = ("verdict", "run", "a_priori", "callback", "caveat")


def _data():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.standard_normal((N, OUTPUTS)).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    x, y = _data()
    workdir = tmp_path_factory.mktemp("launcher")
    summary = experiment.run(
        str(workdir),
        dataset=lambda: Dataset(name="three_outputs", x=x, y=y),
        model=lambda input_shape, output_dim: tanh_model(input_shape[0], output_dim, WIDTH),
        protocol=lambda: protocol.gd(
            learning_rate=LEARNING_RATE, num_steps=NUM_STEPS, log_every=LOG_EVERY
        ),
        probe_settings=PROBES,
    )
    return summary, RunDirectory(str(workdir)).read_metrics()


def _assert_close(actual, expected, path=""):
    if isinstance(expected, dict):
        for key, value in expected.items():
            _assert_close(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for index, (a, e) in enumerate(zip(actual, expected)):
            _assert_close(a, e, f"{path}[{index}]")
    elif isinstance(expected, float):
        assert actual is not None, path
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-7, err_msg=path)
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize(
    "loss",
    ["mse", keras.losses.MeanSquaredError(), keras.losses.mean_squared_error],
    ids=["string", "loss_object", "function"],
)
def test_mse_step_is_converted_to_the_launchers_eta(launcher, loss):
    launcher_summary, launcher_rows = launcher
    x, y = _data()
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(WIDTH),
            keras.layers.Activation("tanh"),
            keras.layers.Dense(OUTPUTS),
        ]
    )
    model.set_weights(tanh_model(D, OUTPUTS, WIDTH).get_weights())
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE * OUTPUTS / 2), loss=loss)
    callback = lplr_tf.LPLRCallback((x, y), every_n_steps=LOG_EVERY, probe_settings=PROBES)
    model.fit(x, y, batch_size=N, epochs=NUM_STEPS, shuffle=False, verbose=0, callbacks=[callback])

    summary = callback.summary()
    np.testing.assert_allclose(summary["settings"]["learning_rate"], LEARNING_RATE, rtol=1e-6)
    assert [row["step"] for row in callback.history] == [row["step"] for row in launcher_rows]
    for ours, theirs in zip(callback.history, launcher_rows):
        for key, value in theirs.items():
            if key != "wall_time":
                _assert_close(ours[key], value, f"step {theirs['step']} {key}")
    # The linearized prediction depends on η: it must have been followed, not just computed.
    assert launcher_rows[-1]["linearized_deviation"] < 0.5
    assert launcher_rows[-1]["loss"] < 0.5 * launcher_rows[0]["loss"]
    comparable = {k: v for k, v in launcher_summary.items() if k not in NOT_COMPARED}
    _assert_close(summary, comparable)
