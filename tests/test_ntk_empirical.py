"""Every NTK implementation equals J Jᵀ from an explicit per-example Jacobian, on tiny nets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lplr_tf.ntk import empirical_ntk, get_engine, tf32_disabled
from lplr_tf.ntk.layers import NTKConv2D, NTKDense

IMPLEMENTATIONS = ["jacobian", "structured", "auto"]


def reference_jacobian(model, x):
    """(n·O, P): a Python loop over examples and outputs, one tape.gradient each."""
    variables = [v.value for v in model.trainable_variables]
    rows = []
    for i in range(x.shape[0]):
        with tf.GradientTape(persistent=True) as tape:
            outputs = tf.unstack(tf.reshape(model(x[i : i + 1], training=False), [-1]))
        for output in outputs:
            grads = tape.gradient(output, variables, unconnected_gradients="zero")
            rows.append(np.concatenate([np.ravel(g.numpy()) for g in grads]))
    return np.stack(rows).astype(np.float64)


def reference_ntk(model, x1, x2=None):
    j1 = reference_jacobian(model, x1)
    j2 = j1 if x2 is None else reference_jacobian(model, x2)
    return j1 @ j2.T


def assert_kernel_close(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = np.max(np.abs(expected))
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)


def _randomize_batchnorm(model, rng):
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.normal(1.0, 0.5, c))
            layer.beta.assign(rng.normal(0.0, 0.5, c))
            layer.moving_mean.assign(rng.normal(0.0, 0.3, c))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c))


def fc_keras():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(5),
            keras.layers.Activation("tanh"),
            keras.layers.Dense(5, activation="gelu"),
            keras.layers.Dense(1),
        ]
    ), (4,)


def fc_ntk():
    return keras.Sequential(
        [
            keras.Input((4,)),
            NTKDense(6, weight_std=1.4, bias_std=0.3, seed=1),
            keras.layers.Activation("softplus"),
            NTKDense(5, weight_std=1.2, bias_std=0.5, seed=2),
            keras.layers.Activation("tanh"),
            NTKDense(1, bias_std=0.1, seed=3),
        ]
    ), (4,)


def multi_output():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(5, activation="tanh")(inputs)
    h = NTKDense(4, bias_std=0.2, seed=4)(h)
    h = keras.layers.Activation("relu")(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h)), (3,)


def resnet_keras():
    inputs = keras.Input((5, 5, 2))
    h = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    h = keras.layers.Conv2D(3, 2, dilation_rate=2, padding="same", activation="tanh")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    skip = h
    h = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(3, 3, padding="same", use_bias=False)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(keras.layers.Add()([h, skip]))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="valid")(h)
    h = keras.layers.Conv2D(4, 2, padding="valid", activation="softplus")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h)), (5, 5, 2)


def resnet_ntk():
    inputs = keras.Input((6, 6, 2))
    h = NTKConv2D(3, 3, bias_std=0.2, seed=5)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    r = NTKConv2D(3, 3, weight_std=1.4, seed=6)(h)
    r = keras.layers.ReLU()(r)
    h = keras.layers.Add()([h, r])
    h = NTKConv2D(4, 3, strides=2, bias_std=0.1, seed=7)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, NTKDense(2, bias_std=0.1, seed=8)(h)), (6, 6, 2)


def with_unknown_layer():
    """LayerNormalization is not a structured layer: its variables take the general path."""
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(2),
        ]
    ), (4,)


MODELS = {
    "fc_keras": fc_keras,
    "fc_ntk": fc_ntk,
    "multi_output": multi_output,
    "resnet_keras": resnet_keras,
    "resnet_ntk": resnet_ntk,
    "unknown_layer": with_unknown_layer,
}


@pytest.fixture(scope="module")
def cases():
    """Models, inputs and reference kernels, built once for the module."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    built = {}
    for name, build in MODELS.items():
        model, shape = build()
        _randomize_batchnorm(model, rng)
        x = rng.normal(size=(4,) + shape).astype(np.float32)
        built[name] = (model, x, reference_ntk(model, x))
    return built


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_explicit_jacobian(cases, name, implementation):
    model, x, expected = cases[name]
    assert_kernel_close(empirical_ntk(model, x, implementation=implementation), expected)


def test_structured_covers_known_layers_and_falls_back_per_layer(cases):
    for name in ("fc_keras", "fc_ntk", "multi_output", "resnet_keras", "resnet_ntk"):
        model, x, _ = cases[name]
        engine = get_engine(model, tf.constant(x), "auto", "full")
        assert engine.implementation == "structured"
        assert engine.num_fallback_params == 0, name
    model, x, _ = cases["unknown_layer"]
    engine = get_engine(model, tf.constant(x), "structured", "full")
    layer_norm = model.layers[1]
    assert engine.num_fallback_params == sum(int(np.prod(v.shape)) for v in layer_norm.weights)


@pytest.mark.parametrize("implementation", ["jacobian", "structured"])
@pytest.mark.parametrize("name", ["multi_output", "resnet_ntk"])
def test_cross_kernel_with_different_batches(cases, name, implementation):
    model, x, _ = cases[name]
    x2 = np.random.default_rng(1).normal(size=(3,) + x.shape[1:]).astype(np.float32)
    kernel = empirical_ntk(model, x, x2, implementation=implementation)
    assert_kernel_close(kernel, reference_ntk(model, x, x2))


@pytest.mark.parametrize("implementation", ["jacobian", "structured"])
def test_trace_mode_averages_output_diagonal_blocks(cases, implementation):
    model, x, expected = cases["multi_output"]
    n, num_outputs = x.shape[0], 3
    blocks = expected.reshape(n, num_outputs, n, num_outputs)
    average = np.einsum("iojo->ij", blocks) / num_outputs
    kernel = empirical_ntk(model, x, output_mode="trace", implementation=implementation)
    assert_kernel_close(kernel, average)


def test_linear_model_closed_form():
    rng = np.random.default_rng(3)
    n, d, num_outputs = 5, 3, 2
    x = rng.normal(size=(n, d)).astype(np.float32)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(num_outputs)])
    closed_form = np.kron(x.astype(np.float64) @ x.T + 1.0, np.eye(num_outputs))
    for implementation in ("jacobian", "structured"):
        assert_kernel_close(empirical_ntk(model, x, implementation=implementation), closed_form)


@pytest.mark.parametrize("implementation", ["jacobian", "structured"])
def test_blocked_equals_unblocked(cases, implementation):
    model, x, _ = cases["resnet_ntk"]
    x = np.concatenate([x, x[::-1] * 0.5, x[:2] + 1.0])  # n = 10
    x2 = x[:7] - 0.3
    unblocked = empirical_ntk(model, x, implementation=implementation).numpy()
    cross = empirical_ntk(model, x, x2, implementation=implementation).numpy()
    engine = get_engine(model, tf.constant(x), implementation, "full")
    # A budget for ~3 examples per block: 4 row blocks × 4 column blocks.
    budget = 2 * 3 * engine.bytes_per_example + 9 * engine.bytes_per_pair
    blocked = empirical_ntk(model, x, implementation=implementation, memory_budget_bytes=budget)
    assert engine.features.experimental_get_tracing_count() > 0  # the blocked path ran
    np.testing.assert_allclose(blocked, unblocked, rtol=1e-6, atol=1e-6 * np.abs(unblocked).max())
    np.testing.assert_array_equal(blocked, np.transpose(blocked))
    cross_blocked = empirical_ntk(model, x, x2, implementation=implementation, block_size=3)
    np.testing.assert_allclose(cross_blocked, cross, rtol=1e-6, atol=1e-6 * np.abs(cross).max())


def test_repeated_calls_do_not_retrace_and_see_new_weights(cases):
    model, x, _ = cases["fc_ntk"]
    empirical_ntk(model, x)
    engine = get_engine(model, tf.constant(x), "auto", "full")
    traces = engine.tracing_count()
    old_kernel = model.layers[0].kernel.numpy()
    try:
        model.layers[0].kernel.assign(old_kernel * 1.5)
        kernel = empirical_ntk(model, x)
        assert engine.tracing_count() == traces
        assert_kernel_close(kernel, reference_ntk(model, x))
    finally:
        model.layers[0].kernel.assign(old_kernel)


def test_subclassed_model_uses_structured_path():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(5, activation="tanh")
            self.out = NTKDense(2, bias_std=0.5, seed=9)

        def call(self, x):
            return self.out(self.hidden(x) + self.hidden(x * 0.5))  # a shared layer

    model = Net()
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    kernel = empirical_ntk(model, x, implementation="structured")
    assert get_engine(model, tf.constant(x), "structured", "full").num_fallback_params == 0
    assert_kernel_close(kernel, reference_ntk(model, x))


def test_tf32_setting_is_restored():
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    with tf32_disabled():
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    assert tf.config.experimental.tensor_float_32_execution_enabled() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"implementation": "fast"}, "implementation='fast'"),
        ({"output_mode": "diag"}, "output_mode='diag'"),
        ({"block_size": 0}, "block_size=0"),
        ({"memory_budget_bytes": -5}, "memory_budget_bytes=-5"),
    ],
)
def test_bad_options_raise_naming_the_value(cases, kwargs, message):
    model, x, _ = cases["fc_keras"]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        empirical_ntk(model, x, **kwargs)


def test_mismatched_shapes_raise_naming_the_shapes(cases):
    model, x, _ = cases["fc_keras"]
    with pytest.raises(ValueError, match=r"x2 has per-example shape \(3,\)"):
        empirical_ntk(model, x, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"x1 has per-example shape \(5,\)"):
        empirical_ntk(model, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"x1 has shape \(0, 4\)"):
        empirical_ntk(model, np.zeros((0, 4), np.float32))


def test_one_cache_for_engine_matfree_and_hessian_does_not_keep_the_model_alive():
    import gc
    import weakref

    from lplr_tf import hessian
    from lplr_tf.ntk import cache, ntk_vector_product

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x, y = np.ones((2, 3), np.float32), np.zeros((2, 2), np.float32)
    empirical_ntk(model, x)
    ntk_vector_product(model, x, np.ones(4, np.float32))
    hessian.hessian_vector_product(model, x, y, np.ones(8))
    hessian.measure_sharpness(model, x, y, max_iterations=3)
    namespaces = sorted({key[:2] for key in cache.cached_entries(model)})
    assert namespaces == [
        ("engine", "auto"),
        ("hessian", "product"),
        ("hessian", "sharpness"),
        ("matfree", False),
    ]
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_multi_input_batch_raises():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="x1 is a dict"):
        empirical_ntk(model, {"a": np.ones((2, 3))})


def test_kernel_assembled_on_several_devices_equals_the_unblocked_one():
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(7, activation="tanh"), keras.layers.Dense(2)]
    )
    x = np.random.default_rng(3).standard_normal((9, 5)).astype(np.float32)
    expected = empirical_ntk(model, x).numpy()
    devices = ["/cpu:0", "/cpu:0", "/cpu:0"]  # three row blocks, one per "replica"
    np.testing.assert_allclose(
        empirical_ntk(model, x, devices=devices).numpy(), expected, rtol=1e-6, atol=1e-6
    )
    x2 = x[:4] * 0.5
    np.testing.assert_allclose(
        empirical_ntk(model, x, x2, devices=devices).numpy(),
        empirical_ntk(model, x, x2).numpy(),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("cross", [False, True])
def test_device_assembly_equals_the_host_assembly(cases, cross):
    # On a GPU blocked kernels stay on the device as concatenated row panels; the same code
    # runs here on the CPU against the host path that writes blocks into one array.
    from lplr_tf.ntk import blocking

    model, x, _ = cases["multi_output"]
    x = tf.constant(np.concatenate([x, x * 0.5, x - 1.0]))  # n = 12
    x2 = None if not cross else x[:5] + 0.25
    engine = get_engine(model, x, "auto", "full")
    args = (engine.features, engine.contract, x, x2, 5, engine.rows_per_example, True)
    host = blocking.assemble(*args, on_host=True)
    device = blocking.assemble(*args, on_host=False)
    assert isinstance(host, np.ndarray) and isinstance(device, tf.Tensor)
    np.testing.assert_allclose(device.numpy(), host, rtol=1e-6, atol=1e-6 * np.abs(host).max())
    assert_kernel_close(host, reference_ntk(model, x.numpy(), None if x2 is None else x2.numpy()))
