"""The NTK part of a probe: the kernel, its statistics and drift, and the linearized prediction.

Conventions (docs/theory.md): Θ = J Jᵀ of the probe set, (n·O, n·O) in "full" mode
(example-major) or (n, n) in "trace" mode; every reported number is of the normalized
K = Θ/n. Kernel drift is measured against K₀, the kernel of the first probe.

The path is chosen before anything is measured: the dense kernel when its peak memory fits
the budget (λ_min exact by a Cholesky factorization, λ_max and ‖K − K₀‖₂ by Lanczos), else
the matrix-free path (NTK-vector products: λ_max exact, λ_min and the trace estimates, no
drift), else a `ValueError` (`ntk.MemoryBudgetError`) naming the budget, the estimates and
the fixes. Each probe's solves start from the previous probe's Ritz vectors; those and the
probe count live in variables a checkpoint carries, so a resumed run measures exactly what an
uninterrupted one does. Θ₀ and r₀ are stored once (`save_reference`).
"""

import numpy as np
import tensorflow as tf

from lplr_tf import ntk
from lplr_tf.ntk.matfree import ESTIMATES as MATRIX_FREE_ESTIMATES
from lplr_tf.values import finite

# The solves of `ntk.kernel_statistics` that start from the previous probe's vector.
_WARM_STARTED = ("lambda_max", "lambda_min", "kernel_drift_op")


class NTKProbe:
    """Measures the NTK fields of a row at the network's current weights.

    Args:
      network: The `keras.Model` being trained.
      probe_set: (x, y), (m, ...) and (m, O) tensors.
      settings: The `diagnostics.ProbeSettings`.
      train_inputs: SGD: the whole training set's inputs, whose kernel's λ_min each probe
        also reports when asked for and when it fits densely; None otherwise.
      learning_rate: η of full-batch GD, for the linearized prediction; None: none.
      save_reference: Called once with {"kernel0": Θ₀, "residual0": r₀}; None: memory only.
      devices: The replicas' devices the kernel's row blocks go to, or None.
      jit_compile: XLA for the device-side solves.
    """

    def __init__(
        self,
        network,
        probe_set,
        settings,
        *,
        train_inputs=None,
        learning_rate=None,
        save_reference=None,
        devices=None,
        jit_compile=False,
    ):
        self.network = network
        self.x_probe, self.y_probe = probe_set
        self.settings = settings
        self.learning_rate = learning_rate
        self.should_stop = None
        self._save_reference = save_reference
        self._devices = devices
        self._jit_compile = jit_compile
        self._on_gpu = bool(tf.config.list_logical_devices("GPU"))
        self._num_examples = int(self.x_probe.shape[0])
        self.kernel0 = None  # Θ₀ as `empirical_ntk` returned it (unnormalized)
        self._linearized = None  # ntk.LinearizedDynamics of K₀ and r₀
        self.path = self._plan(self.x_probe, linearized=self.predicts_linearized).path
        self._train_inputs = self._train_kernel_inputs(train_inputs)
        # Probes so far (every `spectrum_every`-th computes the full spectrum).
        self._num_probes = tf.Variable(0, dtype=tf.int64, trainable=False)
        outputs = int(self.y_probe.shape[-1]) if settings.ntk_output_mode == "full" else 1
        self._start_vectors = {
            name: tf.Variable(tf.zeros([self._num_examples * outputs], tf.float64), trainable=False)
            for name in _WARM_STARTED
        }

    def checkpoint_state(self):
        """The variables a checkpoint carries: the probe count and the warm starts."""
        return {"ntk_probes": self._num_probes, **self._start_vectors}

    @property
    def estimates(self):
        """The NTK quantities that are estimates on this probe path (none when dense)."""
        return MATRIX_FREE_ESTIMATES if self.path == "matrix_free" else ()

    @property
    def predicts_linearized(self):
        """Whether rows carry the linearized prediction (GD, full kernel, N not too large)."""
        rows = self._num_examples * int(self.y_probe.shape[-1])
        return bool(
            self.learning_rate
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

    def _train_kernel_inputs(self, inputs):
        if inputs is None or not self.settings.measure_train_kernel:
            return None
        try:
            plan = self._plan(inputs)
        except ntk.MemoryBudgetError:
            return None
        return inputs if plan.path == "dense" else None

    def restore_reference(self, arrays):
        """Reloads Θ₀ and r₀ (the dict given to `save_reference`) after a resume."""
        if arrays and "kernel0" in arrays:
            self.kernel0 = arrays["kernel0"]
            if self.predicts_linearized and "residual0" in arrays:
                self._prepare_linearized(arrays["residual0"])

    def measure(self, row, residual):
        """Adds the NTK fields to `row`; returns the `ntk.KernelStatistics` of K = Θ/n.

        Args:
          row: The metrics row being measured (updated in place).
          residual: Callable returning r = vec(f(X) − Y) on the probe set (n·O,) float64.
        """
        scale = 1.0 / self._num_examples
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
                self._keep_reference(theta, residual())
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
        if self._train_inputs is not None:
            train = ntk.kernel_statistics(
                self._kernel(self._train_inputs),
                scale=1.0 / int(self._train_inputs.shape[0]),
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

    def _keep_reference(self, theta, residual0):
        """Keeps Θ₀ (and r₀ with the linearized prediction), stored once for a resume."""
        self.kernel0 = theta
        if self._save_reference is not None:
            self._save_reference({"kernel0": np.asarray(theta), "residual0": residual0})
        if self.predicts_linearized:
            self._prepare_linearized(residual0)

    def _prepare_linearized(self, residual0):
        self._linearized = ntk.LinearizedDynamics(
            np.asarray(self.kernel0), residual0, self.learning_rate, scale=1.0 / self._num_examples
        )

    def linearized_fields(self, step, residual):
        """loss_linearized = ‖r_t^lin‖²/(2n) and linearized_deviation = ‖r_t − r_t^lin‖/‖r₀‖
        at `step` (none before K₀ is known or without the prediction)."""
        if self._linearized is None:
            return {}
        # Past η = 2/λ_max(K₀) the prediction grows like |1 − ηλ|^t and overflows: it is then
        # recorded as not finite (None), without NumPy's warnings on the console.
        with np.errstate(over="ignore", invalid="ignore"):
            predicted = self._linearized.residuals([step])[0]
            fields = {"loss_linearized": finite(0.5 * predicted @ predicted / self._num_examples)}
            if self._linearized.residual0_norm > 0:
                deviation = np.linalg.norm(residual() - predicted)
                fields["linearized_deviation"] = finite(deviation / self._linearized.residual0_norm)
        return fields
