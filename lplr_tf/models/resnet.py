"""ResNet-style convolutional networks in the standard or the NTK parameterization.

The network maps images (batch, H, W, C) through a stem convolution, `len(stage_widths)`
stages of `blocks_per_stage` basic residual blocks, a global pooling and a linear readout:

    h = act(BN(conv3x3(x)))                                        stem, stage_widths[0] channels
    block(h) = act(BN(conv3x3(act(BN(conv3x3_s(h))))) + skip(h))   skip = h, or BN(conv1x1_s(h))
    f(x) = Dense(pool(h_last))                                     (batch, output_dim)

The first block of stage s has stride `strides[s]` and `stage_widths[s]` output channels;
when its input has a different channel count or the stride is not 1, the skip is a 1x1
projection convolution with that stride (followed by BN when `batch_norm`), otherwise the
identity. Every activation is its own `keras.layers.Activation` layer, so each convolution
output is the pre-activation the structured NTK path differentiates against; the sum of a
block is a `keras.layers.Add`.

Parameterizations:

* "standard": `keras.layers.Conv2D` / `keras.layers.Dense` with a seeded Keras initializer
  (`kernel_initializer`, He normal by default) and zero biases; convolutions followed by
  BatchNormalization have no bias (it would be redundant with BN's beta).
* "ntk": `NTKConv2D` / `NTKDense` (weights N(0, 1), outputs scaled by
  weight_std / sqrt(fan_in), bias by bias_std); convolutions carry a bias only without BN.
  BatchNormalization is optional here; `batch_norm=False` gives a network whose NTK has a
  deterministic infinite-width limit (the NTK regime), BN breaks that limit.

BatchNormalization and the LPLR probes (read this before trusting a BN run's diagnostics):
the trainer calls the network with `training=True`, so every step normalizes with the
*batch* statistics (for full-batch GD: the statistics of the whole training set at the
current weights) and updates the moving averages; the probes (loss, gradient, PL ratio, NTK,
sharpness) call it with `training=False`, so they measure the network that normalizes with
the *moving* averages. The two functions agree once the moving averages have caught up with
the batch statistics; `batch_norm_momentum` (default 0.9, Keras' own is 0.99) makes them
catch up in ~10-20 steps. At step 0 the experiment sets the moving statistics to the probe
set's batch statistics (`models.batch_norm.calibrate_batch_norm`), so the first probe
measures the function training starts from. Under mini-batch SGD the batch statistics also
add noise to the training function. For the cleanest full-batch theory runs use
`batch_norm=False` with the NTK parameterization.
"""

import math

import gin
import keras

from lplr_tf import validation
from lplr_tf.ntk.layers import NTKConv2D, NTKDense

PARAMETERIZATIONS = ("standard", "ntk")
POOLINGS = ("average", "max", "flatten")


def _validate(
    input_shape,
    stage_widths,
    strides,
    blocks_per_stage,
    pooling,
    parameterization,
    activation,
    kernel_size,
):
    if len(tuple(input_shape)) != 3:
        raise ValueError(
            f"resnet.build_model got examples of shape {tuple(input_shape)}; expected images "
            "of shape (height, width, channels). Use image data: `data.digits.image = True`, "
            "`data.mnist.flatten = False`, or `experiment.run.dataset = @data.cifar10`."
        )
    widths = validation.integers("resnet.build_model.stage_widths", stage_widths, 1)
    stride_values = validation.integers("resnet.build_model.strides", strides, 1)
    if len(widths) != len(stride_values):
        raise ValueError(
            f"resnet.build_model.stage_widths = {widths} has {len(widths)} stage(s) but "
            f"strides = {stride_values} has {len(stride_values)}; expected one stride per "
            "stage. Give both the same length, e.g. stage_widths = (16, 32) and "
            "strides = (1, 2)."
        )
    validation.integer("resnet.build_model.blocks_per_stage", blocks_per_stage, 1)
    validation.integer("resnet.build_model.kernel_size", kernel_size, 1)
    validation.choice("resnet.build_model.pooling", pooling, POOLINGS)
    validation.choice("resnet.build_model.parameterization", parameterization, PARAMETERIZATIONS)
    try:
        keras.activations.get(activation)
    except ValueError as error:
        raise ValueError(
            f"resnet.build_model.activation = {activation!r} is not a Keras activation; use "
            "e.g. 'relu', 'tanh', 'gelu' or 'softplus'."
        ) from error
    height, width = int(input_shape[0]), int(input_shape[1])
    total_stride = math.prod(stride_values)
    if total_stride > min(height, width):
        raise ValueError(
            f"resnet.build_model.strides = {stride_values} downsample by {total_stride}, more "
            f"than the {height}x{width} input allows; use smaller strides, e.g. (1, 2)."
        )
    return widths, stride_values


@gin.configurable(module="resnet", denylist=["input_shape", "output_dim"])
def build_model(
    input_shape,
    output_dim,
    stage_widths=(16, 32),
    blocks_per_stage=1,
    strides=(1, 2),
    kernel_size=3,
    batch_norm=True,
    batch_norm_momentum=0.9,
    activation="relu",
    pooling="average",
    parameterization="standard",
    weight_std=math.sqrt(2.0),
    bias_std=0.1,
    readout_weight_std=1.0,
    kernel_initializer="he_normal",
    seed=0,
):
    """Builds a ResNet-style CNN (see the module docstring for the architecture).

    Args:
      input_shape: Shape of one image, (height, width, channels), e.g. (8, 8, 1) for
        `data.digits.image = True` or (32, 32, 3) for CIFAR-10; set by the experiment.
      output_dim: Number of outputs O; set by the experiment from the data.
      stage_widths: Output channels of each stage; the stem has stage_widths[0] channels.
      blocks_per_stage: Basic residual blocks (two convolutions each) per stage.
      strides: Stride of the first block of each stage (same length as stage_widths).
      kernel_size: Side of the square kernels of the stem and the blocks.
      batch_norm: BatchNormalization after every convolution (see the module docstring on
        training=True vs the probes' training=False).
      batch_norm_momentum: Momentum of BN's moving averages (0.9: they track the batch
        statistics within ~10-20 steps; Keras' default 0.99 lags ~100s of steps).
      activation: Any Keras activation name ("relu", "tanh", "gelu", ...).
      pooling: Global pooling before the readout: "average", "max" or "flatten" (keeps the
        spatial layout; the readout then has H'·W'·C inputs).
      parameterization: "standard" (Keras layers, `kernel_initializer`) or "ntk"
        (NTKConv2D/NTKDense with `weight_std`, `bias_std`, `readout_weight_std`).
      weight_std: sigma_w of the convolutions in the NTK parameterization (sqrt(2) for ReLU).
      bias_std: sigma_b of the NTK parameterization; the readout always has it, the
        convolutions only when batch_norm is False (0 disables biases).
      readout_weight_std: sigma_w of the readout in the NTK parameterization.
      kernel_initializer: Keras initializer name of the standard parameterization's
        convolutions (the readout uses glorot_uniform, Keras' Dense default).
      seed: Seed of the initialization; the k-th weight layer (stem, block convolutions,
        projections, readout in build order) uses seed + 2 k.

    Returns:
      A built `keras.Model` mapping (batch, height, width, channels) to (batch, output_dim).

    Raises:
      ValueError: input that is not an image, stage_widths and strides of different
        lengths, non-positive widths/strides/blocks, strides larger than the image, unknown
        pooling, parameterization or activation. The message names the value and the fix.
    """
    widths, stride_values = _validate(
        input_shape,
        stage_widths,
        strides,
        blocks_per_stage,
        pooling,
        parameterization,
        activation,
        kernel_size,
    )
    prefix = "resnet.build_model"
    validation.boolean(f"{prefix}.batch_norm", batch_norm)
    momentum = validation.number(f"{prefix}.batch_norm_momentum", batch_norm_momentum, 0.0)
    if momentum >= 1.0:
        raise ValueError(
            f"{prefix}.batch_norm_momentum = {batch_norm_momentum!r}; expected a number in "
            f"[0, 1) (1 would never update the moving statistics). Fix the binding, e.g. "
            f"{prefix}.batch_norm_momentum = 0.9."
        )
    weight_std = validation.number(f"{prefix}.weight_std", weight_std, 0.0, strict=True)
    readout_weight_std = validation.number(
        f"{prefix}.readout_weight_std", readout_weight_std, 0.0, strict=True
    )
    bias_std = validation.number(f"{prefix}.bias_std", bias_std, 0.0, example=0.1)
    seed = validation.integer(f"{prefix}.seed", seed, 0)
    if parameterization == "standard":
        validation.keras_initializer(f"{prefix}.kernel_initializer", kernel_initializer)
    layer_index = [0]

    def next_seed():
        value = seed + 2 * layer_index[0]
        layer_index[0] += 1
        return value

    def conv(filters, size, stride, name):
        if parameterization == "ntk":
            return NTKConv2D(
                filters,
                kernel_size=size,
                strides=stride,
                padding="same",
                weight_std=weight_std,
                bias_std=0.0 if batch_norm else bias_std,
                seed=next_seed(),
                name=name,
            )
        initializer = keras.initializers.get(
            {"class_name": kernel_initializer, "config": {"seed": next_seed()}}
        )
        return keras.layers.Conv2D(
            filters,
            size,
            strides=stride,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer=initializer,
            name=name,
        )

    def normalize(tensor, name):
        if not batch_norm:
            return tensor
        return keras.layers.BatchNormalization(momentum=batch_norm_momentum, name=name)(tensor)

    def act(tensor, name):
        return keras.layers.Activation(activation, name=name)(tensor)

    inputs = keras.Input(shape=tuple(int(d) for d in input_shape), name="inputs")
    hidden = conv(widths[0], kernel_size, 1, "stem_conv")(inputs)
    hidden = act(normalize(hidden, "stem_bn"), f"stem_{activation}")
    channels = widths[0]
    for stage, (filters, stage_stride) in enumerate(zip(widths, stride_values)):
        for block in range(int(blocks_per_stage)):
            stride = stage_stride if block == 0 else 1
            prefix = f"stage{stage}_block{block}"
            branch = conv(filters, kernel_size, stride, f"{prefix}_conv1")(hidden)
            branch = act(normalize(branch, f"{prefix}_bn1"), f"{prefix}_{activation}1")
            branch = conv(filters, kernel_size, 1, f"{prefix}_conv2")(branch)
            branch = normalize(branch, f"{prefix}_bn2")
            skip = hidden
            if stride != 1 or channels != filters:
                skip = conv(filters, 1, stride, f"{prefix}_projection")(hidden)
                skip = normalize(skip, f"{prefix}_projection_bn")
            hidden = keras.layers.Add(name=f"{prefix}_add")([branch, skip])
            hidden = act(hidden, f"{prefix}_{activation}_out")
            channels = filters
    if pooling == "average":
        hidden = keras.layers.GlobalAveragePooling2D(name="pool")(hidden)
    elif pooling == "max":
        hidden = keras.layers.GlobalMaxPooling2D(name="pool")(hidden)
    else:
        hidden = keras.layers.Flatten(name="pool")(hidden)
    if parameterization == "ntk":
        readout = NTKDense(
            int(output_dim),
            weight_std=readout_weight_std,
            bias_std=bias_std,
            seed=next_seed(),
            name="readout",
        )
    else:
        readout = keras.layers.Dense(
            int(output_dim),
            name="readout",
            kernel_initializer=keras.initializers.GlorotUniform(seed=next_seed()),
        )
    outputs = readout(hidden)
    widths_name = "-".join(str(w) for w in widths)
    return keras.Model(
        inputs,
        outputs,
        name=f"resnet_{parameterization}_w{widths_name}_b{blocks_per_stage}"
        f"{'_bn' if batch_norm else ''}",
    )
