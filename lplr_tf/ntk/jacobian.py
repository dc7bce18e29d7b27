"""The general NTK path: per-example parameter Jacobians, contracted into Θ = J₁ J₂ᵀ.

Works for any Keras model whose examples are independent at inference (`training=False`):
each example's Jacobian row block ∂f(x_i)/∂θ is computed with a GradientTape inside
`tf.vectorized_map`. This is 3–4× faster than `tape.jacobian` of the batched output (which
does O(n²P) work, because pfor differentiates every output through the whole batch) but it
still materializes (n, O, P) floats; the structured path avoids that for known layers and
uses this module only for the variables of layers it does not know.
"""

import tensorflow as tf

from lplr_tf.ntk.common import flatten_outputs

_BYTES = 4


def per_example_jacobian(model, x, variables, num_outputs):
    """Per-example Jacobian of the flattened outputs with respect to `variables`.

    Call inside a `tf.function` (vectorized_map is slow eagerly).

    Args:
      model: Keras model, called as `model(x, training=False)`.
      x: Batch, shape (n, *example_shape).
      variables: List of tf.Variables (the parameters θ of this term).
      num_outputs: O, the number of flattened outputs per example (static).

    Returns:
      Tensor (n, O, P) with P = Σ_v size(v); row [i, o] is ∂f_o(x_i)/∂θ, variables
      flattened in order and concatenated.
    """

    def one_example(x_i):
        with tf.GradientTape(persistent=num_outputs > 1, watch_accessed_variables=False) as tape:
            tape.watch(variables)
            # Slice inside the tape: ops run outside it are not recorded.
            f = tf.unstack(flatten_outputs(model(x_i[None], training=False), 1)[0])
        rows = []
        for o in range(num_outputs):
            grads = tape.gradient(
                f[o], variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            rows.append(tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0))
        return tf.stack(rows)

    # Conv2D backprop has no pfor converter and falls back to a while-loop; that is correct,
    # so the fallback is allowed (and its warning is expected for conv nets on this path).
    return tf.vectorized_map(one_example, x, fallback_to_while_loop=True)


def gram(g1, g2, output_mode):
    """Θ block from per-example gradients.

    Args:
      g1: (n1, O, P) per-example gradients of the first batch.
      g2: (n2, O, P) of the second batch.
      output_mode: "full" → (n1·O, n2·O) example-major; "trace" → (n1, n2) output average.
    """
    num_outputs = g1.shape[1]
    if output_mode == "full" or num_outputs == 1:
        a = tf.reshape(g1, (-1, g1.shape[-1]))
        b = tf.reshape(g2, (-1, g2.shape[-1]))
        return tf.matmul(a, b, transpose_b=True)
    return tf.einsum("iop,jop->ij", g1, g2) / num_outputs


class JacobianFeatures:
    """Features and contraction of the general path, for one model and variable set.

    `features(x)` returns a 1-tuple holding the (n, O, P) per-example Jacobian;
    `contract(f1, f2)` returns the Θ block. Both are plain Python functions meant to be
    traced by the caller's `tf.function`.
    """

    def __init__(self, model_ref, variables, num_outputs, output_mode):
        self._model_ref = model_ref
        self.variables = list(variables)
        self.num_outputs = num_outputs
        self.output_mode = output_mode
        self.num_params = sum(int(v.shape.num_elements()) for v in self.variables)

    def features(self, x):
        return (per_example_jacobian(self._model_ref(), x, self.variables, self.num_outputs),)

    def contract(self, f1, f2):
        return gram(f1[0], f2[0], self.output_mode)

    def bytes_per_example(self, activation_floats):
        # The Jacobian rows, their gradient temporaries, and one forward/backward per example.
        return _BYTES * (2 * self.num_outputs * self.num_params + 3 * activation_floats)
