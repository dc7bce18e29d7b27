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
from lplr_tf.ntk.matfree import ESTIMATES as MATRIX_FREE_ESTIMATES
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


# The solves of `ntk.kernel_statistics` that start from the previous probe's vector.
_WARM_STARTED = ("lambda_max", "lambda_min", "kernel_drift_op")


def flatten_variables(variables):
    """Concatenates variables into one float32 vector of shape (P,)."""
    return tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in variables], axis=0)


class Diagnostics:
    """Measures the quantities of the LPLR theory at the network's current weights.

    The probes' path is chosen before anything is measured: the dense kernel when its peak
    memory fits `settings.memory_budget_bytes`, else the matrix-free path (NTK-vector
    products: λ_max exact, λ_min an estimate, no kernel drift), else a `ValueError`
    (`ntk.MemoryBudgetError`) naming the budget, the estimates and the fixes.

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
      should_stop: Callable polled between the bounded steps of a long probe; when it
        returns True the probe raises `ntk.ProbeInterrupted` within about a second.
      jit_compile: XLA for the compiled measurement functions.

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
        should_stop=None,
        jit_compile=False,
    ):
        self.network = network
        self.x_probe, self.y_probe = probe_set
        self.settings = settings or ProbeSettings()
        self.l_star = float(l_star)
        self.learning_rate = learning_rate
        self.should_stop = should_stop
        self._save_reference = save_reference
        self._jit_compile = jit_compile
        self.theta0 = tf.Variable(flatten_variables(network.trainable_variables), trainable=False)
        self.kernel0 = None  # Θ₀ as `empirical_ntk` returned it (unnormalized)
        self._linearized = None  # ntk.LinearizedDynamics of K₀ and r₀
        # NTK probes so far (every `spectrum_every`-th computes the full spectrum); checkpointed.
        self._num_probes = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Loss and gradient are sharded across the replicas of the strategy in scope (the
        # default strategy: one device) and sum-reduced, so they equal the one-device values.
        self._strategy = tf.distribute.get_strategy()
        # Under several replicas the kernel's row blocks go to the replicas' devices.
        self._devices = None
        if self._strategy.num_replicas_in_sync > 1:
            self._devices = list(self._strategy.extended.worker_devices)
        self._on_gpu = bool(tf.config.list_logical_devices("GPU"))
        self._num_probe = int(self.x_probe.shape[0])
        self._probe_shards = self._distribute(*probe_set)
        self._loss_set = None
        if loss_set is not None:
            self._loss_set = (self._distribute(*loss_set), int(loss_set[0].shape[0]))
        self._loss = tf.function(self._sharded_loss, jit_compile=jit_compile)
        self._gradient = tf.function(self._sharded_gradient, jit_compile=jit_compile)
        self.path = self._train_set = None
        if self.settings.measure_ntk:
            self.path = self._plan(self.x_probe, linearized=self.predicts_linearized).path
            self._train_set = self._train_kernel_set(loss_set)
        # Warm starts of the next probe's solves (the previous probe's Ritz vectors), kept in
        # variables so that a checkpoint carries them: a resumed run then measures exactly
        # what an uninterrupted one does.
        rows = self._num_probe * (
            int(self.y_probe.shape[-1]) if self.settings.ntk_output_mode == "full" else 1
        )
        self._start_vectors = {
            name: tf.Variable(tf.zeros([rows], tf.float64), trainable=False)
            for name in _WARM_STARTED
        }

    def _sharpness(self):
        """The network's compiled sharpness solver. Built on first use, outside the strategy
        scope the probe is constructed in: its tf.function must not capture mirrored
        variables, which have no handle in the cross-replica context of a probe."""
        return hessian.sharpness_solver(self.network, jit_compile=self._jit_compile)

    def checkpoint_state(self):
        """The trackables a checkpoint must hold: θ₀ and the warm starts of the solves."""
        state = {"theta0": self.theta0, "ntk_probes": self._num_probes, **self._start_vectors}
        if self.settings.measure_sharpness:
            state["sharpness"] = self._sharpness().state
        return state

    @property
    def estimates(self):
        """The NTK quantities that are estimates on this probe path (none when dense)."""
        return MATRIX_FREE_ESTIMATES if self.path == "matrix_free" else ()

    @property
    def predicts_linearized(self):
        """Whether rows carry the linearized prediction (GD, full kernel, N not too large)."""
        rows = self._num_probe * int(self.y_probe.shape[-1])
        return bool(
            self.learning_rate
            and self.settings.measure_ntk
            and self.settings.ntk_output_mode == "full"
            and rows <= self.settings.linearized_max_rows
        )

    def _plan(self, x, linearized=False):
        return ntk.choose_probe_path(
            self.network,
            x,
            self.settings.ntk_output_mode,
            budget=self.settings.memory_budget_bytes,
            kernel0=True,
            linearized=linearized,
            device=self._on_gpu,
        )

    def _train_kernel_set(self, loss_set):
        """SGD: the training set, when λ_min of its kernel is asked for and fits densely."""
        if loss_set is None or not self.settings.measure_train_kernel:
            return None
        try:
            plan = self._plan(loss_set[0])
        except ntk.MemoryBudgetError:
            return None
        return loss_set[0] if plan.path == "dense" else None

    def restore_reference(self, arrays):
        """Reloads Θ₀ and r₀ (the dict given to `save_reference`) after a resume."""
        if arrays and "kernel0" in arrays:
            self.kernel0 = arrays["kernel0"]
            if self.predicts_linearized and "residual0" in arrays:
                self._prepare_linearized(arrays["residual0"])

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
        if probed and self.settings.measure_ntk:
            statistics = self._measure_ntk(row)
        if probed and self.settings.measure_sharpness:
            row.update(self._measure_sharpness())
        if self._linearized is not None and row["loss"] is not None:
            row.update(self._linearized_fields(int(step)))
        return Measurement(row=row, probed=probed, spectrum=statistics)

    def _measure_sharpness(self):
        """sharpness β = λ_max(∇²L) on the probe set, and the Hessian-vector products used."""
        result = self._sharpness()(
            self.x_probe, self.y_probe, tolerance=self.settings.sharpness_tolerance
        )
        return {"sharpness": finite(result.value), "sharpness_iterations": result.iterations}

    def _residual(self):
        """r = vec(f(X) − Y) on the probe set, example-major, float64 (n·O,)."""
        prediction = np.asarray(self.network(self.x_probe, training=False), np.float64)
        return (prediction - np.asarray(self.y_probe, np.float64)).reshape(-1)

    def _measure_ntk(self, row):
        """Adds the NTK fields to `row`; returns the `ntk.KernelStatistics` of K = Θ/n."""
        scale = 1.0 / self._num_probe
        full_spectrum = self.settings.spectrum_every > 0 and (
            int(self._num_probes.numpy()) % self.settings.spectrum_every == 0
        )
        if self.path == "matrix_free":
            statistics = ntk.matrix_free_statistics(
                self.network, self.x_probe, scale=scale, should_stop=self.should_stop
            )
        else:
            theta = self._kernel(self.x_probe)
            first = self.kernel0 is None
            statistics = ntk.kernel_statistics(
                theta,
                None if first else self.kernel0,
                scale=scale,
                full_spectrum=full_spectrum,
                should_stop=self.should_stop,
                start_vectors=self._warm_starts(),
                jit_compile=self._jit_compile,
            )
            for name, vector in statistics.vectors.items():
                self._start_vectors[name].assign(tf.cast(vector, tf.float64))
            if first:
                self._keep_reference(theta)
                row.update(kernel_drift=0.0, kernel_drift_op=0.0)
            else:
                row.update(
                    kernel_drift=finite(statistics.kernel_drift),
                    kernel_drift_op=finite(statistics.kernel_drift_op),
                )
        self._num_probes.assign_add(1)
        row.update(
            ntk_lambda_min=finite(statistics.lambda_min),
            ntk_lambda_max=finite(statistics.lambda_max),
            ntk_trace=finite(statistics.trace),
            ntk_condition=finite(statistics.condition_number),
            gn_sharpness=finite(statistics.lambda_max),
        )
        if self._train_set is not None:
            train = ntk.kernel_statistics(
                self._kernel(self._train_set),
                scale=1.0 / int(self._train_set.shape[0]),
                quantities=("lambda_min",),
                should_stop=self.should_stop,
            )
            row["train_ntk_lambda_min"] = finite(train.lambda_min)
        return statistics

    def _warm_starts(self):
        """The previous probe's Ritz vectors (a unit vector is never zero: zero = none)."""
        vectors = {}
        for name, variable in self._start_vectors.items():
            vector = variable if self._on_gpu else variable.numpy()
            if np.any(np.asarray(vector) != 0):
                vectors[name] = vector
        return vectors or None

    def _kernel(self, x):
        """Θ(x, x), unnormalized: NumPy on the host, a tensor kept on a GPU."""
        return ntk.empirical_ntk(
            self.network,
            x,
            output_mode=self.settings.ntk_output_mode,
            devices=self._devices,
            should_stop=self.should_stop,
            as_numpy=not self._on_gpu,
        )

    def _keep_reference(self, theta):
        """Keeps Θ₀ (and r₀ with the linearized prediction), stored once for a resume."""
        self.kernel0 = theta
        residual0 = self._residual()
        if self._save_reference is not None:
            self._save_reference({"kernel0": np.asarray(theta), "residual0": residual0})
        if self.predicts_linearized:
            self._prepare_linearized(residual0)

    def _prepare_linearized(self, residual0):
        self._linearized = ntk.LinearizedDynamics(
            np.asarray(self.kernel0), residual0, self.learning_rate, scale=1.0 / self._num_probe
        )

    def _linearized_fields(self, step):
        """loss_linearized = ‖r_t^lin‖²/(2n) and linearized_deviation = ‖r_t − r_t^lin‖/‖r₀‖."""
        predicted = self._linearized.residuals([step])[0]
        fields = {"loss_linearized": finite(0.5 * predicted @ predicted / self._num_probe)}
        if self._linearized.residual0_norm > 0:
            deviation = np.linalg.norm(self._residual() - predicted)
            fields["linearized_deviation"] = finite(deviation / self._linearized.residual0_norm)
        return fields
