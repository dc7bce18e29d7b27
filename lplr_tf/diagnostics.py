"""One probe of the optimization state: loss, gradient norm, PL ratio, drift, NTK, sharpness.

Conventions (DESIGN.md §1): L = 1/(2n) sum ||f(x_i) - y_i||^2; the PL ratio is
q = ||grad L||^2 / (2 (L - L*)); the NTK is reported normalized, K = Theta / n with
Theta = J J^T of shape (n O, n O) ("full") or (n, n) ("trace"); drift is measured from the
weights theta_0 captured when the probe is created (or restored on resume).
"""

import numpy as np
import tensorflow as tf

from lplr_tf import hessian, ntk
from lplr_tf.values import finite


def flatten_variables(variables):
    """Concatenates variables into one float32 vector of shape (P,)."""
    return tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], axis=0)


class Diagnostics:
    """Measures the quantities of the LPLR theory at the network's current weights.

    Args:
      network: The `keras.Model` being trained.
      x_probe, y_probe: The probe set for gradients, the PL ratio, the NTK and sharpness
        (the full training set for GD, a fixed seeded subset for SGD), (m, ...), (m, O).
      x_loss, y_loss: The set of the logged `loss`, (n, ...) and (n, O), when it is not the
        probe set (SGD: the full training set). None: the probe set (no second pass).
      l_star: L* of the PL ratio.
      measure_ntk: Whether probes compute the NTK spectrum and kernel drift.
      ntk_output_mode: "full" (nO x nO kernel, what the PL theory needs) or "trace".
      measure_sharpness: Whether probes compute lambda_max of the loss Hessian.
      linearized_learning_rate: If set (full-batch GD with the full kernel), the first NTK
        probe also predicts the kernel-regime loss L_t^lin = ||(I - eta K_0)^t r_0||^2 / (2n)
        with this step size, for every step in `linearized_steps`.
      linearized_steps: The steps at which rows carry `loss_linearized` (the log steps).
      jit_compile: XLA for the compiled measurement functions.
    """

    def __init__(
        self,
        network,
        x_probe,
        y_probe,
        *,
        x_loss=None,
        y_loss=None,
        l_star=0.0,
        measure_ntk=True,
        ntk_output_mode="full",
        measure_sharpness=True,
        linearized_learning_rate=None,
        linearized_steps=(),
        jit_compile=False,
    ):
        self.network = network
        self.x_probe, self.y_probe = x_probe, y_probe
        self.l_star = float(l_star)
        self.measure_ntk = measure_ntk
        self.ntk_output_mode = ntk_output_mode
        self.measure_sharpness = measure_sharpness
        self.linearized_learning_rate = linearized_learning_rate
        self.linearized_steps = [int(s) for s in linearized_steps]
        self.theta0 = tf.Variable(flatten_variables(network.trainable_variables), trainable=False)
        self.kernel0 = None
        self.spectrum = None
        self.linearized = {}
        # Checkpointed copies of the reference state, so that a resumed run measures kernel
        # drift and the linearized prediction against the original K_0 and theta_0.
        num_probe = int(x_probe.shape[0])
        kernel_dim = num_probe * int(y_probe.shape[-1]) if ntk_output_mode == "full" else num_probe
        self._kernel0_state = tf.Variable(
            tf.zeros([kernel_dim if measure_ntk else 0] * 2, tf.float64), trainable=False
        )
        self._linearized_state = tf.Variable(
            tf.fill([len(self.linearized_steps)], tf.constant(float("nan"), tf.float64)),
            trainable=False,
        )
        # Loss and gradient are sharded across the replicas of the strategy in scope (the
        # default strategy: one device) and sum-reduced, so they equal the one-device values.
        self._strategy = tf.distribute.get_strategy()
        # Under several replicas the kernel's row blocks go to the replicas' devices.
        self._devices = None
        if self._strategy.num_replicas_in_sync > 1:
            self._devices = list(self._strategy.extended.worker_devices)
        self._loss_set = None
        if x_loss is not None:
            self._loss_set = (self._distribute(x_loss, y_loss), int(x_loss.shape[0]))
        self._probe_shards = self._distribute(x_probe, y_probe)
        self._loss = tf.function(self._sharded_loss, jit_compile=jit_compile)
        self._gradient = tf.function(self._sharded_gradient, jit_compile=jit_compile)

    def checkpoint_state(self):
        """The tf.Variables a checkpoint must hold for drift to be measured after a resume."""
        return {
            "theta0": self.theta0,
            "kernel0": self._kernel0_state,
            "loss_linearized": self._linearized_state,
        }

    def restore_state(self):
        """Reloads K_0 and the linearized prediction after a checkpoint restore."""
        kernel0 = self._kernel0_state.numpy()
        if kernel0.size and np.any(kernel0):
            self.kernel0 = kernel0
        values = self._linearized_state.numpy()
        self.linearized = {
            s: float(v) for s, v in zip(self.linearized_steps, values) if not np.isnan(v)
        }

    def _distribute(self, x, y):
        """The whole set as one global batch, split across the replicas: (x, y) shards."""
        batch = tf.data.Dataset.from_tensor_slices((x, y)).batch(int(x.shape[0]))
        return next(iter(self._strategy.experimental_distribute_dataset(batch)))

    def _partial_loss(self, x, y, num_examples):
        """This replica's share of L = 1/(2n) sum_i ||f_i - y_i||^2 (n: the global count)."""
        residual = tf.cast(self.network(x, training=False), tf.float32) - y
        return 0.5 * tf.reduce_sum(tf.square(residual)) / num_examples

    def _partial_gradient(self, x, y, num_examples):
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            loss = self._partial_loss(x, y, num_examples)
        return loss, flatten_variables(tape.gradient(loss, variables))

    def _sharded_loss(self, shards, num_examples):
        partial = self._strategy.run(self._partial_loss, args=(*shards, num_examples))
        return self._strategy.reduce("SUM", partial, axis=None)

    def _sharded_gradient(self, shards, num_examples):
        partial_loss, partial_gradient = self._strategy.run(
            self._partial_gradient, args=(*shards, num_examples)
        )
        # One reduce per tensor: MultiWorkerMirrored cannot pack a scalar with a vector.
        loss = self._strategy.reduce("SUM", partial_loss, axis=None)
        gradient = self._strategy.reduce("SUM", partial_gradient, axis=None)
        theta = flatten_variables(self.network.trainable_variables)
        return (
            loss,
            tf.reduce_sum(tf.square(gradient)),
            tf.norm(theta - self.theta0),
            tf.norm(self.theta0),
        )

    def measure(self, step, probe):
        """Returns one metrics row at the current weights.

        Args:
          step: The training step the weights are at.
          probe: Whether to include the NTK and sharpness (the expensive part).

        Returns:
          A dict with keys step, loss, probe_loss, grad_norm_sq, pl_ratio, drift,
          relative_drift, and when probing ntk_lambda_min, ntk_lambda_max, ntk_trace,
          ntk_condition, kernel_drift, kernel_drift_op, sharpness, gn_sharpness,
          loss_linearized. Non-finite values are None.
        """
        probe_loss, grad_norm_sq, drift, theta0_norm = (
            float(t) for t in self._gradient(self._probe_shards, int(self.x_probe.shape[0]))
        )
        loss = probe_loss if self._loss_set is None else float(self._loss(*self._loss_set))
        gap = probe_loss - self.l_star
        row = {
            "step": int(step),
            "loss": finite(loss),
            "probe_loss": finite(probe_loss),
            "grad_norm_sq": finite(grad_norm_sq),
            "pl_ratio": finite(grad_norm_sq / (2.0 * gap)) if gap > 0 else None,
            "drift": finite(drift),
            "relative_drift": finite(drift / theta0_norm) if theta0_norm > 0 else None,
        }
        if probe and row["loss"] is not None:
            if self.measure_ntk:
                row.update(self._ntk_fields())
            if self.measure_sharpness:
                row["sharpness"] = finite(
                    hessian.sharpness(self.network, self.x_probe, self.y_probe)
                )
        if step in self.linearized:
            row["loss_linearized"] = self.linearized[step]
        return row

    def _ntk_fields(self):
        num_examples = int(self.x_probe.shape[0])
        theta = ntk.empirical_ntk(
            self.network, self.x_probe, output_mode=self.ntk_output_mode, devices=self._devices
        )
        kernel = np.asarray(theta, dtype=np.float64) / num_examples
        # The kernel's own dtype (float32) sets the PSD tolerance of the eigensolve.
        spectrum = ntk.ntk_spectrum(theta, scale=1.0 / num_examples)
        if self.kernel0 is None:
            self.kernel0 = kernel
            self._kernel0_state.assign(kernel)
            if self.linearized_learning_rate and self.ntk_output_mode == "full":
                self._predict_linearized()
        difference = kernel - self.kernel0
        fields = {
            "ntk_lambda_min": float(spectrum.lambda_min),
            "ntk_lambda_max": float(spectrum.lambda_max),
            "ntk_trace": float(spectrum.trace),
            "ntk_condition": finite(spectrum.condition_number),
            "kernel_drift": float(np.linalg.norm(difference) / np.linalg.norm(self.kernel0)),
            "kernel_drift_op": float(np.linalg.norm(difference, 2)),
            "gn_sharpness": float(spectrum.lambda_max),
        }
        self.spectrum = spectrum
        return fields

    def _predict_linearized(self):
        """Fills `self.linearized` from K_0 and r_0 = vec(f(X) - Y) at theta_0."""
        residual0 = (
            np.asarray(self.network(self.x_probe, training=False), np.float64)
            - np.asarray(self.y_probe, np.float64)
        ).reshape(-1)
        curve = ntk.linearized_loss_curve(
            self.kernel0,
            residual0,
            self.linearized_learning_rate,
            self.linearized_steps,
            int(self.x_probe.shape[0]),
        )
        self.linearized = {s: float(v) for s, v in zip(self.linearized_steps, curve)}
        self._linearized_state.assign(np.asarray(curve, np.float64))
