"""Keras callbacks: the LPLR probes inside any user's `model.fit`.

    callback = lplr_tf.LPLRCallback((x_probe, y_probe), every_n_steps=10, state_dir="runs/a")
    model.fit(x, y, batch_size=len(x), shuffle=False, epochs=200,
              callbacks=[callback, keras.callbacks.EarlyStopping("lplr/pl_ratio", mode="min")])
    print(callback.summary()["verdict"])

`LPLRCallback` works with any compiled Keras 3 model trained by the standard `fit` (its own
optimizer, loss and train_step). It measures, on a fixed probe set (x, y) of n examples, with a
`probing.Recorder` over `diagnostics.Diagnostics`: the squared probe loss
L = 1/(2n) Σ_i ‖f(x_i) − y_i‖² (whatever loss the model trains on), ‖∇L‖², the PL ratio
q = ‖∇L‖² / (2 (L − L*)), the drift ‖θ_t − θ_0‖, the spectrum of the normalized NTK K = Θ/n
of the probe set, the kernel drift ‖K_t − K_0‖_F / ‖K_0‖_F and optionally the sharpness; the
history becomes the launcher's summary through `analysis.summarize`.

Keras logs. After each measurement the row's values go into Keras' `logs` under the prefix
`lplr/` (`lplr/pl_ratio`, `lplr/ntk_lambda_min`, ..., and `lplr/step`, the step they were
measured at), at every batch end and epoch end: between measurements the logs carry the last
measured value of each key (NTK keys: the last probe's; a non-finite value is NaN). Keras'
`CallbackList` hands one `logs` dict to its callbacks in list order, so the callbacks that
read these keys (EarlyStopping, ReduceLROnPlateau, TensorBoard, CSVLogger) must come *after*
the LPLRCallback in `callbacks=[...]`; `History` and the progress bar are appended by Keras
at the end and always see them. (Keras cannot tell whether an `lplr/` key should go up or
down: EarlyStopping and ReduceLROnPlateau need `mode=`.)

Steps and state. The step is the optimizer's `iterations` (with `steps_per_execution = k` the
callback sees every k-th step and measures at the first one at or past each due step). The
record (θ_0, K_0, r_0 and the rows) starts at the first epoch begin — after every callback's
`on_train_begin`, so a `BackupAndRestore` anywhere in the list has restored the weights and the
optimizer by then — and is *continued*, not restarted, when `iterations > 0`: by a second
`fit` call (kept in memory), or in a new process from `state_dir` (a BackupAndRestore resume;
rows logged past the restored step are dropped, the metrics file is continued). A fresh
optimizer (iterations = 0) starts a new record and overwrites the files.

Learning rate of the summary (η of the GD theory on L). Explicit `learning_rate=` wins.
Otherwise it is read from the model's optimizer at the start (unwrapping a
`LossScaleOptimizer`; a schedule's current value) and converted to a step on L: with
`loss=lplr_tf.losses.HalfSquaredError()` (exactly L) η = η_opt; with Keras' mean squared error
(mean over outputs and examples = 2L/O) η = 2·η_opt/O; with any other loss η = η_opt.

Distribution and mixed precision. The measurement runs outside any replica context on the
current values of the variables (in a short-lived worker thread when `fit` runs inside a
`strategy.scope()`). A float16/bfloat16 model is measured through a float32 copy; eigensolves
are float64. Integer class labels with one label per example are one-hot encoded to the
model's O outputs.
"""

import math
import os

import keras
import tensorflow as tf

from lplr_tf import analysis, validation
from lplr_tf.diagnostics import Diagnostics, ProbeSettings
from lplr_tf.distribute import is_chief
from lplr_tf.keras_training import (
    caveat_text,
    logits_hint,
    not_covered_reasons,
    not_covered_verdict,
    output_activation,
    training_info,
)
from lplr_tf.metric_writer import MetricWriter
from lplr_tf.probing import Recorder, Schedule
from lplr_tf.rundir import RunDirectory
from lplr_tf.user_models import MeasuredNetwork, outside_strategy, probe_arrays, probe_targets

# The prefix of the callback's keys in Keras logs.
LOGS_PREFIX = "lplr/"


class LPLRCallback(keras.callbacks.Callback):
    """Measures the LPLR quantities on a probe set during any Keras `fit` (module docstring).

    Args:
      probe_data: (x, y) arrays with n examples, or a finite `tf.data.Dataset` of (x, y)
        batches (concatenated once). Typically the training set for full-batch GD, or a fixed
        subset of it. y: (n, O) targets like the measured outputs, or integer class ids (n,).
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
        default `state_dir`/metrics.jsonl when state_dir is given.
      state_dir: Directory of the record's state, for a resume in a new process:
        reference.npz (θ₀ (P,), K₀ and r₀, float arrays read with allow_pickle=False) and,
        unless metrics_path says otherwise, metrics.jsonl. Default: the directory of
        metrics_path when given (a run directory that `lplr-report` reads), else none (the
        record survives a second `fit` in this process, not a new process).
      output_layer: The name of the layer whose output is measured (the sub-model from the
        inputs to it), e.g. the logits before a softmax; default the model's output.
      log_keys: Row keys put into Keras logs (prefixed `lplr/`); default every key but
        wall_time. `lplr/step` is always there.
      jit_compile: XLA for the probes' compiled functions.

    Attributes:
      history: The measured rows of the record, dicts with the keys of the launcher's
        metrics.jsonl (step, loss, probe_loss, grad_norm_sq, pl_ratio, drift, relative_drift,
        ntk_*, kernel_drift, kernel_drift_op, gn_sharpness, sharpness, loss_linearized,
        linearized_deviation, wall_time). The loss is the squared loss of the probe set.
      recorder: The `probing.Recorder` of the current fit (after its first epoch begin).
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
        state_dir=None,
        output_layer=None,
        log_keys=None,
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
        if output_layer is not None and not isinstance(output_layer, str):
            raise ValueError(
                f"LPLRCallback.output_layer = {output_layer!r}; expected a layer name (str) or "
                "None. Pass the name of the layer whose output to measure, e.g. 'logits'."
            )
        self.x_probe, self.y_raw = probe_arrays(probe_data)
        self.every_n_steps = every_n_steps
        self.probe_every_n_steps = probe_every_n_steps
        self.probe_settings = probe_settings or ProbeSettings(measure_sharpness=False)
        self.analysis_settings = analysis_settings or analysis.Settings()
        self.learning_rate = learning_rate
        self.logdir = logdir
        self.state = None
        if state_dir is not None:
            self.state = RunDirectory(state_dir)
        elif metrics_path is not None:
            self.state = RunDirectory(os.path.dirname(os.path.abspath(metrics_path)))
        self.metrics_path = metrics_path or (self.state.metrics if state_dir is not None else None)
        self.output_layer = output_layer
        self.log_keys = None if log_keys is None else {*log_keys, "step"}
        self.jit_compile = jit_compile
        self.recorder = None
        self._reference = None  # θ₀, K₀, r₀ of the record (float arrays)
        self._logs = {}
        self._measured = None
        self._info = None
        self._num_steps = None
        self._started = False

    @property
    def history(self):
        return [] if self.recorder is None else self.recorder.history

    # Keras hooks ------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            # After every callback's on_train_begin: a BackupAndRestore has restored by now.
            self._start(epoch)

    def on_train_batch_end(self, batch, logs=None):
        step = self._optimizer_step()
        if self.recorder.is_due(step):
            self._record(self.recorder.record_if_due, step)
        self._fill(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._fill(logs)

    def on_train_end(self, logs=None):
        if not self._started:  # no epoch ran (e.g. initial_epoch ≥ epochs)
            return
        step = self._optimizer_step()
        self._record(self.recorder.finish, step)
        self._fill(logs)
        if self.recorder.writer is not None:
            try:
                self.recorder.writer.write_text("lplr_summary", self.summary()["verdict"], step)
            except ValueError:
                pass
        self.recorder.close()

    # The record -------------------------------------------------------------------------

    def _optimizer_step(self):
        return int(self.model.optimizer.iterations.numpy())

    def _is_chief(self):
        strategy = getattr(self.model, "distribute_strategy", None)
        return strategy is None or is_chief(strategy)

    def _start(self, epoch):
        """Builds the measurement, continues or starts the record, measures the first row."""
        if self.recorder is not None:
            self.recorder.close()  # an interrupted fit left its writer open
        step = self._optimizer_step()
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        self._num_steps = None
        if epochs is not None and steps is not None:
            self._num_steps = step + int((epochs - epoch) * steps)
        outside_strategy(self._begin, step)
        self._started = True
        self._record(self.recorder.record_if_due, step)

    def _begin(self, step):
        """The measured network, the diagnostics with θ₀ (and K₀, r₀ when continued), the
        recorder with the kept rows (outside any strategy scope)."""
        x_example = tf.constant(self.x_probe[:1])
        self._measured = MeasuredNetwork(self.model, x_example, self.output_layer)
        num_outputs = self._measured.num_outputs(x_example)
        y_probe = probe_targets(self.y_raw, num_outputs)
        outputs = self._measured.network(tf.constant(self.x_probe), training=False)
        self._info = self._training_info(num_outputs, outputs, y_probe)
        diagnostics = Diagnostics(
            self._measured.network,
            (tf.constant(self.x_probe), tf.constant(y_probe)),
            settings=self.probe_settings,
            l_star=self.analysis_settings.l_star,
            learning_rate=self._info["learning_rate"],
            save_reference=self._keep_reference,
            jit_compile=self.jit_compile,
        )
        history, reference = self._previous_record(step, diagnostics, num_outputs)
        if reference is None:
            self._reference = {"theta0": diagnostics.theta0.numpy()}
            self._store_reference()
        else:
            self._reference = dict(reference)
            diagnostics.theta0.assign(reference["theta0"])
            diagnostics.restore_reference(reference)
        chief = self._is_chief()
        writer = MetricWriter(self.metrics_path, self.logdir, history) if chief else None
        schedule = Schedule(
            self.every_n_steps, self.probe_every_n_steps, self._num_steps, name="LPLRCallback"
        )
        self.recorder = Recorder(diagnostics, schedule, writer, history)
        self._logs = {}
        for row in history:
            self._remember(row)

    def _previous_record(self, step, diagnostics, num_outputs):
        """(rows up to `step`, reference arrays) of the record to continue, or ([], None).

        A record continues when the optimizer has taken steps (a second `fit`, or weights and
        optimizer restored by BackupAndRestore): from memory, else from `state_dir`.
        """
        if step == 0:
            return [], None
        if self.recorder is not None and self._reference is not None:
            rows, reference, where = self.recorder.history, self._reference, "this callback"
        elif self.state is not None:
            reference = self.state.load_reference()
            rows = []
            if reference and self.metrics_path and os.path.isfile(self.metrics_path):
                rows = self.state.read_metrics(self.metrics_path)
            where = self.state.reference
        else:
            return [], None
        kept = [row for row in rows if row["step"] <= step]
        if not kept or "theta0" not in reference:
            return [], None
        num_parameters = int(diagnostics.theta0.shape[0])
        theta0 = reference["theta0"]
        num_kernel = len(self.x_probe) * (
            num_outputs if self.probe_settings.ntk_output_mode == "full" else 1
        )
        kernel0 = reference.get("kernel0")
        if theta0.shape != (num_parameters,) or (
            kernel0 is not None and kernel0.shape != (num_kernel, num_kernel)
        ):
            raise ValueError(
                f"LPLRCallback: the record in {where} has θ₀ of shape {theta0.shape} and K₀ of "
                f"shape {None if kernel0 is None else kernel0.shape}; expected ({num_parameters},) "
                f"and ({num_kernel}, {num_kernel}) for this model and probe set. It is another "
                "run's record: pass another state_dir (or metrics_path), or delete that one."
            )
        return kept, reference

    def _keep_reference(self, arrays):
        """Diagnostics' save_reference: K₀ and r₀ join θ₀ in the record's reference."""
        self._reference.update(arrays)
        self._store_reference()

    def _store_reference(self):
        if self.state is not None and self._is_chief():
            self.state.create().save_reference(self._reference)

    def _record(self, method, step):
        """Calls a recorder method on the model's current weights, outside any strategy."""

        def synced():
            self._measured.sync()
            return method(step)

        measurement = outside_strategy(synced)
        if measurement is not None:
            self._remember(measurement.row)
        return measurement

    # Keras logs -------------------------------------------------------------------------

    def _remember(self, row):
        """Keeps a measured row's values as the `lplr/` entries of the logs to come."""
        for key, value in row.items():
            if key == "wall_time" or (self.log_keys is not None and key not in self.log_keys):
                continue
            self._logs[LOGS_PREFIX + key] = math.nan if value is None else float(value)

    def _fill(self, logs):
        """Adds the `lplr/` entries to the `logs` dict Keras hands to the next callbacks."""
        if logs is not None:
            logs.update(self._logs)

    # Results ----------------------------------------------------------------------------

    def _training_info(self, num_outputs, outputs, y_probe):
        """What the model trains with, the summary's η, the caveat and not-covered reasons."""
        network = self._measured.network
        steps = self.params.get("steps") if self.params else None
        return {
            **training_info(self.model, num_outputs, steps, self.learning_rate, "LPLRCallback"),
            "probe_examples": int(self.x_probe.shape[0]),
            "num_outputs": num_outputs,
            "measured_on": self._measured.description,
            "output_layer": self.output_layer,
            "output_activation": output_activation(network),
            "notes": list(self._measured.notes),
            "not_covered_reasons": not_covered_reasons(network, outputs, y_probe),
            "logits_hint": logits_hint(self._measured.source, "LPLRCallback"),
        }

    def summary(self, learning_rate=None):
        """The launcher's summary.json fields for this record, plus caveat, not_covered and
        callback.

        Args:
          learning_rate: Overrides the η resolved at the start of the last `fit`.

        Returns:
          `analysis.summarize(history, learning_rate=η, settings, num_steps)` with three more
          keys: `caveat` (None for plain full-batch SGD on the squared loss, else one line:
          the reasons and what the GD quantities then mean), `not_covered` (None, or the
          reasons the theory cannot hold for the measured output, e.g. a softmax; then
          `verdict` says so and how to measure the logits, and `callback.measured_verdict`
          keeps the sentence of the numbers) and `callback` (loss, squared_loss, loss_scale,
          optimizer, plain_sgd, learning_rate_schedule, full_batch, learning_rate,
          learning_rate_source, probe_examples, measured_on, output_layer, output_activation,
          notes, caveat_reasons, not_covered_reasons, logits_hint).

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
            run={
                "protocol": "sgd" if self._info["full_batch"] is False else "gd",
                "ntk_output_mode": self.probe_settings.ntk_output_mode,
                "num_outputs": self._info["num_outputs"],
                "probe_size": self._info["probe_examples"],
                "ntk_path": self.recorder.diagnostics.path,
                "ntk_estimates": list(self.recorder.diagnostics.estimates),
            },
        )
        info = dict(self._info, learning_rate=float(learning_rate))
        summary["caveat"] = caveat_text(info["caveat_reasons"], learning_rate)
        summary["not_covered"] = info["not_covered_reasons"] or None
        if summary["not_covered"]:
            info["measured_verdict"] = summary["verdict"]
            summary["verdict"] = not_covered_verdict(
                summary["not_covered"], summary["ntk"]["lambda_min_init"], info["logits_hint"]
            )
        summary["callback"] = info
        return summary
