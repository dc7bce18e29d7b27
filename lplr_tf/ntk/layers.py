"""NTK-parameterized layers.

In the NTK parameterization (Jacot et al. 2018; the convention of neural-tangents) the
trainable weights are drawn from N(0, 1) and the layer scales its output instead:

    z = (sigma_w / sqrt(fan_in)) * (a @ W) + sigma_b * b,      W_ij, b_j ~ N(0, 1).

The forward pass at initialization has the same distribution as the standard
parameterization with W ~ N(0, sigma_w^2 / fan_in), but gradients with respect to W are
O(1/sqrt(fan_in)), so that as the width grows the empirical NTK converges to a deterministic
limit and stays constant during training.

Each layer exposes the Python floats `weight_scale` (sigma_w / sqrt(fan_in)) and
`bias_scale` (sigma_b): the structured NTK path multiplies the layer inputs and the bias
term by them.
"""

import math

import keras


def _add_standard_normal_weights(layer, kernel_shape):
    """Creates `layer.kernel` (kernel_shape) and `layer.bias` (or None when sigma_b = 0), both
    N(0, 1), and sets `layer.weight_scale` = sigma_w / sqrt(fan_in), fan_in = all but the last
    kernel dimension."""
    fan_in = math.prod(kernel_shape[:-1])
    layer.weight_scale = layer.weight_std / math.sqrt(fan_in)
    layer.kernel = layer.add_weight(
        name="kernel",
        shape=kernel_shape,
        initializer=keras.initializers.RandomNormal(stddev=1.0, seed=layer.seed),
    )
    layer.bias = None
    if layer.bias_std > 0.0:
        bias_seed = None if layer.seed is None else layer.seed + 1
        layer.bias = layer.add_weight(
            name="bias",
            shape=(kernel_shape[-1],),
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=bias_seed),
        )


class NTKDense(keras.layers.Layer):
    """Dense layer in the NTK parameterization.

    Input shape (batch, fan_in); output shape (batch, units).

    Args:
      units: Output width.
      weight_std: sigma_w; the output is scaled by sigma_w / sqrt(fan_in).
      bias_std: sigma_b; 0 disables the bias (no bias variable is created).
      seed: Seed of the N(0, 1) initializers.
    """

    def __init__(self, units, weight_std=1.0, bias_std=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.weight_std = float(weight_std)
        self.bias_std = float(bias_std)
        self.seed = seed
        self.weight_scale = None
        self.bias_scale = self.bias_std

    def build(self, input_shape):
        _add_standard_normal_weights(self, (int(input_shape[-1]), self.units))

    def call(self, inputs):
        outputs = keras.ops.matmul(inputs, self.kernel) * self.weight_scale
        if self.bias is not None:
            outputs = outputs + self.bias * self.bias_scale
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, weight_std=self.weight_std, bias_std=self.bias_std, seed=self.seed
        )
        return config


class NTKConv2D(keras.layers.Layer):
    """2-D convolution in the NTK parameterization (channels last, stride, 'same' padding).

    Input shape (batch, height, width, in_channels); output shape
    (batch, height', width', filters). fan_in = kernel_size**2 * in_channels.

    Args:
      filters: Output channels.
      kernel_size: Side of the square kernel.
      strides: Stride in both spatial dimensions.
      padding: "same" or "valid".
      weight_std: sigma_w; the output is scaled by sigma_w / sqrt(fan_in).
      bias_std: sigma_b; 0 disables the bias.
      seed: Seed of the N(0, 1) initializers.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="same",
        weight_std=1.0,
        bias_std=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = padding
        self.weight_std = float(weight_std)
        self.bias_std = float(bias_std)
        self.seed = seed
        self.weight_scale = None
        self.bias_scale = self.bias_std

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        _add_standard_normal_weights(
            self, (self.kernel_size, self.kernel_size, in_channels, self.filters)
        )

    def call(self, inputs):
        outputs = (
            keras.ops.conv(inputs, self.kernel, strides=self.strides, padding=self.padding)
            * self.weight_scale
        )
        if self.bias is not None:
            outputs = outputs + self.bias * self.bias_scale
        return outputs

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape

        def side(size):
            if size is None:
                return None
            if self.padding == "same":
                return -(-size // self.strides)
            return (size - self.kernel_size) // self.strides + 1

        return (batch, side(height), side(width), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            weight_std=self.weight_std,
            bias_std=self.bias_std,
            seed=self.seed,
        )
        return config
