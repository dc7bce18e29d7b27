"""A user's model and probe data, made ready for the probes.

`probe_arrays` / `probe_targets` turn arrays or a finite `tf.data.Dataset` into the (n, ...)
and (n, O) float32 arrays the probes need; `output_submodel` cuts a model at a named layer
(to measure the logits before a softmax); `MeasuredNetwork` measures a mixed-precision model
through a float32 copy; `outside_strategy` runs a measurement outside any `tf.distribute`
scope (strategy scopes are per thread).
"""

import concurrent.futures
import warnings

import keras
import numpy as np
import tensorflow as tf


def probe_arrays(probe_data, caller="LPLRCallback"):
    """The probe set as NumPy arrays (x, y) with the same number n ≥ 1 of examples.

    Args:
      probe_data: A pair (x, y) of array-likes with leading axis n, or a finite
        `tf.data.Dataset` of batched (x, y) (or (x, y, sample_weight)) elements, which is
        iterated once and concatenated (sample weights are ignored).
      caller: The name shown in errors.

    Returns:
      (x, y) NumPy arrays; floating x is cast to float32.
    """
    if isinstance(probe_data, tf.data.Dataset):
        if int(probe_data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError(
                f"{caller}: probe_data is an infinite tf.data.Dataset (did you .repeat() it?); "
                "expected a finite dataset of (x, y) batches. Pass dataset.take(k) or arrays."
            )
        xs, ys = [], []
        for element in probe_data:
            if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
                raise ValueError(
                    f"{caller}: probe_data yields {type(element).__name__} elements; expected "
                    "(x, y) or (x, y, sample_weight) batches. Map the dataset to (x, y)."
                )
            x_batch, y_batch = np.asarray(element[0]), np.asarray(element[1])
            if x_batch.ndim == 0 or y_batch.ndim == 0:
                raise ValueError(
                    f"{caller}: probe_data yields unbatched elements (x of shape "
                    f"{x_batch.shape}, y of shape {y_batch.shape}); expected batches with the "
                    "examples on the leading axis. Call dataset.batch(k) first."
                )
            xs.append(x_batch)
            ys.append(y_batch)
        if not xs:
            raise ValueError(
                f"{caller}: probe_data is an empty tf.data.Dataset; expected at "
                "least one (x, y) batch."
            )
        x, y = np.concatenate(xs, axis=0), np.concatenate(ys, axis=0)
    elif isinstance(probe_data, (tuple, list)) and len(probe_data) == 2:
        x, y = np.asarray(probe_data[0]), np.asarray(probe_data[1])
    else:
        raise ValueError(
            f"{caller}: probe_data is a {type(probe_data).__name__}; expected a pair (x, y) of "
            "arrays with n examples each, or a finite tf.data.Dataset of (x, y) batches."
        )
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        batched = (
            " (a tf.data.Dataset must yield batches: call dataset.batch(k))"
            if isinstance(probe_data, tf.data.Dataset)
            else ""
        )
        raise ValueError(
            f"{caller}: probe x has shape {x.shape} and y has shape {y.shape}; expected the "
            f"same positive number of examples n on the leading axis of both{batched}."
        )
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x, y


def probe_targets(y, num_outputs, caller="LPLRCallback"):
    """Targets of shape (n, O) in float32 for a model with O outputs per example.

    Integer labels with one label per example are one-hot encoded when O > 1 (the probe loss
    of a classifier is then ‖softmax/logits − onehot‖²/2).
    """
    n = y.shape[0]
    if (np.issubdtype(y.dtype, np.integer) or y.dtype == bool) and y.size == n and num_outputs > 1:
        labels = y.reshape(-1).astype(np.int64)
        if labels.min() < 0 or labels.max() >= num_outputs:
            raise ValueError(
                f"{caller}: integer labels in [{labels.min()}, {labels.max()}]; expected "
                f"class ids in [0, {num_outputs}) for a model with {num_outputs} outputs."
            )
        return np.eye(num_outputs, dtype=np.float32)[labels]
    if y.size != n * num_outputs:
        raise ValueError(
            f"{caller}: probe y has shape {y.shape}; expected (n, O) = ({n}, {num_outputs}) "
            "to match the model's outputs (or integer class ids of shape (n,)). Pass targets "
            "encoded like the model's outputs."
        )
    return y.reshape(n, num_outputs).astype(np.float32)


def output_submodel(model, output_layer, caller="LPLRCallback"):
    """The model, or the part of it from its inputs to the output of the layer `output_layer`.

    The sub-model shares the model's variables (its trainable variables are those of the
    layers up to `output_layer`). Typically `output_layer` names the logits layer before a
    softmax, whose output the LPLR theory can cover.

    Args:
      model: A built Sequential or functional `keras.Model`.
      output_layer: A layer name, or None (the model itself).
      caller: The name shown in errors.

    Raises:
      ValueError: no such layer, or a subclassed model (no graph to cut).
    """
    if output_layer is None:
        return model
    names = [layer.name for layer in model.layers]
    if output_layer not in names:
        raise ValueError(
            f"{caller}: output_layer={output_layer!r} is not a layer of model {model.name!r}; "
            f"expected one of {names}."
        )
    if isinstance(model, keras.Sequential):
        # Re-applied on a fresh Input: a Sequential built by a call has a fixed batch size.
        inputs = keras.Input(batch_shape=(None, *model.input_shape[1:]))
        outputs = inputs
        for layer in model.layers:
            outputs = layer(outputs)
            if layer.name == output_layer:
                break
        return keras.Model(inputs, outputs, name=f"{model.name}_{output_layer}")
    try:
        inputs, outputs = model.inputs, model.get_layer(output_layer).output
    except (AttributeError, ValueError):  # subclassed, or a layer called more than once
        inputs = outputs = None
    if not inputs or outputs is None:
        raise ValueError(
            f"{caller}: output_layer={output_layer!r} needs a Sequential or functional model; "
            f"model {model.name!r} is a {type(model).__name__} whose graph cannot be cut there. "
            "Measure a model that returns that layer's output (n, O) instead."
        )
    return keras.Model(inputs, outputs, name=f"{model.name}_{output_layer}")


def _layers(model):
    try:
        return list(model._flatten_layers(include_self=True, recursive=True))
    except AttributeError:  # pragma: no cover - every Keras 3 layer has it
        return [model, *getattr(model, "layers", [])]


def is_reduced_precision(model):
    """True when a layer of the model computes in float16 or bfloat16 (mixed precision)."""
    return any(
        getattr(layer, "compute_dtype", "float32") in ("float16", "bfloat16")
        for layer in _layers(model)
    )


def _float32_layer(layer):
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = "float32"
    return layer.__class__.from_config(config)


def _float32_clone(model):
    """A float32 copy of a Sequential/functional model (fresh weights; see MeasuredNetwork)."""
    # Containers and Input layers created by the clone take the global policy: make it
    # float32 for the clone (Keras keeps it per thread), then restore it.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        return keras.models.clone_model(model, clone_function=_float32_layer, recursive=True)
    finally:
        keras.config.set_dtype_policy(previous)


class MeasuredNetwork:
    """The network the probes run on: the model (or its part up to `output_layer`), or a float32
    copy of it.

    Under mixed precision the copy (same architecture, float32 dtype policy, the weights copied
    by `sync()` before every measurement) makes kernels and gradients float32.

    Args:
      model: The user's `keras.Model` (built here on `x_example` if needed).
      x_example: One input batch, (1, ...).
      output_layer: The name of the layer whose output is measured (`output_submodel`), or
        None for the model's output.
      caller: The name shown in errors.

    Attributes:
      network: The `keras.Model` to measure.
      description: What is measured, for the summary ("model", "layer 'logits' of the
        model", "float32 copy of ...").
      notes: Problems found (e.g. a mixed-precision model that could not be copied).
    """

    def __init__(self, model, x_example, output_layer=None, caller="LPLRCallback"):
        self.model = model
        self.notes = []
        if not model.built:
            model(x_example, training=False)
        self.source = output_submodel(model, output_layer, caller)
        self.network = self.source
        self.description = "model" if output_layer is None else f"layer {output_layer!r}"
        if is_reduced_precision(self.source):
            try:
                copy = _float32_clone(self.source)
                copy(x_example, training=False)
                if is_reduced_precision(copy) or [tuple(w.shape) for w in copy.weights] != [
                    tuple(w.shape) for w in self.source.weights
                ]:
                    raise ValueError("the float32 clone differs from the model")
            except Exception as error:
                note = (
                    f"model {model.name!r} computes in reduced precision and could not be "
                    f"copied to float32 ({type(error).__name__}: {error}); its gradients "
                    "and NTK were computed in its compute dtype (eigensolves in float64)."
                )
                warnings.warn(note, stacklevel=2)
                self.notes.append(note)
            else:
                self.network = copy
                self.description = f"float32 copy of the mixed-precision {self.description}"
        self.sync()

    def sync(self):
        """Copies the model's current weights into the copy (no-op on the model itself)."""
        if self.network is not self.source:
            self.network.set_weights(self.source.get_weights())

    def num_outputs(self, x_example):
        outputs = self.network(x_example, training=False)
        if isinstance(outputs, (dict, list, tuple)) or len(outputs.shape) != 2:
            raise ValueError(
                f"model {self.model.name!r} returns {type(outputs).__name__} of shape "
                f"{getattr(outputs, 'shape', None)} per batch; expected a single tensor of "
                "shape (n, O). Wrap the model so that it returns one (n, O) tensor."
            )
        return int(outputs.shape[-1])


def outside_strategy(function, *args, **kwargs):
    """Calls `function` outside any `tf.distribute` strategy scope and replica context.

    Inside a scope (e.g. `fit` called under `strategy.scope()`) it runs in a worker thread,
    since scopes are thread-local; elsewhere it runs directly. Exceptions propagate.
    """
    if not tf.distribute.has_strategy():
        return function(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result()
