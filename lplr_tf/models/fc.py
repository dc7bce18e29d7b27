"""Fully connected networks in the standard or the NTK parameterization.

The network maps inputs of any shape (flattened first) through `depth` hidden layers of
`width` units and an activation, then a linear readout to `output_dim` outputs:

    h_0 = flatten(x),  h_l = phi(z_l),  z_l = Dense_l(h_{l-1}),  f(x) = Dense_out(h_depth).

Every activation is its own `keras.layers.Activation` layer, so each Dense layer's output is
the pre-activation z_l that the structured NTK path differentiates against. `depth = 0` is a
linear model f(x) = x W + b, whose NTK and loss Hessian are known in closed form.
"""

import math

import gin
import keras

from lplr_tf import validation
from lplr_tf.ntk.layers import NTKDense

PARAMETERIZATIONS = ("standard", "ntk")


@gin.configurable(module="fc", denylist=["input_shape", "output_dim"])
def build_model(
    input_shape,
    output_dim,
    width=512,
    depth=2,
    activation="relu",
    parameterization="ntk",
    weight_std=math.sqrt(2.0),
    bias_std=0.1,
    readout_weight_std=1.0,
    kernel_initializer="glorot_uniform",
    seed=0,
):
    """Builds a fully connected network.

    Args:
      input_shape: Shape of one example, e.g. (64,) or (8, 8, 1); set by the experiment from
        the data.
      output_dim: Number of outputs O; set by the experiment from the data.
      width: Units of every hidden layer.
      depth: Number of hidden layers (0 gives a linear model).
      activation: Any Keras activation name ("relu", "tanh", "gelu", "softplus", ...).
      parameterization: "ntk" (weights N(0, 1), outputs scaled by weight_std / sqrt(fan_in),
        bias by bias_std; the width -> infinity limit is the NTK regime) or "standard"
        (keras.layers.Dense with `kernel_initializer` and zero bias).
      weight_std: sigma_w of the hidden layers in the NTK parameterization. sqrt(2) keeps the
        pre-activation variance constant through ReLU layers; use 1.0 for tanh.
      bias_std: sigma_b of every layer in the NTK parameterization (0 disables biases).
      readout_weight_std: sigma_w of the output layer in the NTK parameterization.
      kernel_initializer: Keras initializer name for the standard parameterization.
      seed: Seed of the weight initialization; layer l uses seed + 2 l.

    Returns:
      A built `keras.Model` mapping (batch, *input_shape) to (batch, output_dim).

    Raises:
      ValueError: on a non-positive width, negative depth, unknown parameterization or
        activation.
    """
    validation.choice("fc.build_model.parameterization", parameterization, PARAMETERIZATIONS)
    width = validation.integer("fc.build_model.width", width, 1)
    depth = validation.integer("fc.build_model.depth", depth, 0)
    seed = validation.integer("fc.build_model.seed", seed, 0)
    weight_std = validation.number("fc.build_model.weight_std", weight_std, 0.0, strict=True)
    readout_weight_std = validation.number(
        "fc.build_model.readout_weight_std", readout_weight_std, 0.0, strict=True
    )
    bias_std = validation.number("fc.build_model.bias_std", bias_std, 0.0, example=0.1)
    if parameterization == "standard":
        validation.keras_initializer("fc.build_model.kernel_initializer", kernel_initializer)
    try:
        keras.activations.get(activation)
    except ValueError as error:
        raise ValueError(
            f"fc.build_model.activation = {activation!r} is not a Keras activation; use e.g. "
            "'relu', 'tanh', 'gelu' or 'softplus'."
        ) from error

    def dense(units, std, layer_seed, name):
        if parameterization == "ntk":
            return NTKDense(units, weight_std=std, bias_std=bias_std, seed=layer_seed, name=name)
        initializer = keras.initializers.get(
            {"class_name": kernel_initializer, "config": {"seed": layer_seed}}
        )
        return keras.layers.Dense(units, kernel_initializer=initializer, name=name)

    inputs = keras.Input(shape=tuple(input_shape), name="inputs")
    hidden = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for layer in range(depth):
        hidden = dense(width, weight_std, seed + 2 * layer, f"dense_{layer}")(hidden)
        hidden = keras.layers.Activation(activation, name=f"{activation}_{layer}")(hidden)
    outputs = dense(int(output_dim), readout_weight_std, seed + 2 * depth, "readout")(hidden)
    return keras.Model(inputs, outputs, name=f"fc_{parameterization}_d{depth}_w{width}")
