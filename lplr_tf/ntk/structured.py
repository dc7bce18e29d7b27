"""The structured (layer-wise) NTK path: never forms the parameter Jacobian of known layers.

Θ = J₁ J₂ᵀ is a sum over parameters, so it is a sum over layers. For a dense layer
z = s_w·(a W) + s_b·b, the per-example gradient is s_w·a ⊗ δ for W and s_b·δ for b, with
δ = ∂f_o/∂z the cotangent at the layer's *pre-activation*. Hence

    Θ_layer[(i,o),(j,o')] = s_w² (a_i·a_j)(δ_io·δ_jo') + s_b² (δ_io·δ_jo'),

two Gram matrices of widths fan_in and units (s_w = 1, s_b = 1 for keras.layers.Dense). Layers
whose per-example gradient is a sum over positions (Conv2D over pixels, Dense on sequences,
a layer called several times) form that gradient from the one batched backward pass
instead (input patches ⊗ output cotangents, as BackPACK does) and contract it: (n, O, p)
floats for that layer only. BatchNormalization in inference mode is y = γ·x̂ + β, whose
per-example gradients are Σ_p δ∘x̂ and Σ_p δ.

How δ is found: while the model is traced, each supported layer's `call` is replaced (on
the instance, restored afterwards) by a version that computes its pre-activation z itself,
`tape.watch`es it, records (layer input, z), and continues with the activation. The model
runs as usual — Sequential, functional with branches and `Add`, nested or subclassed — and
one backward pass per output o with cotangent e_o gives δ at every recorded z at once.
Examples are independent at inference, so the batch gradient of Σ_i f_i[o] is per-example.

Variables of layers this module does not know (and of supported layers that were not
called) go through `jacobian.per_example_jacobian`, one term among the others.
"""

import contextlib
import dataclasses

import keras
import tensorflow as tf

from lplr_tf.ntk import jacobian, per_example
from lplr_tf.ntk.common import as_tf_variable, flatten_outputs, num_elements
from lplr_tf.ntk.layers import NTKConv2D, NTKDense

_BYTES = 4
_BaseConv = keras.layers.Conv2D.__mro__[1]


@dataclasses.dataclass
class _Term:
    """One supported layer: which of its parameters are trainable, and its NTK scalings."""

    layer: keras.layers.Layer
    kind: str  # "dense", "conv" or "bn"
    weight: tf.Variable | None  # kernel (gamma for bn), None when frozen/absent
    bias: tf.Variable | None  # bias (beta for bn)
    weight_scale: float = 1.0
    bias_scale: float = 1.0
    calls: list = dataclasses.field(default_factory=list)  # per call: (input, z) shapes

    @property
    def gram(self):
        # One call on (n, features) inputs: the two-Gram-matrix form is cheapest.
        return self.kind == "dense" and len(self.calls) == 1 and len(self.calls[0][0]) == 1

    @property
    def variables(self):
        return [v for v in (self.weight, self.bias) if v is not None]


def _same_call(layer, base):
    return isinstance(layer, base) and type(layer).call is base.call


def _classify(layer, trainable_ids):
    """A _Term for a supported layer with trainable parameters, else None."""
    if getattr(layer, "quantization_mode", None) is not None or getattr(
        layer, "lora_enabled", False
    ):
        return None

    def trainable(variable):
        if variable is None:
            return None
        value = as_tf_variable(variable)
        return value if id(value) in trainable_ids else None

    if _same_call(layer, NTKDense) or _same_call(layer, NTKConv2D):
        kind = "dense" if isinstance(layer, NTKDense) else "conv"
        own = (layer.kernel, layer.bias)
        term = _Term(
            layer,
            kind,
            trainable(layer.kernel),
            trainable(layer.bias),
            float(layer.weight_scale),
            float(layer.bias_scale),
        )
    elif _same_call(layer, keras.layers.Dense):
        own = (layer.kernel, layer.bias)
        term = _Term(layer, "dense", trainable(layer.kernel), trainable(layer.bias))
    elif (
        isinstance(layer, keras.layers.Conv2D)
        and type(layer).call is _BaseConv.call
        and layer.data_format == "channels_last"
        and layer.groups == 1
    ):
        own = (layer.kernel, layer.bias)
        term = _Term(layer, "conv", trainable(layer.kernel), trainable(layer.bias))
    elif _same_call(layer, keras.layers.BatchNormalization) and isinstance(layer.axis, int):
        own = (layer.gamma, layer.beta)
        term = _Term(layer, "bn", trainable(layer.gamma), trainable(layer.beta))
    else:
        return None
    # Any other trainable variable on the layer means it is not the layer we model.
    own_ids = {id(as_tf_variable(v)) for v in own if v is not None}
    if any(id(as_tf_variable(v)) not in own_ids for v in layer.trainable_weights):
        return None
    return term if term.variables else None


def find_terms(model, trainable_ids):
    """Supported layers of `model` (recursively) that own trainable parameters."""
    terms = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        term = _classify(layer, trainable_ids)
        if term is not None:
            terms.append(term)
    return terms


def _pre_activation_call(term):
    """(inputs, args, kwargs) → (z, finish) where finish(z) is the layer's output."""
    layer, cls_call = term.layer, type(term.layer).call
    if term.kind == "bn":

        def bn_call(inputs, *args, **kwargs):
            training = kwargs.get("training", args[0] if args else None)
            if training and layer.trainable:
                raise ValueError(
                    f"empirical_ntk: BatchNormalization layer {layer.name!r} ran with "
                    f"training={training!r}; expected inference mode, where examples are "
                    "independent. Call the model with training=False (the NTK does)."
                )
            return cls_call(layer, inputs, *args, **kwargs), None

        return bn_call
    if isinstance(layer, (NTKDense, NTKConv2D)):
        # These layers have no activation: their output is the pre-activation.
        return lambda inputs, *args, **kwargs: (cls_call(layer, inputs, *args, **kwargs), None)

    def keras_call(inputs, *args, **kwargs):
        # Re-implements Dense.call / BaseConv.call up to the activation, op for op.
        if term.kind == "dense":
            z = keras.ops.matmul(inputs, layer.kernel)
            if layer.bias is not None:
                z = keras.ops.add(z, layer.bias)
        else:
            z = layer.convolution_op(inputs, layer.kernel)
            if layer.use_bias:
                z = keras.ops.add(z, keras.ops.reshape(layer.bias, (1, 1, 1, layer.filters)))
        return z, layer.activation

    return keras_call


@contextlib.contextmanager
def intercept(terms, tape=None):
    """Patches each term's layer so that calls record (input, z) and watch z on `tape`.

    Yields a list (one per term) of lists of (layer_input, z, x_hat_or_None) per call.
    """
    records = [[] for _ in terms]
    patched = []

    def make(term, store):
        pre = _pre_activation_call(term)

        def call(inputs, *args, **kwargs):
            z, activation = pre(inputs, *args, **kwargs)
            if tape is not None:
                tape.watch(z)
            store.append((inputs, z))
            if term.kind == "bn" or activation is None:
                return z
            return activation(z)

        return call

    try:
        for term, store in zip(terms, records):
            layer = term.layer
            had_own = "call" in vars(layer)
            patched.append((layer, had_own, vars(layer).get("call")))
            # object.__setattr__ bypasses Keras' attribute tracking; Layer.__call__ looks
            # `self.call` up at call time, so the instance attribute wins.
            object.__setattr__(layer, "call", make(term, store))
        yield records
    finally:
        for layer, had_own, previous in reversed(patched):
            if had_own:
                object.__setattr__(layer, "call", previous)
            else:
                object.__delattr__(layer, "call")


def record_calls(model, terms, x):
    """One eager call on x (a few examples) to learn which terms run, how often, on what."""
    with intercept(terms) as records:
        out = model(x, training=False)
    for term, calls in zip(terms, records):
        term.calls = [(tuple(a.shape[1:]), tuple(z.shape[1:])) for a, z in calls]
    return int(flatten_outputs(out, x.shape[0]).shape[1])


class StructuredFeatures:
    """Features and contraction of the structured path for one model.

    `features(x)` returns a tuple: for each Gram-form dense term (a, δ) with a (n, fan_in)
    and δ (n, O, units); then one (n, O, p) tensor concatenating the per-example gradients
    of all other terms, including the general-path Jacobian of fallback variables.
    """

    def __init__(self, model_ref, terms, fallback_variables, num_outputs, output_mode):
        self._model_ref = model_ref
        self.terms = [t for t in terms if t.calls]
        self.num_outputs = num_outputs
        self.output_mode = output_mode
        self.fallback = (
            jacobian.JacobianFeatures(model_ref, fallback_variables, num_outputs, output_mode)
            if fallback_variables
            else None
        )

    def features(self, x):
        model, num_outputs = self._model_ref(), self.num_outputs
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            with intercept(self.terms, tape) as records:
                f = flatten_outputs(model(x, training=False), tf.shape(x)[0])
        zs = [z for calls in records for _, z in calls]
        per_output = []
        for o in range(num_outputs):
            cotangent = tf.broadcast_to(tf.one_hot(o, num_outputs, dtype=f.dtype), tf.shape(f))
            per_output.append(
                tape.gradient(
                    f,
                    zs,
                    output_gradients=cotangent,
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
            )
        del tape
        deltas = [tf.stack([g[k] for g in per_output], axis=1) for k in range(len(zs))]
        grams, gradients, k = [], [], 0
        for term, calls in zip(self.terms, records):
            term_deltas = deltas[k : k + len(calls)]
            k += len(calls)
            if term.gram:
                grams.extend([calls[0][0], term_deltas[0]])
            else:
                gradients.append(per_example.layer_gradient(term, calls, term_deltas))
        if self.fallback is not None:
            gradients.append(self.fallback.features(x)[0])
        if gradients:
            grams.append(gradients[0] if len(gradients) == 1 else tf.concat(gradients, -1))
        return tuple(grams)

    def contract(self, f1, f2):
        """Θ block: (n1·O, n2·O) in "full" mode, (n1, n2) in "trace" mode."""
        full = self.output_mode == "full" and self.num_outputs > 1
        num_outputs = self.num_outputs
        total, k = None, 0
        for term in self.terms:
            if not term.gram:
                continue
            a1, d1, a2, d2 = f1[k], f1[k + 1], f2[k], f2[k + 1]
            k += 2
            if full:
                dd = tf.matmul(
                    tf.reshape(d1, (-1, d1.shape[-1])),
                    tf.reshape(d2, (-1, d2.shape[-1])),
                    transpose_b=True,
                )
            elif num_outputs == 1:
                dd = tf.matmul(d1[:, 0], d2[:, 0], transpose_b=True)
            else:
                dd = tf.einsum("iou,jou->ij", d1, d2) / num_outputs
            if term.weight is not None:
                factor = tf.matmul(a1, a2, transpose_b=True)
                if term.weight_scale != 1.0:
                    factor *= term.weight_scale**2
                if term.bias is not None:
                    factor += term.bias_scale**2
            else:
                factor = term.bias_scale**2
            if full and term.weight is not None:
                n1, n2 = tf.shape(a1)[0], tf.shape(a2)[0]
                dd = tf.reshape(dd, (n1, num_outputs, n2, num_outputs))
                dd = tf.reshape(dd * factor[:, None, :, None], (n1 * num_outputs, -1))
            else:
                dd = dd * factor
            total = dd if total is None else total + dd
        if k < len(f1):
            pe = jacobian.gram(f1[k], f2[k], self.output_mode)
            total = pe if total is None else total + pe
        return total

    def bytes_per_example(self, activation_floats):
        num_outputs, floats = self.num_outputs, 3 * activation_floats
        for term in self.terms:
            for a_shape, z_shape in term.calls:
                a_size = num_elements(a_shape)
                z_size = num_elements(z_shape)
                floats += a_size + (num_outputs + 1) * z_size
                if term.kind == "conv":
                    floats += 2 * a_size  # padded input and one strided window
            if not term.gram:
                floats += 2 * num_outputs * sum(int(v.shape.num_elements()) for v in term.variables)
        if self.fallback is not None:
            floats += self.fallback.bytes_per_example(activation_floats) // _BYTES
        return _BYTES * floats
