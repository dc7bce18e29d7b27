"""Keras callbacks: the LPLR probes inside any user's `model.fit`.

    callback = lplr_tf.LPLRCallback((x_probe, y_probe), every_n_steps=10, logdir="tb")
    model.fit(x, y, batch_size=len(x), shuffle=False, epochs=200, callbacks=[callback])
    print(callback.summary()["verdict"])

`LPLRCallback` works with any compiled Keras 3 model trained by the standard `fit` (its own
optimizer, loss and train_step). It measures, on a fixed probe set (x, y) of n examples, the
quantities of docs/theory.md with a `probing.Recorder` over `diagnostics.Diagnostics`:

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
with `loss=lplr_tf.losses.HalfSquaredError()` (exactly L) η = η_opt; with Keras' mean squared error
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

import dataclasses

import keras
import tensorflow as tf

from lplr_tf import analysis, validation
from lplr_tf.diagnostics import Diagnostics, ProbeSettings
from lplr_tf.distribute import is_chief
from lplr_tf.keras_training import (
    CAVEAT,
    inner_optimizer,
    is_plain_sgd,
    loss_name,
    loss_scale,
    optimizer_learning_rate,
)
from lplr_tf.metric_writer import MetricWriter
from lplr_tf.probing import Recorder, Schedule
from lplr_tf.user_models import MeasuredNetwork, outside_strategy, probe_arrays, probe_targets


class LPLRCallback(keras.callbacks.Callback):
    """Measures the LPLR quantities on a probe set during any Keras `fit` (module docstring).

    Args:
      probe_data: (x, y) arrays with n examples, or a finite `tf.data.Dataset` of (x, y)
        batches (concatenated once). Typically the training set for full-batch GD, or a fixed
        subset of it. y: (n, O) targets like the model's outputs, or integer class ids (n,).
      every_n_steps: Optimizer steps between measured rows (loss, ‖∇L‖², PL ratio, drift).
      probe_every_n_steps: Steps between NTK / sharpness probes, a multiple of
        every_n_steps (default every_n_steps). The last step always probes.
      probe_settings: What the probes measure, a `diagnostics.ProbeSettings` (default: the
        NTK in "full" mode, no sharpness).
      analysis_settings: L*, tolerance, ... of the summary, an `analysis.Settings`.
      learning_rate: η of the summary (a GD step on L); default read from the optimizer and
        the loss (module docstring).
      logdir: TensorBoard directory for the rows' scalars and the NTK spectrum histogram.
      metrics_path: File for the rows as JSON lines (the launcher's metrics.jsonl format);
        overwritten at every train begin.
      jit_compile: XLA for the probes' compiled functions.

    Attributes:
      history: The measured rows, dicts with the keys of the launcher's metrics.jsonl (step,
        loss, probe_loss, grad_norm_sq, pl_ratio, drift, relative_drift, ntk_*, kernel_drift,
        kernel_drift_op, gn_sharpness, sharpness, loss_linearized, wall_time). The loss is
        the squared loss of the probe set.
      recorder: The `probing.Recorder` of the current run (after train begin).
    """

    def __init__(
        self,
        probe_data,
        *,
        every_n_steps=10,
        probe_every_n_steps=None,
        probe_settings=None,
        analysis_settings=None,
        learning_rate=None,
        logdir=None,
        metrics_path=None,
        jit_compile=False,
    ):
        super().__init__()
        every_n_steps = validation.integer("LPLRCallback.every_n_steps", every_n_steps, 1)
        probe_every_n_steps = validation.integer(
            "LPLRCallback.probe_every_n_steps", probe_every_n_steps or every_n_steps, 1
        )
        if probe_every_n_steps % every_n_steps:
            raise ValueError(
                f"LPLRCallback.probe_every_n_steps = {probe_every_n_steps}; expected a positive "
                f"multiple of every_n_steps = {every_n_steps}."
            )
        if learning_rate is not None:
            validation.positive_number("LPLRCallback.learning_rate", learning_rate)
        self.x_probe, self.y_raw = probe_arrays(probe_data)
        self.every_n_steps = every_n_steps
        self.probe_every_n_steps = probe_every_n_steps
        self.probe_settings = probe_settings or ProbeSettings(measure_sharpness=False)
        self.analysis_settings = analysis_settings or analysis.Settings()
        self.learning_rate = learning_rate
        self.logdir = logdir
        self.metrics_path = metrics_path
        self.jit_compile = jit_compile
        self.recorder = None
        self._measured = None
        self._info = None
        self._num_steps = None
        self._step = 0

    @property
    def history(self):
        return [] if self.recorder is None else self.recorder.history

    # Keras hooks ------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._step = 0
        self._epoch_offset = 0
        self._first_epoch = None
        self._num_steps = None
        if self.recorder is not None:
            self.recorder.close()
        outside_strategy(self._begin)
        self._record(self.recorder.record, 0, True)

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            if epochs is not None and steps is not None:
                self._num_steps = int((epochs - epoch) * steps)
                self.recorder.schedule = dataclasses.replace(
                    self.recorder.schedule, num_steps=self._num_steps
                )
        self._epoch_offset = self._step

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution = k Keras reports batch = begin + k − 1 even for a shorter
        # last execution of the epoch: clamp to the epoch's number of batches when known.
        done = int(batch) + 1
        steps = self.params.get("steps") if self.params else None
        if steps is not None:
            done = min(done, int(steps))
        self._step = self._epoch_offset + done
        if self.recorder.is_due(self._step):
            self._record(self.recorder.record_if_due, self._step)

    def on_train_end(self, logs=None):
        if self.recorder is None:
            return
        self._record(self.recorder.finish, self._step)
        if self.recorder.writer is not None:
            try:
                self.recorder.writer.write_text(
                    "lplr_summary", self.summary()["verdict"], self._step
                )
            except ValueError:
                pass
        self.recorder.close()

    # Measurement ------------------------------------------------------------------------

    def _record(self, method, *args):
        """Calls a recorder method outside any strategy, on the model's current weights."""

        def synced():
            self._measured.sync()
            return method(*args)

        return outside_strategy(synced)

    def _is_chief(self):
        strategy = getattr(self.model, "distribute_strategy", None)
        return strategy is None or is_chief(strategy)

    def _begin(self):
        """Builds the measured network and the recorder; captures θ₀ (outside any scope)."""
        x_example = tf.constant(self.x_probe[:1])
        self._measured = MeasuredNetwork(self.model, x_example)
        num_outputs = self._measured.num_outputs(x_example)
        y_probe = probe_targets(self.y_raw, num_outputs)
        self._info = self._training_info(num_outputs)
        diagnostics = Diagnostics(
            self._measured.network,
            (tf.constant(self.x_probe), tf.constant(y_probe)),
            settings=self.probe_settings,
            l_star=self.analysis_settings.l_star,
            learning_rate=self._info["learning_rate"],
            jit_compile=self.jit_compile,
        )
        writer = MetricWriter(self.metrics_path, self.logdir) if self._is_chief() else None
        schedule = Schedule(self.every_n_steps, self.probe_every_n_steps, name="LPLRCallback")
        self.recorder = Recorder(diagnostics, schedule, writer)

    def _training_info(self, num_outputs):
        """What the model trains with, the summary's η and the caveat's reasons."""
        model = self.model
        loss = getattr(model, "loss", None)
        scale = loss_scale(loss, num_outputs)
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
            settings=self.analysis_settings,
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
