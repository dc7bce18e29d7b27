"""Shared helpers of the NTK engine: input checks, output flattening, TF32 policy, variables.

Conventions used by every module of `lplr_tf.ntk`:

* A batch `x` has shape (n, *example_shape); the model maps it to outputs that are
  flattened per example to shape (n, O).
* Θ = J Jᵀ is the *unnormalized* empirical NTK (the convention of neural-tangents). Probes
  report the normalized kernel K = Θ / n.
* In "full" mode the kernel has shape (n1·O, n2·O) and is example-major: row i·O + o is
  output o of example i. In "trace" mode it has shape (n1, n2) and holds the average over
  outputs of the output-diagonal blocks, (1/O) Σ_o Θ[(i, o), (j, o)].
"""

import contextlib

import keras
import tensorflow as tf

OUTPUT_MODES = ("full", "trace")


@contextlib.contextmanager
def tf32_disabled():
    """Disables TensorFloat-32 execution inside the block and restores the previous setting.

    TF32 matmuls (on by default on Ampere+ GPUs) keep ~10 mantissa bits, which corrupts the
    small eigenvalues of a kernel; every kernel computation runs inside this context.
    """
    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    if previous:
        tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        if previous:
            tf.config.experimental.enable_tensor_float_32_execution(True)


def check_output_mode(output_mode, caller):
    if output_mode not in OUTPUT_MODES:
        raise ValueError(
            f"{caller}: output_mode={output_mode!r}; expected one of {OUTPUT_MODES}. "
            "Use 'full' for the (n·O, n·O) kernel or 'trace' for the (n, n) output average."
        )


def as_batch(x, name, caller, model=None):
    """Converts an array-like batch to a tensor of shape (n, *example_shape), n >= 1.

    Floating inputs are cast to the model's compute dtype; integer inputs (token ids) are
    kept as they are.
    """
    several = (
        f"{caller}: {name} is a {type(x).__name__} that is not one array; expected a single "
        "array of shape (n, *example_shape). Models with several inputs are not supported: "
        "wrap them so that they take one tensor."
    )
    if isinstance(x, dict):
        raise ValueError(several)
    try:
        tensor = tf.convert_to_tensor(x)
    except (ValueError, TypeError) as error:
        raise ValueError(several) from error
    if tensor.shape.rank is None or tensor.shape.rank < 1:
        raise ValueError(
            f"{caller}: {name} has shape {tuple(tensor.shape)}; expected a batch of shape "
            "(n, *example_shape) with a leading example axis. Add a batch axis, e.g. x[None]."
        )
    if tensor.shape[0] == 0:
        raise ValueError(
            f"{caller}: {name} has shape {tuple(tensor.shape)} (no examples); expected at "
            "least one example. Pass a non-empty batch."
        )
    if tensor.dtype.is_floating:
        dtype = model.compute_dtype if model is not None else "float32"
        tensor = tf.cast(tensor, dtype)
    if model is not None:
        expected = _model_example_shape(model)
        got = tuple(tensor.shape[1:])
        if expected is not None and (
            len(expected) != len(got)
            or any(e is not None and e != g for e, g in zip(expected, got))
        ):
            raise ValueError(
                f"{caller}: {name} has per-example shape {got} (batch shape "
                f"{tuple(tensor.shape)}); expected {expected}, the model's input shape. "
                f"Reshape {name} to (n, *{expected})."
            )
    return tensor


def check_same_example_shape(x1, x2, caller):
    if tuple(x1.shape[1:]) != tuple(x2.shape[1:]) or x1.dtype != x2.dtype:
        raise ValueError(
            f"{caller}: x2 has per-example shape {tuple(x2.shape[1:])} and dtype "
            f"{x2.dtype.name}, but x1 has {tuple(x1.shape[1:])} and {x1.dtype.name}; "
            "expected both batches to share the per-example shape and dtype (the model's "
            "input). Pass x2 with the same trailing dimensions as x1."
        )


def _model_example_shape(model):
    """The per-example input shape of a functional/Sequential model, or None if unknown."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape[1:])


def flatten_outputs(outputs, n):
    """Model outputs (a tensor or a nest of tensors, each with leading axis n) → (n, O)."""
    flat = [tf.reshape(t, (n, -1)) for t in tf.nest.flatten(outputs)]
    return flat[0] if len(flat) == 1 else tf.concat(flat, axis=1)


def trainable_tf_variables(model):
    """The model's trainable variables as tf.Variables, deduplicated, in a stable order.

    Keras 3 variables wrap a tf.Variable (`v.value`); GradientTape accepts both, but
    ForwardAccumulator needs the tf.Variable.
    """
    seen, result = set(), []
    for variable in model.trainable_variables:
        value = variable.value if isinstance(variable, keras.Variable) else variable
        if id(value) not in seen:
            seen.add(id(value))
            result.append(value)
    return result


def as_tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def ensure_built(model, x):
    """Builds an unbuilt model with one eager call on a single example."""
    if not model.built or not model.trainable_variables:
        model(x[:1], training=False)


def num_outputs(model, x):
    """O, the number of outputs per example, from one eager call on the first example."""
    return int(flatten_outputs(model(x[:1], training=False), 1).shape[1])


def num_elements(shape):
    """Product of a static shape's dimensions (1 for ())."""
    result = 1
    for dim in shape:
        result *= int(dim)
    return result
