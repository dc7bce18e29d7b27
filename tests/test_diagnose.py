"""lplr_tf.diagnose against the closed forms of a linear model f(x) = x W + b; its inputs (arrays,
datasets), a named layer's output, and the outputs the theory does not cover."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import lplr_tf
from lplr_tf.diagnostics import ProbeSettings as PROBE
from lplr_tf.keras_training import logits_hint, not_covered_reasons

NO_SHARPNESS = PROBE(measure_sharpness=False)


def _linear(input_dim, output_dim, seed=0):
    model = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(
                output_dim,
                kernel_initializer=keras.initializers.RandomNormal(seed=seed),
                bias_initializer=keras.initializers.RandomNormal(seed=seed + 1),
            ),
        ]
    )
    return model


def _data(num_examples, input_dim, output_dim, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_examples, input_dim)).astype(np.float32)
    y = rng.standard_normal((num_examples, output_dim)).astype(np.float32)
    return x, y


def test_diagnose_matches_linear_closed_forms():
    num_examples, input_dim, output_dim = 5, 6, 2  # n ≤ d: K is positive definite
    x, y = _data(num_examples, input_dim, output_dim)
    model = _linear(input_dim, output_dim)
    result = lplr_tf.diagnose(model, x, y)

    kernel, bias = (v.numpy().astype(np.float64) for v in model.trainable_variables)
    x64, n = x.astype(np.float64), num_examples
    residual = x64 @ kernel + bias - y
    loss = 0.5 * np.sum(residual**2) / n
    grad_norm_sq = np.sum((x64.T @ residual / n) ** 2) + np.sum(residual.mean(axis=0) ** 2)
    # Θ = (X Xᵀ + 1 1ᵀ) ⊗ I_O (example-major), K = Θ / n.
    ntk = np.kron(x64 @ x64.T + 1.0, np.eye(output_dim)) / n
    eigenvalues = np.linalg.eigvalsh(ntk)
    augmented = np.concatenate([x64, np.ones((n, 1))], axis=1)
    hessian_top = np.linalg.eigvalsh(augmented.T @ augmented / n)[-1]

    np.testing.assert_allclose(result["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(result["grad_norm_sq"], grad_norm_sq, rtol=1e-4)
    np.testing.assert_allclose(result["pl_ratio"], grad_norm_sq / (2 * loss), rtol=1e-4)
    np.testing.assert_allclose(result["ntk_lambda_min"], eigenvalues[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result["ntk_lambda_max"], eigenvalues[-1], rtol=1e-5)
    np.testing.assert_allclose(result["ntk_trace"], eigenvalues.sum(), rtol=1e-5)
    np.testing.assert_allclose(result["ntk_condition"], eigenvalues[-1] / eigenvalues[0], rtol=1e-3)
    np.testing.assert_allclose(result["sharpness"], hessian_top, rtol=1e-4)
    # q is a Rayleigh quotient of K (L* = 0).
    assert result["ntk_lambda_min"] <= result["pl_ratio"] <= result["ntk_lambda_max"]


def test_diagnose_trace_mode_targets_and_options():
    x, y = _data(6, 3, 1, seed=2)
    model = _linear(3, 1)
    flat = lplr_tf.diagnose(
        model, x, y[:, 0], probe_settings=PROBE(ntk_output_mode="trace", measure_sharpness=False)
    )
    full = lplr_tf.diagnose(model, x, y, probe_settings=NO_SHARPNESS)
    assert "sharpness" not in flat
    for key in ("loss", "grad_norm_sq", "ntk_lambda_min", "ntk_lambda_max"):
        np.testing.assert_allclose(flat[key], full[key], rtol=1e-6)
    no_ntk = lplr_tf.diagnose(
        model, x, y, probe_settings=PROBE(measure_ntk=False, measure_sharpness=False)
    )
    assert set(no_ntk) == {"loss", "grad_norm_sq", "pl_ratio"}

    # Integer class ids are one-hot encoded for a model with O > 1 outputs.
    classifier = _linear(3, 4)
    labels = np.array([0, 3, 1, 2, 2, 0])
    by_id = lplr_tf.diagnose(classifier, x, labels, probe_settings=NO_SHARPNESS)
    one_hot = lplr_tf.diagnose(
        classifier, x, np.eye(4, dtype=np.float32)[labels], probe_settings=NO_SHARPNESS
    )
    np.testing.assert_allclose(by_id["loss"], one_hot["loss"], rtol=1e-6)

    with pytest.raises(ValueError, match=r"expected \(n, O\) = \(6, 4\)"):
        lplr_tf.diagnose(classifier, x, y)
    with pytest.raises(ValueError, match="ntk_output_mode = 'diag'"):
        PROBE(ntk_output_mode="diag")


def test_summarize_is_public_on_a_callback_history():
    x, y = _data(8, 3, 1, seed=4)
    model = _linear(3, 1)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=lplr_tf.losses.HalfSquaredError())
    callback = lplr_tf.LPLRCallback((x, y), every_n_steps=5)
    model.fit(x, y, batch_size=8, epochs=20, shuffle=False, verbose=0, callbacks=[callback])
    summary = lplr_tf.analysis.summarize(callback.history, learning_rate=0.1)
    assert summary["status"] in ("max_steps", "converged")
    assert summary["fit"]["rate"] is not None and 0 < summary["fit"]["rate"] < 1
    # The bound ρ_bound = 1 − η·min λ_min(K_t) holds for plain GD on a linear model.
    assert summary["bound"]["holds"] is True
    assert callback.summary()["bound"] == summary["bound"]


def test_diagnose_takes_a_dataset_like_the_callback():
    x, y = _data(7, 3, 2, seed=6)
    model = _linear(3, 2)
    from_arrays = lplr_tf.diagnose(model, x, y, probe_settings=NO_SHARPNESS)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)  # batches of 3, 3, 1
    assert lplr_tf.diagnose(model, batches, probe_settings=NO_SHARPNESS) == from_arrays
    weighted = tf.data.Dataset.from_tensor_slices((x, y, np.ones(7, np.float32))).batch(4)
    assert lplr_tf.diagnose(model, weighted, probe_settings=NO_SHARPNESS) == from_arrays
    # Closed form of the linear model: Θ = (X Xᵀ + 1) ⊗ I (n = 7 > d + 1 = 4: λ_min(K) = 0).
    ntk = np.kron(x.astype(np.float64) @ x.T.astype(np.float64) + 1.0, np.eye(2)) / 7
    np.testing.assert_allclose(from_arrays["ntk_lambda_max"], np.linalg.eigvalsh(ntk)[-1], 1e-5)

    with pytest.raises(ValueError, match=r"x is a tf.data.Dataset and y is a ndarray"):
        lplr_tf.diagnose(model, batches, y)
    with pytest.raises(ValueError, match=r"x is a ndarray and y is None"):
        lplr_tf.diagnose(model, x)
    unbatched = tf.data.Dataset.from_tensor_slices((x, y[:, 0]))
    with pytest.raises(ValueError, match=r"unbatched elements .* Call dataset.batch\(k\)"):
        lplr_tf.diagnose(model, unbatched)
    with pytest.raises(ValueError, match=r"dataset.batch\(k\)"):
        lplr_tf.diagnose(model, tf.data.Dataset.from_tensor_slices((x, y)))


def test_diagnose_measures_a_named_layer_and_warns_on_a_softmax():
    x, y = _data(4, 5, 3, seed=8)  # n ≤ d: the logits' kernel is regular
    labels = np.array([2, 0, 1, 2])
    logits = _linear(5, 3)
    model = keras.Sequential([logits, keras.layers.Softmax(name="probabilities")])
    model.build((None, 5))
    expected = lplr_tf.diagnose(logits, x, labels, probe_settings=NO_SHARPNESS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured = lplr_tf.diagnose(
            model, x, labels, probe_settings=NO_SHARPNESS, output_layer=logits.name
        )
    assert measured == expected
    x64 = x.astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(np.kron(x64 @ x64.T + 1.0, np.eye(3)) / 4)
    np.testing.assert_allclose(measured["ntk_lambda_min"], eigenvalues[0], rtol=1e-4)

    with pytest.warns(UserWarning, match="Not covered by the LPLR theory: the softmax output"):
        probabilities = lplr_tf.diagnose(model, x, labels, probe_settings=NO_SHARPNESS)
    assert abs(probabilities["ntk_lambda_min"]) <= 1e-6 * probabilities["ntk_lambda_max"]

    with pytest.raises(ValueError, match=r"output_layer='logitz' is not a layer of model"):
        lplr_tf.diagnose(model, x, labels, output_layer="logitz")


class _Subclassed(keras.Model):
    """A model whose graph Keras cannot show: the softmax is inside `call`."""

    def __init__(self, softmax):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(3)
        self.softmax = softmax

    def call(self, inputs):
        outputs = self.out(self.hidden(inputs))
        return tf.nn.softmax(outputs) if self.softmax else outputs


def test_not_covered_outputs_are_found_by_activation_or_by_their_sums():
    x, _ = _data(6, 4, 1, seed=9)
    one_hot = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]

    def reasons(model, targets=one_hot):
        return not_covered_reasons(model, model(x), targets)

    assert "sum to 1," in reasons(_Subclassed(softmax=True))[0]
    assert reasons(_Subclassed(softmax=False)) == []
    zero = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="zeros")])
    assert reasons(zero) == []  # outputs that do not vary are not a softmax
    log_softmax = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "log_softmax")])
    assert reasons(log_softmax)[0].startswith("the log_softmax output makes K")

    # A sigmoid reaches 0/1 only at infinite logits; targets inside (0, 1) are attainable.
    sigmoid = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Activation("sigmoid")]
    )
    assert reasons(sigmoid) == [
        "the sigmoid output reaches the targets 0/1 only at infinite logits, where K = Θ/n vanishes"
    ]
    assert reasons(sigmoid, 0.2 + 0.6 * one_hot) == []
    assert logits_hint(sigmoid, "diagnose") == (
        f"diagnose(..., output_layer={sigmoid.layers[0].name!r})"
    )
    subclassed = _Subclassed(softmax=True)
    with pytest.raises(ValueError, match="needs a Sequential or functional model"):
        lplr_tf.diagnose(
            subclassed, x, one_hot, output_layer=subclassed.hidden.name, probe_settings=NO_SHARPNESS
        )
