"""Fully connected models: shapes, parameter counts, parameterizations, bad input."""

import numpy as np
import pytest

from lplr_tf.models.fc import build_model


def test_shapes_and_parameter_count():
    model = build_model((8, 8, 1), 3, width=16, depth=2, parameterization="ntk", bias_std=0.1)
    assert model.output_shape == (None, 3)
    assert model.count_params() == (64 * 16 + 16) + (16 * 16 + 16) + (16 * 3 + 3)
    assert model(np.zeros((5, 8, 8, 1), np.float32)).shape == (5, 3)


def test_depth_zero_is_linear():
    model = build_model((4,), 2, depth=0, parameterization="standard")
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    kernel, bias = (v.numpy() for v in model.trainable_variables)
    np.testing.assert_allclose(model(x).numpy(), x @ kernel + bias, rtol=1e-5, atol=1e-6)


def test_ntk_parameterization_scales_outputs_not_weights():
    model = build_model((10,), 1, width=20, depth=1, weight_std=1.5, bias_std=0.0)
    x = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    hidden_kernel, readout_kernel = (v.numpy() for v in model.trainable_variables)
    assert abs(hidden_kernel.std() - 1.0) < 0.2  # N(0, 1) weights
    hidden = np.maximum(x @ hidden_kernel * 1.5 / np.sqrt(10), 0.0)
    expected = hidden @ readout_kernel * 1.0 / np.sqrt(20)
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_ntk_output_variance_is_stable_in_width():
    x = np.random.default_rng(0).standard_normal((256, 32)).astype(np.float32)

    def output_variance(width):
        return np.mean(
            [
                np.var(build_model((32,), 1, width=width, depth=2, seed=s)(x).numpy())
                for s in range(6)
            ]
        )

    narrow, wide = output_variance(32), output_variance(2048)
    assert 0.5 < wide / narrow < 2.0, (narrow, wide)
    assert 0.2 < wide < 5.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"parameterization": "mup"}, "parameterization = 'mup'"),
        ({"width": 0}, r"fc.build_model.width = 0; expected an integer >= 1"),
        ({"width": "wide"}, r"fc.build_model.width = 'wide'; expected an integer >= 1"),
        ({"activation": "relux"}, "activation = 'relux'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model((4,), 1, **kwargs)
