"""LPLRCallback inside a user's `model.fit`: same numbers as the launcher, caveats otherwise."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import lplr_tf
from lplr_tf import experiment, protocol
from lplr_tf.data import Dataset
from lplr_tf.diagnostics import ProbeSettings
from lplr_tf.keras_training import caveat_reasons, caveat_text, optimizer_learning_rate
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
    # The launcher also checks the ball at initialization and knows the whole training set.
    differs = ("verdict", "run", "a_priori")
    comparable = {k: v for k, v in launcher_summary.items() if k not in differs}
    _assert_close(summary, comparable, rtol=1e-3)
    for fact in ("protocol", "ntk_output_mode", "num_outputs", "probe_size"):
        assert summary["run"][fact] == launcher_summary["run"][fact], fact
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
    assert caveat.startswith("Not plain full-batch GD on the squared loss (")
    assert summary["callback"]["caveat_reasons"] == [
        "loss 'sparse_categorical_crossentropy'",
        "Adam steps",
        "3 mini-batches per epoch",
    ]
    assert "η = 0.01" in caveat and len(caveat) < 400
    assert summary["not_covered"] is None  # logits: the theory's kernel can be regular
    assert summary["callback"]["optimizer"] == "Adam"
    assert summary["callback"]["squared_loss"] is False
    np.testing.assert_allclose(summary["settings"]["learning_rate"], 0.01)
    assert summary["ntk"]["lambda_min_init"] > 0 and summary["drift"]["final"] > 0
    json.dumps(summary)


def test_caveat_names_momentum_schedules_and_adaptive_steps_in_one_line():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    heavy_ball = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    rate, schedule_name = optimizer_learning_rate(heavy_ball)
    assert (rate, schedule_name) == (0.1, "ExponentialDecay")
    reasons = caveat_reasons("mse", 1.0, heavy_ball, schedule_name, steps_per_epoch=1)
    assert reasons == [
        "SGD with momentum 0.9, Nesterov",
        "ExponentialDecay schedule (η is its value at train begin)",
    ]
    text = caveat_text(reasons, 0.2)
    assert "plain GD with η = 0.2" in text and len(text) < 400
    plain = keras.optimizers.SGD(0.1)
    assert caveat_reasons(HalfSquaredError(), 1.0, plain, None, steps_per_epoch=1) == []
    assert caveat_text([], 0.1) is None
    clipped = keras.optimizers.RMSprop(0.1, clipnorm=1.0)
    assert caveat_reasons("mse", 1.0, clipped, None, 1) == ["RMSprop steps"]


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
from lplr_tf.keras_training import caveat_reasons, caveat_text, optimizer_learning_rate

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


def _rtol(key, row):
    """λ_min of a float32 kernel, hence λ_max/λ_min, carries a relative error of ~ε32·κ(K):
    the summation order of the replicas' row blocks moves it by that much (κ ~ 1e4 here)."""
    if key in ("ntk_lambda_min", "ntk_condition") and row.get("ntk_condition"):
        return 1e-4 + 10 * np.finfo(np.float32).eps * row["ntk_condition"]
    return 1e-4


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
                if key in ("wall_time", "sharpness_iterations"):
                    continue  # under a strategy the sharpness takes the fixed host loop
                if not isinstance(expected, float):
                    assert ours[key] == expected, (name, key)
                else:
                    np.testing.assert_allclose(
                        ours[key],
                        expected,
                        rtol=_rtol(key, theirs),
                        atol=1e-6,
                        err_msg=f"{name} step {theirs['step']} {key}",
                    )
        reference = single["diagnose"]
        for key, value in reference.items():
            path, rtol = f"{name}.{key}", _rtol(key, reference)
            _assert_close(mirrored["diagnose"][key], value, path, rtol=rtol)
        summary = {k: v for k, v in single["summary"].items() if k != "verdict"}
        _assert_close(mirrored["summary"], summary, name, rtol=1e-3)


def test_probe_data_from_a_finite_dataset_is_concatenated_once():
    from lplr_tf.callbacks import probe_arrays

    dataset = _dataset(num_examples=10, output_dim=2)
    batches = tf.data.Dataset.from_tensor_slices((dataset.x, dataset.y)).batch(4)
    x, y = probe_arrays(batches)
    np.testing.assert_array_equal(x, dataset.x)
    np.testing.assert_array_equal(y, dataset.y)


# Keras logs ----------------------------------------------------------------------------------


class _LogsSpy(keras.callbacks.Callback):
    """Keeps copies of the logs it is handed at every batch end."""

    def __init__(self):
        super().__init__()
        self.batch_logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs.append(dict(logs))


def _tensorboard_scalars(logdir, tag):
    values = []
    for path in sorted(tf.io.gfile.glob(f"{logdir}/train/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values.append((event.step, float(tf.make_ndarray(value.tensor))))
    return values


def test_logs_carry_the_last_measurement_to_history_tensorboard_and_later_callbacks(tmp_path):
    dataset = _dataset()
    model = _sequential(4, 1)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    callback = lplr_tf.LPLRCallback((dataset.x, dataset.y), every_n_steps=2, probe_every_n_steps=4)
    before, after = _LogsSpy(), _LogsSpy()
    tensorboard = keras.callbacks.TensorBoard(str(tmp_path / "keras_tb"))
    # Two batches of 5 per epoch, 3 epochs: optimizer steps 1..6; rows at 0, 2, 4, 6; probes at
    # 0, 4 and 6 (the last step).
    history = model.fit(
        dataset.x,
        dataset.y,
        batch_size=5,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[before, callback, after, tensorboard],
    )
    rows = {row["step"]: row for row in callback.history}
    assert sorted(rows) == [0, 2, 4, 6]
    assert [("ntk_lambda_min" in rows[s]) for s in (0, 2, 4, 6)] == [True, False, True, True]

    # Epoch ends (steps 2, 4, 6): each key holds its last measured value.
    logs = history.history
    assert sorted(logs) == sorted(
        ["loss", "lplr/step"] + [f"lplr/{k}" for k in rows[0] if k not in ("step", "wall_time")]
    )
    assert logs["lplr/step"] == [2, 4, 6]
    assert logs["lplr/pl_ratio"] == [rows[s]["pl_ratio"] for s in (2, 4, 6)]
    assert logs["lplr/drift"] == [rows[s]["drift"] for s in (2, 4, 6)]
    assert logs["lplr/ntk_lambda_min"] == [rows[s]["ntk_lambda_min"] for s in (0, 4, 6)]
    # Batch ends (steps 1..6): the callbacks after it see the rows measured so far; the ones
    # before it in the list do not (CallbackList hands one logs dict along the list).
    assert [b["lplr/step"] for b in after.batch_logs] == [0, 2, 2, 4, 4, 6]
    assert [b["lplr/loss"] for b in after.batch_logs] == [
        rows[s]["loss"] for s in (0, 2, 2, 4, 4, 6)
    ]
    assert all(not any(k.startswith("lplr/") for k in b) for b in before.batch_logs)
    # Keras' own TensorBoard callback writes them as epoch scalars.
    written = _tensorboard_scalars(tmp_path / "keras_tb", "epoch_lplr/pl_ratio")
    assert [step for step, _ in written] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in written], logs["lplr/pl_ratio"], rtol=1e-6)

    # log_keys narrows what goes into the logs; non-finite values are NaN (here: no PL ratio
    # once L ≤ L* = 10, i.e. at every step).
    narrow = lplr_tf.LPLRCallback(
        (dataset.x, dataset.y),
        every_n_steps=1,
        log_keys=["pl_ratio"],
        analysis_settings=lplr_tf.analysis.Settings(l_star=10.0),
    )
    logs = model.fit(
        dataset.x, dataset.y, batch_size=10, epochs=2, verbose=0, callbacks=[narrow]
    ).history
    assert sorted(logs) == ["loss", "lplr/pl_ratio", "lplr/step"]
    assert np.isnan(logs["lplr/pl_ratio"]).all() and logs["lplr/step"] == [7, 8]


def test_early_stopping_on_pl_ratio_stops_where_keras_rule_says():
    dataset = _dataset(num_examples=8, output_dim=2, seed=5)
    epochs = 30

    def fit(callbacks):
        model = _sequential(4, 2)
        model.compile(optimizer=keras.optimizers.SGD(0.2), loss="mse")
        lplr = lplr_tf.LPLRCallback((dataset.x, dataset.y), every_n_steps=1)
        history = model.fit(
            dataset.x,
            dataset.y,
            batch_size=8,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=[lplr, *callbacks],
        )
        return history.history, lplr

    reference, _ = fit([])
    ratios = reference["lplr/pl_ratio"]
    # EarlyStopping(mode="min", patience=1, min_delta=δ) stops at the first epoch e ≥ 1 whose
    # value does not beat the best so far by more than δ.
    delta = 0.25 * (ratios[0] - ratios[1])
    best, expected = ratios[0], None
    for epoch, value in enumerate(ratios[1:], start=1):
        if value < best - delta:
            best = value
        else:
            expected = epoch
            break
    assert expected is not None and 2 <= expected <= epochs - 3, ratios  # a real test

    stopper = keras.callbacks.EarlyStopping(
        monitor="lplr/pl_ratio", mode="min", patience=1, min_delta=delta
    )
    stopped, callback = fit([stopper])
    assert stopper.stopped_epoch == expected
    assert len(stopped["loss"]) == expected + 1
    assert stopped["lplr/pl_ratio"] == ratios[: expected + 1]
    assert callback.history[-1]["step"] == expected + 1
    assert callback.summary()["status"] == "incomplete"


# Continuing a record -------------------------------------------------------------------------


def _read_rows(path):
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def _assert_rows_equal(actual, expected, rtol=1e-5):
    assert set(actual) == set(expected), set(actual) ^ set(expected)
    for key, value in expected.items():
        if key == "wall_time":
            continue
        if isinstance(value, float):
            np.testing.assert_allclose(
                actual[key], value, rtol=rtol, atol=1e-7, err_msg=f"{expected['step']} {key}"
            )
        else:
            assert actual[key] == value, key


def _flat(weights):
    return np.concatenate([np.ravel(w) for w in weights]).astype(np.float64)


def _gd_reference(dataset, epochs, tmp_path):
    """The uninterrupted run: full-batch SGD on "mse" with the callback, `epochs` steps."""
    model = _sequential(4, 1)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE / 2), loss="mse")
    callback = lplr_tf.LPLRCallback(
        (dataset.x, dataset.y),
        every_n_steps=LOG_EVERY,
        metrics_path=str(tmp_path / "reference" / "metrics.jsonl"),
    )
    model.fit(
        dataset.x,
        dataset.y,
        batch_size=dataset.n,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[callback],
    )
    return {row["step"]: row for row in callback.history}


def test_second_fit_continues_the_record_from_the_first_theta0_and_k0(tmp_path):
    dataset = _dataset()
    reference = _gd_reference(dataset, NUM_STEPS, tmp_path)
    model = _sequential(4, 1)
    theta0 = _flat(model.get_weights())
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE / 2), loss="mse")
    metrics_path = tmp_path / "split" / "metrics.jsonl"
    callback = lplr_tf.LPLRCallback(
        (dataset.x, dataset.y), every_n_steps=LOG_EVERY, metrics_path=str(metrics_path)
    )
    kwargs = dict(batch_size=dataset.n, shuffle=False, verbose=0, callbacks=[callback])
    model.fit(dataset.x, dataset.y, epochs=5, **kwargs)
    second = model.fit(dataset.x, dataset.y, epochs=NUM_STEPS - 5, **kwargs)

    # Step 5 ended the first fit (probed there); the second goes on at 6, 9, 12.
    assert [row["step"] for row in callback.history] == [0, 3, 5, 6, 9, 12]
    assert second.history["lplr/step"] == [6, 6, 6, 9, 9, 9, 12]
    for row in callback.history:
        if row["step"] in reference:  # drift from θ₀, kernel drift from K₀, L^lin from r₀
            _assert_rows_equal(row, reference[row["step"]])
    np.testing.assert_allclose(
        callback.history[-1]["drift"], np.linalg.norm(_flat(model.get_weights()) - theta0), 1e-5
    )
    assert _read_rows(metrics_path) == callback.history  # one file, continued
    assert callback.summary()["steps"] == NUM_STEPS

    # A fresh optimizer (iterations = 0) starts a new record from the current weights.
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE / 2), loss="mse")
    model.fit(dataset.x, dataset.y, epochs=2, **kwargs)
    assert [row["step"] for row in callback.history] == [0, 2]
    assert callback.history[0]["drift"] == 0.0
    assert [row["step"] for row in _read_rows(metrics_path)] == [0, 2]


_INTERRUPTED_SCRIPT = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import numpy as np
import lplr_tf

work = sys.argv[1]
data = np.load(os.path.join(work, "data.npz"))
initial = np.load(os.path.join(work, "initial.npz"))
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16),
                          keras.layers.Activation("tanh"), keras.layers.Dense(1)])
model.set_weights([initial[f"w{i}"] for i in range(len(initial.files))])
model.compile(optimizer=keras.optimizers.SGD(float(sys.argv[2])), loss="mse")


class Preempted(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 8:
            raise SystemExit(3)


model.fit(data["x"], data["y"], batch_size=len(data["x"]), epochs=12, shuffle=False, verbose=0,
          callbacks=[keras.callbacks.BackupAndRestore(os.path.join(work, "backup"), save_freq=5),
                     lplr_tf.LPLRCallback((data["x"], data["y"]), every_n_steps=3,
                                          state_dir=os.path.join(work, "run")),
                     Preempted()])
"""


def test_backup_and_restore_resume_in_a_new_process_continues_from_theta0(tmp_path):
    import subprocess
    import sys

    dataset = _dataset()
    reference = _gd_reference(dataset, NUM_STEPS + 1, tmp_path)
    initial = _sequential(4, 1).get_weights()
    np.savez(tmp_path / "data.npz", x=dataset.x, y=dataset.y)
    np.savez(tmp_path / "initial.npz", **{f"w{i}": w for i, w in enumerate(initial)})

    # Process 1: backups every 5 steps, rows every 3, preempted after 8 steps.
    completed = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_SCRIPT, str(tmp_path), str(LEARNING_RATE / 2)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 3, completed.stderr[-4000:]
    run = tmp_path / "run"
    first_rows = _read_rows(run / "metrics.jsonl")
    assert [row["step"] for row in first_rows] == [0, 3, 6]

    # Process 2 (here): a new model and callback; BackupAndRestore restores step 5 (epoch 4),
    # and Keras reruns epochs 4..11: 8 more steps, to step 13.
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(16), keras.layers.Activation("tanh")]
        + [keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE / 2), loss="mse")
    callback = lplr_tf.LPLRCallback(
        (dataset.x, dataset.y), every_n_steps=LOG_EVERY, state_dir=str(run)
    )
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=5)
    model.fit(
        dataset.x,
        dataset.y,
        batch_size=dataset.n,
        epochs=12,
        shuffle=False,
        verbose=0,
        callbacks=[callback, backup],  # order does not matter for the restore
    )

    # Row 6 of process 1 was past the restored step 5: dropped, then measured again.
    rows = _read_rows(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 3, 6, 9, 12, 13]
    assert rows == callback.history
    assert rows[:2] == first_rows[:2]  # continued, not rewritten (wall_time included)
    for row in rows:  # drift from the original θ₀, kernel drift from the original K₀
        _assert_rows_equal(row, reference[row["step"]])
    np.testing.assert_allclose(
        rows[-1]["drift"],
        np.linalg.norm(_flat(model.get_weights()) - _flat(initial)),
        rtol=1e-5,
    )
    with np.load(run / "reference.npz", allow_pickle=False) as stored:
        assert sorted(stored.files) == ["kernel0", "residual0", "theta0"]
        np.testing.assert_array_equal(stored["theta0"], _flat(initial).astype(np.float32))
    assert callback.summary()["steps"] == 13


# Models the theory does not cover ------------------------------------------------------------


def test_softmax_output_is_reported_not_covered_and_its_logits_are_measured():
    rng = np.random.default_rng(7)
    num_examples, input_dim, classes = 5, 6, 3  # n ≤ d: the logits' kernel is regular
    x = rng.standard_normal((num_examples, input_dim)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0])
    model = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(classes, name="logits"),
            keras.layers.Softmax(),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy()
    )
    as_built = lplr_tf.LPLRCallback((x, labels), every_n_steps=2)
    logits = lplr_tf.LPLRCallback((x, labels), every_n_steps=2, output_layer="logits")
    model.fit(x, labels, batch_size=num_examples, epochs=6, verbose=0, callbacks=[as_built, logits])

    # Softmax: K = Θ/n has the null vectors e_i ⊗ 1 (each example's probabilities sum to 1).
    summary = as_built.summary()
    assert summary["not_covered"] == [
        "the softmax output makes K = Θ/n singular by construction (each example's "
        "probabilities sum to 1)"
    ]
    assert summary["verdict"].startswith("Not covered by the LPLR theory: the softmax output")
    assert "LPLRCallback(..., output_layer='logits')" in summary["verdict"]
    assert summary["callback"]["measured_verdict"] != summary["verdict"]
    for row in as_built.history:
        assert abs(row["ntk_lambda_min"]) <= 1e-6 * row["ntk_lambda_max"]

    # The logits f(x) = x W + b: Θ = (X Xᵀ + 1 1ᵀ) ⊗ I_O at every step, K = Θ/n.
    x64 = x.astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(np.kron(x64 @ x64.T + 1.0, np.eye(classes)) / num_examples)
    assert [row["step"] for row in logits.history] == [0, 2, 4, 6]
    for row in logits.history:
        np.testing.assert_allclose(row["ntk_lambda_min"], eigenvalues[0], rtol=1e-4)
        np.testing.assert_allclose(row["ntk_lambda_max"], eigenvalues[-1], rtol=1e-5)
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("logits").get_weights())
    residual = x64 @ kernel + bias - np.eye(classes)[labels]
    np.testing.assert_allclose(
        logits.history[-1]["loss"], 0.5 * np.sum(residual**2) / num_examples, rtol=1e-5
    )
    summary = logits.summary()
    assert summary["not_covered"] is None
    assert summary["callback"]["measured_on"] == "layer 'logits'"
    assert summary["verdict"].startswith("Stayed in a locally PL region")


def test_linearized_prediction_past_two_over_lambda_max_is_not_finite_and_quiet():
    """η·λ_max(K₀) = 11: the linearized residuals grow like 10^t, finite at step 100 (~1e100)
    but their square overflows float64 at step 200 (~1e400); the row records None there, and
    NumPy prints no overflow warning."""
    data = _dataset(num_examples=8)
    model = _sequential(4, 1)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=HalfSquaredError())
    lambda_max = lplr_tf.diagnose(model, data.x, data.y)["ntk_lambda_max"]
    callback = lplr_tf.LPLRCallback(
        (data.x, data.y),
        every_n_steps=100,
        learning_rate=11.0 / lambda_max,  # the prediction's η; training itself is tame
        probe_settings=ProbeSettings(measure_sharpness=False, a_priori_check=False),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.fit(data.x, data.y, batch_size=8, epochs=200, verbose=0, callbacks=[callback])
    first, last = callback.history[0], callback.history[-1]
    assert first["step"] == 0 and last["step"] == 200
    assert first["loss_linearized"] == pytest.approx(first["loss"], rel=1e-5)
    assert 1e150 < callback.history[1]["loss_linearized"] < 1e250  # step 100: finite
    assert last["loss_linearized"] is None and last["linearized_deviation"] is None
    assert np.isfinite(last["loss"])
