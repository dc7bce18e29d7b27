"""Keras callbacks: the LPLR probes inside any user's `model.fit`.

    callback = lplr_tf.LPLRCallback((x_probe, y_probe), every_n_steps=10, logdir="tb")
    model.fit(x, y, batch_size=len(x), shuffle=False, epochs=200, callbacks=[callback])
    print(callback.summary()["verdict"])

`LPLRCallback` works with any compiled Keras 3 model trained by the standard `fit` (its own
optimizer, loss and train_step). It measures, on a fixed probe set (x, y) of n examples, the
quantities of DESIGN.md §1 by reusing `diagnostics.Diagnostics`:

* the squared probe loss L = 1/(2n) Σ_i ‖f(x_i) − y_i‖² (whatever loss the model trains on),
  ‖∇L‖², the PL ratio q = ‖∇L‖² / (2 (L − L*)),
* the drift ‖θ_t − θ_0‖ from the weights θ_0 at `on_train_begin`,
* the spectrum of the normalized NTK K = Θ/n of the probe set and the kernel drift
  ‖K_t − K_0‖_F / ‖K_0‖_F, optionally the sharpness λ_max(∇²L),

and turns the history into the launcher's summary with `analysis.summarize`.

Steps. Step 0 is measured at `on_train_begin`; step t is the number of optimizer steps
(`fit` batches) since then, counted across epochs (with `steps_per_execution = k`, the
callback sees every k-th step and measures at the first one at or past each multiple of
`every_n_steps`); the last step is always measured at `on_train_end`. Each `fit` call starts a
new record (θ_0, history, metrics file).

Learning rate of the summary (η of the GD theory on L). Explicit `learning_rate=` wins.
Otherwise it is read from the model's optimizer at train begin (unwrapping a
`LossScaleOptimizer`; a schedule's value at train begin) and converted to a step on L:
with `loss=HalfSquaredError()` (exactly L) η = η_opt; with Keras' mean squared error
("mse", `MeanSquaredError()`, mean over outputs and examples = 2L/O) η = 2·η_opt/O, so that
`SGD(η_opt)` on "mse" and the launcher's GD with η take identical steps when η = 2·η_opt/O;
with any other loss η = η_opt, and the summary's `caveat` applies.

Distribution and mixed precision. The measurement runs outside any replica context on the
current values of the variables: when `fit` is called inside a `strategy.scope()` (where
`MirroredVariable`s cannot be read in cross-replica context by our compiled functions) it runs
in a short-lived worker thread, which has no strategy scope. A model with a float16/bfloat16
compute dtype (mixed precision) is measured through a float32 copy (same weights, copied
before every measurement), so kernels and gradients are computed in float32 and eigensolves in
float64; a subclassed model that cannot be cloned is measured as it is (compute dtype) and the
summary notes it. The probe set's targets are cast to float32; integer class labels with one
label per example are one-hot encoded to the model's O outputs (for cross-entropy models).
"""

import time

import keras
import tensorflow as tf

from lplr_tf import analysis
from lplr_tf.diagnostics import Diagnostics
from lplr_tf.distribute import is_chief
from lplr_tf.keras_training import (  # noqa: F401 (HalfSquaredError: public here too)
    CAVEAT,
    HalfSquaredError,
    inner_optimizer,
    is_plain_sgd,
    loss_name,
    loss_scale,
    optimizer_learning_rate,
)
from lplr_tf.metric_writer import MetricWriter
from lplr_tf.trainer import Trainer
from lplr_tf.user_models import MeasuredNetwork, outside_strategy, probe_arrays, probe_targets


class LPLRCallback(keras.callbacks.Callback):
    """Measures the LPLR quantities on a probe set during any Keras `fit` (module docstring).

    Args:
      probe_data: (x, y) arrays with n examples, or a finite `tf.data.Dataset` of (x, y)
        batches (concatenated once). Typically the training set for full-batch GD, or a fixed
        subset of it. y: (n, O) targets like the model's outputs, or integer class ids (n,).
      l_star: L*, the optimal squared probe loss (0: interpolation).
      every_n_steps: Optimizer steps between measured rows (loss, ‖∇L‖², PL ratio, drift).
      probe_every_n_steps: Steps between NTK / sharpness probes, a multiple of
        every_n_steps (default every_n_steps). The last step always probes.
      logdir: TensorBoard directory for the rows' scalars and the NTK spectrum histogram.
      metrics_path: File for the rows as JSON lines (the launcher's metrics.jsonl format);
        overwritten at every train begin.
      measure_ntk: Probe the NTK spectrum and kernel drift (and the linearized prediction).
      measure_sharpness: Probe λ_max of the Hessian of the squared probe loss.
      ntk_output_mode: "full" (nO × nO, what the PL theory needs) or "trace" (n × n).
      learning_rate: η of the summary (a GD step on L); default read from the optimizer and
        the loss (module docstring).
      tolerance, loss_bound, fit_window, kernel_drift_bound: As in `analysis.summarize` /
        `experiment.run`.
      jit_compile: XLA for Diagnostics' compiled functions.

    Attributes:
      history: The measured rows, dicts with the keys of the launcher's metrics.jsonl (step,
        loss, probe_loss, grad_norm_sq, pl_ratio, drift, relative_drift, ntk_*, kernel_drift,
        kernel_drift_op, gn_sharpness, sharpness, loss_linearized, wall_time). The loss is
        the squared loss of the probe set.
      diagnostics: The `Diagnostics` of the current run (after train begin).
    """

    def __init__(
        self,
        probe_data,
        *,
        l_star=0.0,
        every_n_steps=10,
        probe_every_n_steps=None,
        logdir=None,
        metrics_path=None,
        measure_ntk=True,
        measure_sharpness=False,
        ntk_output_mode="full",
        learning_rate=None,
        tolerance=1e-6,
        loss_bound=None,
        fit_window=None,
        kernel_drift_bound=0.5,
        jit_compile=False,
    ):
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(
                f"LPLRCallback: every_n_steps={every_n_steps!r}; expected a "
                "positive int (optimizer steps between measurements)."
            )
        probe_every_n_steps = every_n_steps if probe_every_n_steps is None else probe_every_n_steps
        if (
            not isinstance(probe_every_n_steps, int)
            or probe_every_n_steps < 1
            or probe_every_n_steps % every_n_steps
        ):
            raise ValueError(
                f"LPLRCallback: probe_every_n_steps={probe_every_n_steps!r}; "
                f"expected a positive multiple of every_n_steps={every_n_steps}."
            )
        if ntk_output_mode not in ("full", "trace"):
            raise ValueError(
                f"LPLRCallback: ntk_output_mode={ntk_output_mode!r}; expected "
                "'full' (the nO x nO kernel) or 'trace' (n x n)."
            )
        if learning_rate is not None and not (
            isinstance(learning_rate, (int, float)) and learning_rate > 0
        ):
            raise ValueError(
                f"LPLRCallback: learning_rate={learning_rate!r}; expected a "
                "positive float (η of a GD step on L) or None to read it from "
                "the model's optimizer."
            )
        self.x_probe, self.y_raw = probe_arrays(probe_data)
        self.l_star = float(l_star)
        self.every_n_steps = every_n_steps
        self.probe_every_n_steps = probe_every_n_steps
        self.logdir = logdir
        self.metrics_path = metrics_path
        self.measure_ntk = bool(measure_ntk)
        self.measure_sharpness = bool(measure_sharpness)
        self.ntk_output_mode = ntk_output_mode
        self.learning_rate = learning_rate
        self.tolerance = tolerance
        self.loss_bound = loss_bound
        self.fit_window = fit_window
        self.kernel_drift_bound = kernel_drift_bound
        self.jit_compile = jit_compile
        self.history = []
        self.diagnostics = None
        self._measured = None
        self._writer = None
        self._info = None
        self._num_steps = None
        self._step = 0

    # Keras hooks ------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self.history = []
        self._step = 0
        self._epoch_offset = 0
        self._first_epoch = None
        self._num_steps = None
        self._next_log = self.every_n_steps
        self._next_probe = self.probe_every_n_steps
        self._last_probe_step = None
        self._start_time = time.monotonic()
        outside_strategy(self._begin)
        if self._writer is not None:
            self._writer.close()
        self._writer = MetricWriter(self.metrics_path, self.logdir) if self._is_chief() else None
        self._measure(probe=True)

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            if epochs is not None and steps is not None:
                self._num_steps = int((epochs - epoch) * steps)
        self._epoch_offset = self._step

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution = k Keras reports batch = begin + k − 1 even for a shorter
        # last execution of the epoch: clamp to the epoch's number of batches when known.
        done = int(batch) + 1
        steps = self.params.get("steps") if self.params else None
        if steps is not None:
            done = min(done, int(steps))
        self._step = self._epoch_offset + done
        last = self._num_steps is not None and self._step >= self._num_steps
        if self._step >= self._next_log or last:
            probe = self._step >= self._next_probe or last
            self._measure(probe=probe)
            self._next_log = (self._step // self.every_n_steps + 1) * self.every_n_steps
            if probe:
                self._next_probe = (
                    self._step // self.probe_every_n_steps + 1
                ) * self.probe_every_n_steps

    def on_train_end(self, logs=None):
        if self.diagnostics is None:
            return
        if (
            self.history
            and self.history[-1]["step"] == self._step
            and self._last_probe_step != self._step
        ):
            self.history.pop()  # Re-measured below with the probe (the writer keeps both).
        if not self.history or self.history[-1]["step"] != self._step:
            self._measure(probe=True)
        if self._writer is not None:
            try:
                self._writer.write_text("lplr_summary", self.summary()["verdict"], self._step)
            except ValueError:
                pass
            self._writer.close()
            self._writer = None

    # Measurement ------------------------------------------------------------------------

    def _is_chief(self):
        strategy = getattr(self.model, "distribute_strategy", None)
        return strategy is None or is_chief(strategy)

    def _begin(self):
        """Builds the measured network and Diagnostics; captures θ_0 (outside any scope)."""
        x_example = tf.constant(self.x_probe[:1])
        self._measured = MeasuredNetwork(self.model, x_example)
        num_outputs = self._measured.num_outputs(x_example)
        y_probe = probe_targets(self.y_raw, num_outputs)
        self._info = self._training_info(num_outputs)
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if epochs is not None and steps is not None:
            horizon = int(epochs * steps)
        else:  # Unknown length: predict the linearized loss for 1000 log steps.
            horizon = 1000 * self.every_n_steps
        log_steps = sorted(set(range(0, horizon + 1, self.every_n_steps)) | {horizon})
        x, y = tf.constant(self.x_probe), tf.constant(y_probe)
        self.diagnostics = Diagnostics(
            self._measured.network,
            x,
            y,
            l_star=self.l_star,
            measure_ntk=self.measure_ntk,
            ntk_output_mode=self.ntk_output_mode,
            measure_sharpness=self.measure_sharpness,
            linearized_learning_rate=self._info["learning_rate"],
            linearized_steps=log_steps,
            jit_compile=self.jit_compile,
        )

    def _measure_now(self, probe):
        self._measured.sync()
        row = self.diagnostics.measure(self._step, probe=probe)
        eigenvalues = None
        if "ntk_lambda_min" in row and self.diagnostics.spectrum is not None:
            eigenvalues = self.diagnostics.spectrum.eigenvalues
        return row, eigenvalues

    def _measure(self, probe):
        row, eigenvalues = outside_strategy(self._measure_now, probe)
        if probe:
            self._last_probe_step = self._step
        row["wall_time"] = time.monotonic() - self._start_time
        self.history.append(row)
        if self._writer is not None:
            self._writer.write(row, eigenvalues)
        return row

    def _training_info(self, num_outputs):
        """What the model trains with, the summary's η and the caveat's reasons."""
        model = self.model
        loss = getattr(model, "loss", None)
        scale = loss_scale(loss, num_outputs)
        if scale is None and loss is None and isinstance(model, Trainer):
            scale, loss = 1.0, "lplr_tf squared loss (Trainer.train_step)"
        optimizer = getattr(model, "optimizer", None)
        plain = optimizer is not None and is_plain_sgd(optimizer)
        steps = self.params.get("steps") if self.params else None
        full_batch = None if steps is None else int(steps) == 1
        reasons = []
        if scale is None:
            reasons.append(
                f"the training loss is {loss_name(loss)!r}, not the squared loss"
                if loss is not None
                else "the training loss is unknown"
            )
        if not plain:
            name = type(inner_optimizer(optimizer)).__name__ if optimizer else None
            reasons.append(
                f"the optimizer {name} is not plain SGD (no momentum, weight decay or clipping)"
            )
        if full_batch is False:
            reasons.append(f"{steps} mini-batch steps per epoch, not full batches")
        notes = list(self._measured.notes)
        if self.learning_rate is not None:
            learning_rate, source = float(self.learning_rate), "given explicitly"
        else:
            value, note = optimizer_learning_rate(optimizer) if optimizer else (None, None)
            if note:
                notes.append(note)
            if value is None or not value > 0:
                learning_rate, source = None, "unknown: pass learning_rate= to LPLRCallback"
            elif scale is not None:
                learning_rate = value * scale
                source = (
                    f"optimizer learning rate {value:g} × {scale:g} (the training "
                    f"loss {loss_name(loss)!r} is {scale:g}·L)"
                )
            else:
                learning_rate, source = value, f"optimizer learning rate {value:g}"
        return {
            "loss": loss_name(loss),
            "squared_loss": scale is not None,
            "loss_scale": scale,
            "optimizer": type(inner_optimizer(optimizer)).__name__ if optimizer else None,
            "plain_sgd": plain,
            "full_batch": full_batch,
            "learning_rate": learning_rate,
            "learning_rate_source": source,
            "probe_examples": int(self.x_probe.shape[0]),
            "measured_on": self._measured.description,
            "notes": notes,
            "caveat_reasons": reasons,
        }

    # Results ----------------------------------------------------------------------------

    def summary(self, learning_rate=None):
        """The launcher's summary.json fields for this run, plus `caveat` and `callback`.

        Args:
          learning_rate: Overrides the η resolved at train begin.

        Returns:
          `analysis.summarize(history, learning_rate=η, l_star, tolerance, loss_bound,
          window, kernel_drift_bound, num_steps)` with two more keys: `caveat` (None for
          plain full-batch SGD on the squared loss, else the `CAVEAT` text with its reasons)
          and `callback` (loss, squared_loss, loss_scale, optimizer, plain_sgd, full_batch,
          learning_rate, learning_rate_source, probe_examples, measured_on, notes,
          caveat_reasons).

        Raises:
          ValueError: before any measurement, or when η is unknown (pass learning_rate).
        """
        if not self.history or self._info is None:
            raise ValueError(
                "LPLRCallback.summary: no measurements yet; expected the callback "
                "to have been passed to model.fit(..., callbacks=[callback])."
            )
        learning_rate = learning_rate or self._info["learning_rate"]
        if learning_rate is None:
            raise ValueError(
                "LPLRCallback.summary: the learning rate is unknown "
                f"({self._info['learning_rate_source']}); expected a positive η. Pass "
                "learning_rate= to LPLRCallback or to summary()."
            )
        summary = analysis.summarize(
            self.history,
            learning_rate=learning_rate,
            settings=analysis.Settings(
                l_star=self.l_star,
                tolerance=self.tolerance,
                loss_bound=self.loss_bound,
                fit_window=self.fit_window,
                kernel_drift_bound=self.kernel_drift_bound,
            ),
            num_steps=self._num_steps,
        )
        info = dict(self._info, learning_rate=float(learning_rate))
        reasons = info["caveat_reasons"]
        summary["caveat"] = (
            CAVEAT.format(reasons="; ".join(reasons), learning_rate=f"{learning_rate:g}")
            if reasons
            else None
        )
        summary["callback"] = info
        return summary
