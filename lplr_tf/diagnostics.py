"""One probe of the optimization state: loss, gradient norm, PL ratio, drift, NTK, sharpness.

Conventions (docs/theory.md): L = 1/(2n) Σ_i ‖f(x_i) − y_i‖²; the PL ratio is
q = ‖∇L‖² / (2 (L − L*)); the NTK is reported normalized, K = Θ/n with Θ = J Jᵀ of shape
(n·O, n·O) ("full", example-major) or (n, n) ("trace"); drift is measured from the weights θ₀
captured when the probe is created (or restored on resume), kernel drift from K₀, the kernel
of the first NTK probe.

The reference state (θ₀, K₀ and the residual r₀ of the linearized prediction) is kept so
that a resumed run measures against the original one: θ₀ is a tf.Variable the caller
checkpoints; K₀ and r₀ are handed once to `save_reference` and given back after a resume
through `restore_reference`.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from lplr_tf import hessian, losses, ntk, validation
from lplr_tf.ntk.common import OUTPUT_MODES
from lplr_tf.probing import Measurement
from lplr_tf.values import finite


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """What a probe measures besides loss, ‖∇L‖², PL ratio and drift.

    Gin: `diagnostics.ProbeSettings.measure_sharpness = False`, ...

    Attributes:
      measure_ntk: The NTK spectrum and kernel drift (and the linearized prediction).
      ntk_output_mode: "full" (the nO × nO kernel the PL theory needs) or "trace" (n × n,
        averaged over outputs; not the theory's kernel when O > 1).
      measure_sharpness: λ_max of the loss Hessian.
      a_priori_check: Full-batch GD with the NTK measured: sample the ball B(θ₀, R₀) of the
        a-priori theorem at initialization, before the first step (`a_priori.check`; it
        costs about two probes).
    """

    measure_ntk: bool = True
    ntk_output_mode: str = "full"
    measure_sharpness: bool = True
    a_priori_check: bool = True

    def __post_init__(self):
        validation.boolean("diagnostics.ProbeSettings.measure_ntk", self.measure_ntk)
        validation.choice(
            "diagnostics.ProbeSettings.ntk_output_mode", self.ntk_output_mode, OUTPUT_MODES
        )
        validation.boolean("diagnostics.ProbeSettings.measure_sharpness", self.measure_sharpness)
        validation.boolean("diagnostics.ProbeSettings.a_priori_check", self.a_priori_check)


def flatten_variables(variables):
    """Concatenates variables into one float32 vector of shape (P,)."""
    return tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], axis=0)


class Diagnostics:
    """Measures the quantities of the LPLR theory at the network's current weights.

    Args:
      network: The `keras.Model` being trained.
      probe_set: (x, y), the set of gradients, the PL ratio, the NTK and the sharpness (the
        full training set for GD, a fixed seeded subset for SGD): (m, ...), (m, O) tensors.
      loss_set: (x, y), the set of the logged `loss` when it is not the probe set (SGD: the
        full training set), (n, ...) and (n, O); None: the probe set (no second pass).
      settings: The `ProbeSettings`.
      l_star: L* of the PL ratio.
      learning_rate: η of full-batch GD on the probe set, for the linearized (kernel-regime)
        prediction r_t^lin = (I − ηK₀)^t r₀ that rows then carry; None: no prediction.
      save_reference: Called once with {"kernel0": K₀, "residual0": r₀} (float64 arrays)
        when K₀ is first measured, so that a resumed run can restore them; None: kept in
        memory only.
      jit_compile: XLA for the compiled measurement functions.
    """

    def __init__(
        self,
        network,
        probe_set,
        *,
        loss_set=None,
        settings=None,
        l_star=0.0,
        learning_rate=None,
        save_reference=None,
        jit_compile=False,
    ):
        self.network = network
        self.x_probe, self.y_probe = probe_set
        self.settings = settings or ProbeSettings()
        self.l_star = float(l_star)
        self.learning_rate = learning_rate
        self._save_reference = save_reference
        self.theta0 = tf.Variable(flatten_variables(network.trainable_variables), trainable=False)
        self.kernel0 = None
        self._linearized = None  # (eigenvalues of K₀, eigenvectors, Vᵀr₀, ‖r₀‖)
        # Loss and gradient are sharded across the replicas of the strategy in scope (the
        # default strategy: one device) and sum-reduced, so they equal the one-device values.
        self._strategy = tf.distribute.get_strategy()
        # Under several replicas the kernel's row blocks go to the replicas' devices.
        self._devices = None
        if self._strategy.num_replicas_in_sync > 1:
            self._devices = list(self._strategy.extended.worker_devices)
        self._num_probe = int(self.x_probe.shape[0])
        self._probe_shards = self._distribute(*probe_set)
        self._loss_set = None
        if loss_set is not None:
            self._loss_set = (self._distribute(*loss_set), int(loss_set[0].shape[0]))
        self._loss = tf.function(self._sharded_loss, jit_compile=jit_compile)
        self._gradient = tf.function(self._sharded_gradient, jit_compile=jit_compile)

    @property
    def predicts_linearized(self):
        """Whether rows carry the linearized prediction (GD with the full kernel)."""
        return bool(
            self.learning_rate
            and self.settings.measure_ntk
            and self.settings.ntk_output_mode == "full"
        )

    def restore_reference(self, arrays):
        """Reloads K₀ and r₀ (the dict given to `save_reference`) after a resume."""
        if arrays and "kernel0" in arrays:
            self.kernel0 = np.asarray(arrays["kernel0"], np.float64)
            if self.predicts_linearized and "residual0" in arrays:
                self._prepare_linearized(np.asarray(arrays["residual0"], np.float64))

    def _distribute(self, x, y):
        """The whole set as one global batch, split across the replicas: (x, y) shards."""
        batch = tf.data.Dataset.from_tensor_slices((x, y)).batch(int(x.shape[0]))
        return next(iter(self._strategy.experimental_distribute_dataset(batch)))

    def _partial_loss(self, x, y, num_examples):
        return losses.squared_loss(self.network(x, training=False), y, num_examples)

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
        """Measures one metrics row at the current weights.

        Args:
          step: The training step the weights are at.
          probe: Whether to include the NTK and sharpness (the expensive part).

        Returns:
          A `probing.Measurement`. Its row has keys step, loss, probe_loss, grad_norm_sq,
          pl_ratio, drift, relative_drift; when probing ntk_lambda_min, ntk_lambda_max,
          ntk_trace, ntk_condition, kernel_drift, kernel_drift_op, gn_sharpness (NTK) and
          sharpness; with the linearized prediction loss_linearized and
          linearized_deviation = ‖r_t − r_t^lin‖ / ‖r₀‖. Non-finite values are None.
        """
        probe_loss, grad_norm_sq, drift, theta0_norm = (
            float(t) for t in self._gradient(self._probe_shards, self._num_probe)
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
        spectrum = None
        probed = probe and row["loss"] is not None
        if probed and self.settings.measure_ntk:
            spectrum = self._measure_ntk(row)
        if probed and self.settings.measure_sharpness:
            row["sharpness"] = finite(hessian.sharpness(self.network, self.x_probe, self.y_probe))
        if self._linearized is not None and row["loss"] is not None:
            row.update(self._linearized_fields(int(step)))
        return Measurement(row=row, probed=probed, spectrum=spectrum)

    def _residual(self):
        """r = vec(f(X) − Y) on the probe set, example-major, float64 (n·O,)."""
        prediction = np.asarray(self.network(self.x_probe, training=False), np.float64)
        return (prediction - np.asarray(self.y_probe, np.float64)).reshape(-1)

    def _measure_ntk(self, row):
        """Adds the NTK fields to `row`; returns the spectrum of K = Θ/n."""
        theta = ntk.empirical_ntk(
            self.network,
            self.x_probe,
            output_mode=self.settings.ntk_output_mode,
            devices=self._devices,
        )
        kernel = np.asarray(theta, dtype=np.float64) / self._num_probe
        # The kernel's own dtype (float32) sets the PSD tolerance of the eigensolve.
        spectrum = ntk.ntk_spectrum(theta, scale=1.0 / self._num_probe)
        if self.kernel0 is None:
            self.kernel0 = kernel
            residual0 = self._residual()
            if self._save_reference is not None:
                self._save_reference({"kernel0": kernel, "residual0": residual0})
            if self.predicts_linearized:
                self._prepare_linearized(residual0)
        difference = kernel - self.kernel0
        row.update(
            ntk_lambda_min=float(spectrum.lambda_min),
            ntk_lambda_max=float(spectrum.lambda_max),
            ntk_trace=float(spectrum.trace),
            ntk_condition=finite(spectrum.condition_number),
            kernel_drift=float(np.linalg.norm(difference) / np.linalg.norm(self.kernel0)),
            kernel_drift_op=float(np.linalg.norm(difference, 2)),
            gn_sharpness=float(spectrum.lambda_max),
        )
        return spectrum

    def _prepare_linearized(self, residual0):
        eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (self.kernel0 + self.kernel0.T))
        coefficients = eigenvectors.T @ residual0
        self._linearized = (eigenvalues, eigenvectors, coefficients, np.linalg.norm(residual0))

    def _linearized_fields(self, step):
        """loss_linearized = ‖r_t^lin‖²/(2n) and linearized_deviation = ‖r_t − r_t^lin‖/‖r₀‖."""
        eigenvalues, eigenvectors, coefficients, norm0 = self._linearized
        with np.errstate(over="ignore", invalid="ignore"):  # η·λ > 2: the prediction diverges
            predicted = eigenvectors @ (
                (1.0 - self.learning_rate * eigenvalues) ** step * coefficients
            )
        fields = {"loss_linearized": finite(0.5 * predicted @ predicted / self._num_probe)}
        if norm0 > 0:
            deviation = np.linalg.norm(self._residual() - predicted) / norm0
            fields["linearized_deviation"] = finite(deviation)
        return fields
