"""The squared loss of the LPLR theory, defined once.

    L(θ) = 1/(2n) Σ_i ‖f(x_i; θ) − y_i‖²,   f(x_i) ∈ R^O,

the loss whose gradient descent the theorems describe: the trainer's step, the probes' loss
and gradient, the Hessian-vector products of the sharpness and the Keras loss a user can
compile with all use the functions here. Under a `tf.distribute` strategy each replica sums
its shard's squared residuals and divides by the *global* number of examples n, so the
replicas' partial losses add up to L.
"""

import keras
import tensorflow as tf


def half_squared_error_sum(predictions, targets, dtype=tf.float32):
    """½ Σ ‖f_i − y_i‖² over a batch, in `dtype`.

    Args:
      predictions: Model outputs f(x), shape (b, O) (any dtype; cast to `dtype`).
      targets: Targets y with the same number of elements, (b, O) or (b,) when O = 1.
      dtype: Of the computation: float32 for training; the Hessian of a float64 model
        keeps float64.

    Returns:
      A scalar of `dtype`.
    """
    predictions = tf.cast(predictions, dtype)
    targets = tf.reshape(tf.cast(targets, dtype), tf.shape(predictions))
    return 0.5 * tf.reduce_sum(tf.square(predictions - targets))


def squared_loss(predictions, targets, num_examples, dtype=tf.float32):
    """L = ½ Σ_i ‖f_i − y_i‖² / n for the examples given (n = `num_examples`, the global count).

    Args:
      predictions: (b, O) outputs of this replica's (or the whole) batch.
      targets: (b, O) targets.
      num_examples: n, the number of examples the loss averages over (all replicas).
      dtype: Of the computation (see `half_squared_error_sum`).

    Returns:
      A scalar of `dtype`: this batch's share of L.
    """
    total = half_squared_error_sum(predictions, targets, dtype)
    return total / tf.cast(num_examples, dtype)


class HalfSquaredError(keras.losses.Loss):
    """The squared loss L as a Keras loss: 1/(2n) Σ_i ‖f(x_i) − y_i‖².

    Per example ½·Σ_o (f_o − y_o)² (summed over the last axis), averaged over the batch by the
    default reduction. Compile with it to train on exactly the loss the probes measure:
    `model.compile(optimizer=keras.optimizers.SGD(eta), loss=HalfSquaredError())`; then a
    Keras SGD step with learning rate η is the GD step of the theory with step size η.
    """

    REDUCTION = "sum_over_batch_size"

    def __init__(self, name="half_squared_error", reduction=REDUCTION, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.reshape(tf.cast(y_true, y_pred.dtype), tf.shape(y_pred))
        return 0.5 * tf.reduce_sum(tf.square(y_pred - y_true), axis=-1)
