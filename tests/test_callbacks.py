"""LPLRCallback inside a user's `model.fit`: same numbers as the launcher, caveats otherwise."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import lplr_tf
from lplr_tf import experiment, protocol
from lplr_tf.data import Dataset
from lplr_tf.diagnostics import ProbeSettings
from lplr_tf.keras_training import CAVEAT
from lplr_tf.losses import HalfSquaredError
from lplr_tf.models.fc import build_model

LEARNING_RATE, NUM_STEPS, LOG_EVERY, WIDTH = 0.4, 12, 3, 16


def _dataset(num_examples=10, input_dim=4, output_dim=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_examples, input_dim)).astype(np.float32)
    y = rng.standard_normal((num_examples, output_dim)).astype(np.float32)
    return Dataset(name="toy", x=x, y=y)


def _launcher_model(input_shape, output_dim):
    return build_model(
        input_shape,
        output_dim,
        width=WIDTH,
        depth=1,
        activation="tanh",
        parameterization="standard",
        seed=3,
    )


def _sequential(input_dim, output_dim, dtype=None):
    """The launcher's architecture as a user-written Sequential with the same initial weights."""
    model = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(WIDTH, dtype=dtype),
            keras.layers.Activation("tanh", dtype=dtype),
            keras.layers.Dense(output_dim, dtype=dtype),
        ]
    )
    model.set_weights(_launcher_model((input_dim,), output_dim).get_weights())
    return model


def _assert_close(actual, expected, path="", rtol=2e-4, atol=1e-6):
    if isinstance(expected, dict):
        assert set(expected) <= set(actual), f"{path}: missing {set(expected) - set(actual)}"
        for key, value in expected.items():
            _assert_close(actual[key], value, f"{path}.{key}", rtol, atol)
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_close(a, e, f"{path}[{i}]", rtol, atol)
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert actual is not None, path
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=path)
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("loss", ["mse", "half_squared"])
def test_callback_matches_launcher_gd(tmp_path, loss):
    dataset = _dataset()
    launcher_summary = experiment.run(
        str(tmp_path / "launcher"),
        dataset=lambda: dataset,
        model=_launcher_model,
        protocol=lambda: protocol.gd(
            learning_rate=LEARNING_RATE, num_steps=NUM_STEPS, log_every=LOG_EVERY
        ),
    )
    with open(tmp_path / "launcher" / "metrics.jsonl", encoding="utf-8") as file:
        launcher_rows = [json.loads(line) for line in file]

    model = _sequential(4, 1)
    # Keras "mse" is mean over outputs and examples of (f − y)², i.e. 2L/O: SGD(η·O/2) on it
    # takes exactly the launcher's GD steps on L; HalfSquaredError is L itself.
    if loss == "mse":
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE / 2), loss="mse")
    else:
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=HalfSquaredError())
    callback = lplr_tf.LPLRCallback(
        (dataset.x, dataset.y),
        every_n_steps=LOG_EVERY,
        probe_settings=ProbeSettings(measure_sharpness=True),
        metrics_path=str(tmp_path / "cb" / "metrics.jsonl"),
        logdir=str(tmp_path / "cb" / "tb"),
    )
    model.fit(
        dataset.x,
        dataset.y,
        batch_size=dataset.n,
        epochs=NUM_STEPS,
        shuffle=False,
        verbose=0,
        callbacks=[callback],
    )

    assert [r["step"] for r in callback.history] == [r["step"] for r in launcher_rows]
    assert [r["step"] for r in launcher_rows] == list(range(0, NUM_STEPS + 1, LOG_EVERY))
    keys = set(launcher_rows[0]) - {"wall_time"}
    for ours, theirs in zip(callback.history, launcher_rows):
        assert set(ours) == set(theirs)
        for key in keys:
            expected = theirs[key]
            if isinstance(expected, float):
                tol = 1e-3 if key == "sharpness" else 2e-4
                np.testing.assert_allclose(
                    ours[key], expected, rtol=tol, atol=1e-6, err_msg=f"step {theirs['step']} {key}"
                )
            else:
                assert ours[key] == expected, key
    with open(tmp_path / "cb" / "metrics.jsonl", encoding="utf-8") as file:
        written = [json.loads(line) for line in file]
    assert [r["step"] for r in written] == [r["step"] for r in callback.history]

    summary = callback.summary()
    assert summary["caveat"] is None
    assert summary["callback"]["plain_sgd"] and summary["callback"]["full_batch"]
    np.testing.assert_allclose(summary["settings"]["learning_rate"], LEARNING_RATE)
    comparable = {k: v for k, v in launcher_summary.items() if k != "verdict"}
    _assert_close(summary, comparable, rtol=1e-3)
    assert summary["status"] == launcher_summary["status"] == "max_steps"
    assert summary["fit"]["rate"] is not None and summary["bound"]["mu"] > 0


def test_callback_with_adam_and_cross_entropy_reports_with_caveat(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=12)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(3)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callback = lplr_tf.LPLRCallback((x, labels), every_n_steps=2, logdir=str(tmp_path / "tb"))
    model.fit(x, labels, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[callback])

    assert [r["step"] for r in callback.history] == [0, 2, 4, 6]
    for row in callback.history:
        assert row["loss"] > 0 and row["ntk_lambda_max"] >= row["ntk_lambda_min"]
        assert row["drift"] is not None
    summary = callback.summary()
    caveat = summary["caveat"]
    assert caveat.startswith(CAVEAT.split("{")[0])
    assert "not the squared loss" in caveat and "Adam is not plain SGD" in caveat
    assert "mini-batch" in caveat
    assert summary["callback"]["optimizer"] == "Adam"
    assert summary["callback"]["squared_loss"] is False
    np.testing.assert_allclose(summary["settings"]["learning_rate"], 0.01)
    assert summary["ntk"]["lambda_min_init"] > 0 and summary["drift"]["final"] > 0
    json.dumps(summary)


def test_callback_mixed_precision_measures_in_float32():
    dataset = _dataset(num_examples=8, output_dim=2)
    reference = _sequential(4, 2)
    mixed = _sequential(4, 2, dtype="mixed_float16")
    assert mixed.layers[0].compute_dtype == "float16"
    rows = {}
    for name, model in (("float32", reference), ("mixed", mixed)):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        callback = lplr_tf.LPLRCallback((dataset.x, dataset.y), every_n_steps=1)
        model.fit(dataset.x, dataset.y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
        rows[name] = callback.history[0]
        if name == "mixed":
            assert callback.summary()["callback"]["measured_on"].startswith("float32 copy")
    for key in ("loss", "grad_norm_sq", "ntk_lambda_min", "ntk_lambda_max", "ntk_trace"):
        np.testing.assert_allclose(rows["mixed"][key], rows["float32"][key], rtol=1e-5, err_msg=key)


def test_callback_rejects_bad_arguments():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="every_n_steps"):
        lplr_tf.LPLRCallback((x, x), every_n_steps=0)
    with pytest.raises(ValueError, match="same positive number of examples"):
        lplr_tf.LPLRCallback((x, x[:3]))
    with pytest.raises(ValueError, match="infinite"):
        lplr_tf.LPLRCallback(tf.data.Dataset.from_tensors((x, x)).repeat())


_MIRRORED_SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
import lplr_tf
from lplr_tf.diagnostics import ProbeSettings

NO_SHARPNESS = ProbeSettings(measure_sharpness=False)
rng = np.random.default_rng(0)
x = rng.standard_normal((12, 4)).astype(np.float32)
y = rng.standard_normal((12, 2)).astype(np.float32)
initial = None

def run(strategy, fit_in_scope):
    global initial
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="tanh"),
                                  keras.layers.Dense(2)])
        if initial is None:
            initial = model.get_weights()
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    callback = lplr_tf.LPLRCallback((x, y), every_n_steps=2, probe_settings=ProbeSettings())
    kwargs = dict(batch_size=12, epochs=6, shuffle=False, verbose=0, callbacks=[callback])
    if fit_in_scope:
        with strategy.scope():
            model.fit(x, y, **kwargs)
            diagnosed = lplr_tf.diagnose(model, x, y, probe_settings=NO_SHARPNESS)
    else:
        model.fit(x, y, **kwargs)
        diagnosed = lplr_tf.diagnose(model, x, y, probe_settings=NO_SHARPNESS)
    kind = type(model.trainable_variables[0].value).__name__
    return {"history": callback.history, "summary": callback.summary(), "diagnose": diagnosed,
            "variable": kind}

devices = ["/cpu:0", "/cpu:1"]
result = {
    "single": run(tf.distribute.get_strategy(), False),
    "mirrored_fit_outside_scope": run(tf.distribute.MirroredStrategy(devices), False),
    "mirrored_fit_in_scope": run(tf.distribute.MirroredStrategy(devices), True),
}
print("RESULT" + json.dumps(result))
"""


def test_callback_under_mirrored_strategy_matches_single_device():
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(x for x in completed.stdout.splitlines() if x.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    single = result.pop("single")
    assert single["variable"] == "ResourceVariable"
    for name, mirrored in result.items():
        assert mirrored["variable"] == "MirroredVariable", name
        assert [r["step"] for r in mirrored["history"]] == [0, 2, 4, 6]
        for ours, theirs in zip(mirrored["history"], single["history"]):
            for key, expected in theirs.items():
                if key == "wall_time":
                    continue
                if not isinstance(expected, float):
                    assert ours[key] == expected, (name, key)
                else:
                    np.testing.assert_allclose(
                        ours[key],
                        expected,
                        rtol=1e-4,
                        atol=1e-6,
                        err_msg=f"{name} step {theirs['step']} {key}",
                    )
        _assert_close(mirrored["diagnose"], single["diagnose"], name, rtol=1e-4)
        summary = {k: v for k, v in single["summary"].items() if k != "verdict"}
        _assert_close(mirrored["summary"], summary, name, rtol=1e-3)


def test_probe_data_from_a_finite_dataset_is_concatenated_once():
    from lplr_tf.callbacks import probe_arrays

    dataset = _dataset(num_examples=10, output_dim=2)
    batches = tf.data.Dataset.from_tensor_slices((dataset.x, dataset.y)).batch(4)
    x, y = probe_arrays(batches)
    np.testing.assert_array_equal(x, dataset.x)
    np.testing.assert_array_equal(y, dataset.y)
