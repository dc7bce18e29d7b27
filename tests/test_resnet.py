"""ResNet builder: shapes and parameter counts by hand, the structured NTK on it, bad input."""

import numpy as np
import pytest
import tensorflow as tf

from lplr_tf import ntk
from lplr_tf.models.resnet import build_model
from lplr_tf.ntk.layers import NTKConv2D, NTKDense

# A tiny config: 8x8x1 images, stem 2 channels, stage widths (2, 3), strides (1, 2).
TINY = dict(stage_widths=(2, 3), strides=(1, 2), blocks_per_stage=1, kernel_size=3)


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_shapes_and_parameter_count_standard_bn():
    model = build_model((8, 8, 1), 2, parameterization="standard", batch_norm=True, **TINY)
    assert model.output_shape == (None, 2)
    assert model.get_layer("stage1_block0_add").output.shape == (None, 4, 4, 3)
    assert model.get_layer("stage0_block0_add").output.shape == (None, 8, 8, 2)
    # Convolutions have no bias under BN; BN has gamma, beta trainable per channel.
    stem = 3 * 3 * 1 * 2 + 2 * 2
    stage0 = (3 * 3 * 2 * 2 + 2 * 2) * 2  # identity skip: 2 -> 2 channels, stride 1
    stage1 = (3 * 3 * 2 * 3 + 2 * 3) + (3 * 3 * 3 * 3 + 2 * 3) + (1 * 1 * 2 * 3 + 2 * 3)
    readout = 3 * 2 + 2
    assert _trainable_count(model) == stem + stage0 + stage1 + readout == 269
    bn_channels = 2 + 2 + 2 + 3 + 3 + 3
    assert model.count_params() == 269 + 2 * bn_channels  # moving mean and variance
    assert model(np.zeros((5, 8, 8, 1), np.float32)).shape == (5, 2)


def test_parameter_count_ntk_without_bn():
    model = build_model(
        (8, 8, 1), 1, parameterization="ntk", batch_norm=False, bias_std=0.1, **TINY
    )
    conv_weights = 18 + 36 + 36 + 54 + 81 + 6
    conv_biases = 2 + 2 + 2 + 3 + 3 + 3
    assert model.count_params() == conv_weights + conv_biases + (3 + 1)
    kinds = {type(layer) for layer in model.layers}
    assert NTKConv2D in kinds and NTKDense in kinds
    assert not any(isinstance(layer, tf.keras.layers.BatchNormalization) for layer in model.layers)


def test_seed_sets_the_initialization():
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
    a, b, c = (build_model((8, 8, 1), 1, seed=s, **TINY)(x).numpy() for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def _randomize(model, seed=0):
    """Random weights everywhere, moving variances positive: BN in inference mode non-trivial."""
    rng = np.random.default_rng(seed)
    for variable in model.variables:
        value = rng.standard_normal(variable.shape).astype(np.float32) * 0.5
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value)


def _explicit_ntk(model, x):
    """Θ = J Jᵀ with J (n·O, P) from one tape.gradient per example and output."""
    variables = model.trainable_variables
    rows = []
    for i in range(x.shape[0]):
        with tf.GradientTape(persistent=True) as tape:
            f = model(x[i : i + 1], training=False)
        for o in range(f.shape[-1]):
            cotangent = tf.one_hot([o], f.shape[-1], dtype=f.dtype)  # row o of J for example i
            grads = tape.gradient(f, variables, output_gradients=cotangent)
            rows.append(np.concatenate([g.numpy().reshape(-1) for g in grads]))
        del tape
    jacobian = np.stack(rows).astype(np.float64)
    return jacobian @ jacobian.T


@pytest.mark.parametrize(
    "parameterization, batch_norm, output_dim",
    [
        ("standard", True, 2),
        ("ntk", True, 1),
        ("ntk", False, 2),
    ],
)
def test_structured_ntk_matches_explicit_jacobian(parameterization, batch_norm, output_dim):
    model = build_model(
        (8, 8, 1), output_dim, parameterization=parameterization, batch_norm=batch_norm, **TINY
    )
    _randomize(model)
    x = tf.constant(np.random.default_rng(1).standard_normal((5, 8, 8, 1)).astype(np.float32))
    theta = ntk.empirical_ntk(model, x, implementation="structured").numpy()
    engine = ntk.get_engine(model, x, implementation="structured")
    assert engine.implementation == "structured"
    assert engine.num_fallback_params == 0  # every ResNet layer is on the structured path
    expected = _explicit_ntk(model, x)
    assert theta.shape == (5 * output_dim, 5 * output_dim)
    np.testing.assert_allclose(theta, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize(
    "kwargs, input_shape, message",
    [
        ({}, (64,), r"examples of shape \(64,\).*data.digits.image = True"),
        ({"stage_widths": (8, 16), "strides": (1,)}, (8, 8, 1), "one stride per stage"),
        ({"pooling": "mean"}, (8, 8, 1), "pooling = 'mean'"),
        ({"parameterization": "mup"}, (8, 8, 1), "parameterization = 'mup'"),
        ({"activation": "relux"}, (8, 8, 1), "activation = 'relux'"),
        ({"stage_widths": (8, 0), "strides": (1, 2)}, (8, 8, 1), r"stage_widths = \(8, 0\)"),
        ({"blocks_per_stage": 0}, (8, 8, 1), "blocks_per_stage = 0"),
        ({"stage_widths": (4, 4, 4, 4), "strides": (2, 2, 2, 2)}, (8, 8, 1), "downsample by 16"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, input_shape, message):
    with pytest.raises(ValueError, match=message):
        build_model(input_shape, 1, **kwargs)


def test_calibrate_batch_norm_makes_inference_match_training():
    from lplr_tf.models.batch_norm import calibrate_batch_norm

    model = build_model((8, 8, 1), 1, **TINY)
    x = tf.constant(np.random.default_rng(2).standard_normal((16, 8, 8, 1)).astype(np.float32) * 3)
    before = [v.numpy().copy() for v in model.trainable_variables]
    assert not np.allclose(model(x, training=False), model(x, training=True), atol=1e-3)
    assert calibrate_batch_norm(model, x) == 6
    np.testing.assert_allclose(model(x, training=False), model(x, training=True), atol=1e-4)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
    assert {layer.momentum for layer in model.layers if hasattr(layer, "moving_mean")} == {0.9}
    assert calibrate_batch_norm(build_model((8, 8, 1), 1, batch_norm=False, **TINY), x) == 0
