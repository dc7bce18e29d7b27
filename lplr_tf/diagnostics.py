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

from lplr_tf import hessian, losses, validation
from lplr_tf.ntk.common import OUTPUT_MODES
from lplr_tf.ntk_probe import NTKProbe
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
      sharpness_tolerance: Relative tolerance of the convergence test of the sharpness
        (Lanczos on Hessian-vector products, warm-started from the previous probe).
      spectrum_every: Every how many NTK probes the full spectrum of K is computed (one
        float64 eigvalsh, for TensorBoard's histogram); the first probe always; 0: never.
      linearized_max_rows: The linearized prediction needs one eigendecomposition of K₀
        (minutes beyond ~10⁴ rows, three N² float64 arrays): it is made up to this many
        kernel rows N and skipped above.
      measure_train_kernel: SGD: also λ_min of the kernel of the whole training set at each
        probe (the probe subset's overstates it), when its dense probe fits the budget.
      memory_budget_bytes: The probes' memory budget; None: what `ntk.memory_budget()` finds
        (available memory and the container's limit). A probe whose dense kernel would not
        fit switches to the matrix-free path (its λ_min is then an estimate, and kernel
        drift is not measured); one that fits neither way stops the run before step 0.
    """

    measure_ntk: bool = True
    ntk_output_mode: str = "full"
    measure_sharpness: bool = True
    a_priori_check: bool = True
    sharpness_tolerance: float = 1e-5
    spectrum_every: int = 10
    linearized_max_rows: int = 8192
    measure_train_kernel: bool = True
    memory_budget_bytes: int | None = None

    def __post_init__(self):
        validation.boolean("diagnostics.ProbeSettings.measure_ntk", self.measure_ntk)
        validation.choice(
            "diagnostics.ProbeSettings.ntk_output_mode", self.ntk_output_mode, OUTPUT_MODES
        )
        validation.boolean("diagnostics.ProbeSettings.measure_sharpness", self.measure_sharpness)
        validation.boolean("diagnostics.ProbeSettings.a_priori_check", self.a_priori_check)
        validation.number(
            "diagnostics.ProbeSettings.sharpness_tolerance",
            self.sharpness_tolerance,
            0.0,
            strict=True,
            example=1e-5,
        )
        validation.integer("diagnostics.ProbeSettings.spectrum_every", self.spectrum_every, 0)
        validation.integer(
            "diagnostics.ProbeSettings.linearized_max_rows", self.linearized_max_rows, 0
        )
        validation.boolean(
            "diagnostics.ProbeSettings.measure_train_kernel", self.measure_train_kernel
        )
        if self.memory_budget_bytes is not None:
            validation.integer(
                "diagnostics.ProbeSettings.memory_budget_bytes", self.memory_budget_bytes, 1
            )


def flatten_variables(variables):
    """Concatenates variables into one float32 vector of shape (P,)."""
    return tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], axis=0)


class Diagnostics:
    """Measures the quantities of the LPLR theory at the network's current weights.

    The loss, ‖∇L‖², the PL ratio and the drift at every logged row; at probes also the NTK
    fields (`ntk_probe.NTKProbe`, whose path — dense or matrix-free — is chosen up front
    against the memory budget) and the sharpness (compiled Lanczos on Hessian-vector
    products, warm-started from the previous probe).

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
      save_reference: Called once with {"kernel0": Θ₀, "residual0": r₀} (NumPy arrays) when
        Θ₀ is first measured, so that a resumed run can restore them; None: kept in memory.
      jit_compile: XLA for the compiled measurement functions.

    Attributes:
      should_stop: Callable polled between the bounded steps of a long probe (None: never
        stop); when it returns True the probe raises `ntk.ProbeInterrupted` within about a
        second.
      ntk: The `NTKProbe` (None without NTK probes).

    Raises:
      ValueError: the probes fit the memory budget neither dense nor matrix-free.
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
        self._jit_compile = jit_compile
        self.theta0 = tf.Variable(flatten_variables(network.trainable_variables), trainable=False)
        # Loss and gradient are sharded across the replicas of the strategy in scope (the
        # default strategy: one device) and sum-reduced, so they equal the one-device values.
        self._strategy = tf.distribute.get_strategy()
        # Under several replicas the kernel's row blocks go to the replicas' devices.
        devices = None
        if self._strategy.num_replicas_in_sync > 1:
            devices = list(self._strategy.extended.worker_devices)
        self._num_probe = int(self.x_probe.shape[0])
        self._probe_shards = self._distribute(*probe_set)
        self._loss_set = None
        if loss_set is not None:
            self._loss_set = (self._distribute(*loss_set), int(loss_set[0].shape[0]))
        self._loss = tf.function(self._sharded_loss, jit_compile=jit_compile)
        self._gradient = tf.function(self._sharded_gradient, jit_compile=jit_compile)
        # The residual of every logged row (the linearized deviation): compiled when the
        # variables are plain (an eager Keras call costs ~4 ms a row on the demo); eager under
        # a strategy, whose mirrored variables a function traced in the cross-replica context
        # cannot capture.
        self._x_probe_tensor = tf.convert_to_tensor(self.x_probe)
        self._forward = lambda x: network(x, training=False)
        if not tf.distribute.has_strategy():
            self._forward = tf.function(self._forward, jit_compile=jit_compile)
        self.ntk = None
        if self.settings.measure_ntk:
            self.ntk = NTKProbe(
                network,
                probe_set,
                self.settings,
                train_inputs=None if loss_set is None else loss_set[0],
                learning_rate=learning_rate,
                save_reference=save_reference,
                devices=devices,
                jit_compile=jit_compile,
            )

    @property
    def should_stop(self):
        return None if self.ntk is None else self.ntk.should_stop

    @should_stop.setter
    def should_stop(self, should_stop):
        if self.ntk is not None:
            self.ntk.should_stop = should_stop

    @property
    def path(self):
        """How the NTK is probed: "dense", "matrix_free", or None (not measured)."""
        return None if self.ntk is None else self.ntk.path

    @property
    def estimates(self):
        """The NTK quantities that are estimates on this probe path."""
        return () if self.ntk is None else self.ntk.estimates

    def restore_reference(self, arrays):
        """Reloads Θ₀ and r₀ (the dict given to `save_reference`) after a resume."""
        if self.ntk is not None:
            self.ntk.restore_reference(arrays)

    def _sharpness(self):
        """The network's compiled sharpness solver. Built on first use, outside the strategy
        scope the probe is constructed in: its tf.function must not capture mirrored
        variables, which have no handle in the cross-replica context of a probe."""
        return hessian.sharpness_solver(self.network, jit_compile=self._jit_compile)

    def checkpoint_state(self):
        """The trackables a checkpoint must hold: θ₀ and the warm starts of the solves."""
        state = {"theta0": self.theta0}
        if self.ntk is not None:
            state.update(self.ntk.checkpoint_state())
        if self.settings.measure_sharpness:
            state["sharpness"] = self._sharpness().state
        return state

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
          pl_ratio, drift, relative_drift; when probing the NTK ntk_lambda_min,
          ntk_lambda_max, ntk_trace, ntk_condition, gn_sharpness (= λ_max(K)), on the dense
          path (`path`) kernel_drift and kernel_drift_op, for SGD train_ntk_lambda_min (λ_min
          of the whole training set's kernel); sharpness and sharpness_iterations; with the
          linearized prediction loss_linearized and linearized_deviation = ‖r_t − r_t^lin‖ /
          ‖r₀‖. Non-finite values are None. The Measurement's `spectrum` is the
          `ntk.KernelStatistics` of the probe (its eigenvalues when the full spectrum was
          computed).

        Raises:
          ntk.ProbeInterrupted: `should_stop()` became True during the probe.
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
        statistics = None
        probed = probe and row["loss"] is not None
        if probed and self.ntk is not None:
            statistics = self.ntk.measure(row, self._residual)
        if probed and self.settings.measure_sharpness:
            row.update(self._measure_sharpness())
        if self.ntk is not None and row["loss"] is not None:
            row.update(self.ntk.linearized_fields(int(step), self._residual))
        return Measurement(row=row, probed=probed, spectrum=statistics)

    def _measure_sharpness(self):
        """sharpness β = λ_max(∇²L) on the probe set, and the Hessian-vector products used."""
        result = self._sharpness()(
            self.x_probe, self.y_probe, tolerance=self.settings.sharpness_tolerance
        )
        return {"sharpness": finite(result.value), "sharpness_iterations": result.iterations}

    def _residual(self):
        """r = vec(f(X) − Y) on the probe set, example-major, float64 (n·O,)."""
        prediction = np.asarray(self._forward(self._x_probe_tensor), np.float64)
        return (prediction - np.asarray(self.y_probe, np.float64)).reshape(-1)
