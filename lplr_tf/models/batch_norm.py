"""Batch normalization at initialization: make the probes see the network training starts from.

Training calls the network with training=True (batch statistics); the probes call it with
training=False (moving statistics), which at initialization are mean 0 and variance 1: the
step-0 probe would measure another function than the one GD starts from.
"""

import keras


def calibrate_batch_norm(model, x):
    """Sets every BatchNormalization layer's moving statistics to the batch statistics of x.

    One forward pass `model(x, training=True)` with each BN layer's momentum set to 0 (and
    restored afterwards): layer by layer, the moving mean and variance become the mean and
    variance of that layer's input over x, computed in the training-mode network. Afterwards
    `model(x, training=False) == model(x, training=True)`, so a probe at step 0 measures the
    function that training starts from (instead of the network normalized with mean 0 and
    variance 1). Trainable weights are untouched. A model without BN is left as it is.

    Args:
      model: A built Keras model.
      x: Inputs (n, *input_shape), e.g. the full training set for GD or the probe set.

    Returns:
      The number of BatchNormalization layers calibrated.
    """
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        model(x, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)
