"""The trainer: a Keras model with a custom squared-loss `train_step`, and the step loop.

Training minimizes the squared loss (losses.py) on each batch B,

    L_B(theta) = 1 / (2 |B|) * sum_{i in B} || f(x_i; theta) - y_i ||^2,

with plain gradient steps theta <- theta - eta * grad L_B (keras SGD, no momentum). With the
full batch this is exactly the gradient descent of the LPLR theorems.

Under a tf.distribute strategy each replica sums the squared residuals of its shard and
divides by the global batch size (all-reduced), and the optimizer sums the replicas'
gradients: R replicas take exactly the step one device would.
"""

import keras
import tensorflow as tf

from lplr_tf.losses import HalfSquaredError, squared_loss
from lplr_tf.preemption import Interrupted


class Trainer(keras.Model):
    """Wraps a network; `train_step` takes one gradient step on the squared loss.

    The wrapper is a regular Keras model: `trainer.fit(...)` works too, and our own loop
    (`train`) calls the same `train_step` through one compiled function.

    Args:
      network: The `keras.Model` being trained, mapping (batch, ...) to (batch, O).
    """

    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    @property
    def metrics(self):
        # Our own tracker: with no compiled loss, Keras would otherwise report loss = 0.
        return [self.loss_tracker]

    def train_step(self, data):
        inputs, targets = data
        local_size = tf.cast(tf.shape(inputs)[0], tf.float32)
        global_size = tf.distribute.get_replica_context().all_reduce("sum", local_size)
        with tf.GradientTape() as tape:
            loss = squared_loss(self.network(inputs, training=True), targets, global_size)
        variables = self.network.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def build_trainer(network, learning_rate, jit_compile, learning_rate_schedule=None):
    """Returns a compiled `Trainer` with plain SGD and XLA pinned.

    The step size is `learning_rate`, or `learning_rate_schedule` (a Keras schedule) if given.
    """
    trainer = Trainer(network)
    trainer.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate_schedule or learning_rate),
        # Declares what `train_step` minimizes (it computes the loss itself), so that tools
        # reading `model.loss`, such as LPLRCallback, see the squared loss L.
        loss=HalfSquaredError(),
        jit_compile=jit_compile,
    )
    trainer.optimizer.build(network.trainable_variables)
    return trainer


def train(
    trainer,
    batches,
    num_steps,
    on_step,
    *,
    strategy,
    start_step=0,
    interrupted=lambda: False,
    jit_compile=False,
):
    """Runs the step loop from `start_step` to `num_steps`.

    Args:
      trainer: A compiled `Trainer` built under `strategy.scope()`.
      batches: An iterator of distributed (x, y) batches (from
        `strategy.experimental_distribute_dataset`).
      num_steps: The last step.
      on_step: Callable(step) -> bool, called after every update with the step the weights
        are now at; it measures when due and returns True to stop (converged, diverged).
      strategy: The tf.distribute strategy the trainer was built under.
      start_step: The step the weights are at (0, or the resumed step).
      interrupted: Callable() -> bool polled after every step (e.g. SIGTERM received).
      jit_compile: XLA for the step function.

    Returns:
      The last step reached.

    Raises:
      preemption.Interrupted: when `interrupted()` became true; its `step` is where the
        weights are.
    """

    @tf.function(jit_compile=jit_compile)
    def step_function(batch):
        strategy.run(trainer.train_step, args=(batch,))

    step = start_step
    while step < num_steps:
        step_function(next(batches))
        step += 1
        if on_step(step):
            break
        if interrupted():
            raise Interrupted(step)
    return step
