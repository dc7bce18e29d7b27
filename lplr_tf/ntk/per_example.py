"""Per-example parameter gradients of one layer from its inputs and output cotangents.

The structured path uses these for layers whose per-example gradient is a sum over
positions — Conv2D (over output pixels), Dense applied to sequences, any supported layer
called more than once — and for BatchNormalization's γ and β. They are formed from the one
batched backward pass that produced δ (as BackPACK does), never by per-example backprop:
only (n, O, p) floats for this layer's p parameters.
"""

import tensorflow as tf


def _positions(t):
    """(n, *spatial, c) → (n, T, c)."""
    return tf.reshape(t, (tf.shape(t)[0], -1, t.shape[-1]))


def layer_gradient(term, calls, deltas):
    """Per-example gradient of one layer's trainable parameters, scaled as the layer is.

    Args:
      term: structured._Term of a "dense", "conv" or "bn" layer.
      calls: Per call of the layer, (layer input a (n, *in_shape), pre-activation z).
      deltas: Per call, δ = ∂f/∂z with shape (n, O, *z_shape).

    Returns:
      (n, O, p): [kernel (or γ) flattened, then bias (or β)], summed over the calls.
    """
    layer = term.layer
    parts_w, parts_b = [], []
    for (a, _), delta in zip(calls, deltas):
        n, num_outputs = tf.shape(delta)[0], delta.shape[1]
        if term.kind == "bn":
            axis = layer.axis % len(a.shape)
            shape = [1] * len(a.shape)
            shape[axis] = a.shape[axis]
            mean = tf.reshape(tf.cast(layer.moving_mean, a.dtype), shape)
            var = tf.reshape(tf.cast(layer.moving_variance, a.dtype), shape)
            x_hat = (a - mean) * tf.math.rsqrt(var + layer.epsilon)
            d = delta
            if axis != len(a.shape) - 1:  # channels to the last axis
                perm = [0] + [k for k in range(1, len(a.shape)) if k != axis] + [axis]
                x_hat = tf.transpose(x_hat, perm)
                d = tf.transpose(delta, [0, 1] + [p + 1 for p in perm[1:]])
            d = tf.reshape(d, (n, num_outputs, -1, d.shape[-1]))
            if term.weight is not None:
                # γ's per-example gradient Σ_p δ∘x̂ (β's is Σ_p δ, below).
                parts_w.append(tf.reduce_sum(_positions(x_hat)[:, None] * d, axis=2))
        else:
            d = tf.reshape(delta, (n, num_outputs, -1, delta.shape[-1]))
            if term.weight is not None:
                if term.kind == "conv":
                    g = _conv_weight_gradient(layer, a, delta)
                else:
                    g = tf.einsum("ntk,notc->nokc", _positions(a), d)
                parts_w.append(tf.reshape(g, (n, num_outputs, -1)) * term.weight_scale)
        if term.bias is not None:
            scale = 1.0 if term.kind == "bn" else term.bias_scale
            parts_b.append(tf.reduce_sum(d, axis=2) * scale)
    parts = [tf.add_n(p) for p in (parts_w, parts_b) if p]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


def _conv_weight_gradient(layer, a, delta):
    """Per-example Conv2D kernel gradient Σ_p a_i[p + offset] ⊗ δ_io[p], (n, O, kh·kw·c, d).

    Shapes: a (n, H, W, c) is the layer input, delta (n, O, H', W', d) the cotangent at its
    pre-activation. pfor through Conv2DBackpropFilter is a while-loop, so this is built by
    hand from one batched matmul per kernel offset. Measured on CPU: for stride 1, plain
    slices of the padded input (no patch tensor) are ~2× faster than extract_patches; for
    strides > 1 strided slices are ~4× slower than extract_patches, which is used there.
    """
    kh, kw = layer.kernel.shape[:2]
    (sh, sw), (rh, rw) = _pair(layer.strides), _pair(getattr(layer, "dilation_rate", 1))
    num_outputs, out_h, out_w, filters = delta.shape[1:]
    channels = a.shape[-1]
    n = tf.shape(a)[0]
    # (n, T, O·d): all outputs share each matmul.
    d = tf.reshape(tf.transpose(delta, [0, 2, 3, 1, 4]), (n, out_h * out_w, num_outputs * filters))
    if (sh, sw) != (1, 1):
        patches = tf.image.extract_patches(
            a, [1, kh, kw, 1], [1, sh, sw, 1], [1, rh, rw, 1], layer.padding.upper()
        )
        patches = tf.reshape(patches, (n, out_h * out_w, kh * kw * channels))
        g = tf.matmul(patches, d, transpose_a=True)  # (n, kh·kw·c, O·d)
    else:
        if layer.padding.lower() == "same":
            pads = []
            for size, out, k, r in ((a.shape[1], out_h, kh, rh), (a.shape[2], out_w, kw, rw)):
                total = max(out - 1 + (k - 1) * r + 1 - size, 0)
                pads.append([total // 2, total - total // 2])
            a = tf.pad(a, [[0, 0]] + pads + [[0, 0]])
        per_offset = []
        for i in range(kh):
            for j in range(kw):
                window = a[:, i * rh : i * rh + out_h, j * rw : j * rw + out_w, :]
                window = tf.reshape(window, (n, out_h * out_w, channels))
                per_offset.append(tf.matmul(window, d, transpose_a=True))  # (n, c, O·d)
        g = tf.stack(per_offset, axis=1)
    g = tf.reshape(g, (n, kh * kw * channels, num_outputs, filters))
    return tf.transpose(g, [0, 2, 1, 3])


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
