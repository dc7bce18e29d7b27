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

import concurrent.futures
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from lplr_tf import analysis
from lplr_tf.diagnostics import Diagnostics
from lplr_tf.metric_writer import MetricWriter
from lplr_tf.trainer import Trainer

# The text of the summary's `caveat` field; `{reasons}` and `{learning_rate}` are filled in.
CAVEAT = (
    "Not plain full-batch gradient descent on the squared loss ({reasons}). "
    "Keep their meaning: the NTK spectrum of K = Θ/n on the probe set (ntk_lambda_min, "
    "ntk_lambda_max, ntk_trace, ntk_condition), the parameter drift ‖θ_t − θ_0‖, the kernel "
    "drift ‖K_t − K_0‖ and the sharpness of the squared probe loss: they are properties of the "
    "network at its weights, whatever trained it. Computed on the squared loss "
    "L = 1/(2n) Σ‖f(x) − y‖² of the probe set, not on the training loss: loss, grad_norm_sq, "
    "the PL ratio, the status and the fitted rate. The GD theory's bound "
    "(ρ_bound = 1 − η·min_t λ_min(K_t)), the certificate's rate and the linearized prediction "
    "apply only to plain full-batch gradient descent on the squared loss; here they are "
    "reference values computed with η = {learning_rate}, not predictions."
)

_MSE_NAMES = ("mse", "mean_squared_error", "meansquarederror")
_REDUCTION = "sum_over_batch_size"


class HalfSquaredError(keras.losses.Loss):
    """The squared loss of the LPLR theory as a Keras loss: 1/(2n) Σ_i ‖f(x_i) − y_i‖².

    Per example 0.5·Σ_o (f_o − y_o)² (summed over the last axis), averaged over the batch by
    the default reduction. Compile with it to train on exactly the loss the probes measure:
    `model.compile(optimizer=keras.optimizers.SGD(eta), loss=HalfSquaredError())`.
    """

    def __init__(self, name="half_squared_error", reduction=_REDUCTION, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.cast(y_true, y_pred.dtype)
        return 0.5 * tf.reduce_sum(tf.square(y_pred - tf.reshape(y_true, tf.shape(y_pred))),
                                   axis=-1)


# --------------------------------------------------------------------------------------
# Probe data and the network the probes measure.


def probe_arrays(probe_data, caller="LPLRCallback"):
    """The probe set as NumPy arrays (x, y) with the same number n ≥ 1 of examples.

    Args:
      probe_data: A pair (x, y) of array-likes with leading axis n, or a finite
        `tf.data.Dataset` of batched (x, y) (or (x, y, sample_weight)) elements, which is
        iterated once and concatenated (sample weights are ignored).
      caller: The name shown in errors.

    Returns:
      (x, y) NumPy arrays; floating x is cast to float32.
    """
    if isinstance(probe_data, tf.data.Dataset):
        if int(probe_data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError(
                f"{caller}: probe_data is an infinite tf.data.Dataset (did you .repeat() it?); "
                "expected a finite dataset of (x, y) batches. Pass dataset.take(k) or arrays.")
        xs, ys = [], []
        for element in probe_data:
            if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
                raise ValueError(
                    f"{caller}: probe_data yields {type(element).__name__} elements; expected "
                    "(x, y) or (x, y, sample_weight) batches. Map the dataset to (x, y).")
            xs.append(np.asarray(element[0]))
            ys.append(np.asarray(element[1]))
        if not xs:
            raise ValueError(f"{caller}: probe_data is an empty tf.data.Dataset; expected at "
                             "least one (x, y) batch.")
        x, y = np.concatenate(xs, axis=0), np.concatenate(ys, axis=0)
    elif isinstance(probe_data, (tuple, list)) and len(probe_data) == 2:
        x, y = np.asarray(probe_data[0]), np.asarray(probe_data[1])
    else:
        raise ValueError(
            f"{caller}: probe_data is a {type(probe_data).__name__}; expected a pair (x, y) of "
            "arrays with n examples each, or a finite tf.data.Dataset of (x, y) batches.")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{caller}: probe x has shape {x.shape} and y has shape {y.shape}; expected the "
            "same positive number of examples n on the leading axis of both.")
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x, y


def probe_targets(y, num_outputs, caller="LPLRCallback"):
    """Targets of shape (n, O) in float32 for a model with O outputs per example.

    Integer labels with one label per example are one-hot encoded when O > 1 (the probe loss
    of a classifier is then ‖softmax/logits − onehot‖²/2).
    """
    n = y.shape[0]
    if (np.issubdtype(y.dtype, np.integer) or y.dtype == bool) and y.size == n \
            and num_outputs > 1:
        labels = y.reshape(-1).astype(np.int64)
        if labels.min() < 0 or labels.max() >= num_outputs:
            raise ValueError(
                f"{caller}: integer labels in [{labels.min()}, {labels.max()}]; expected "
                f"class ids in [0, {num_outputs}) for a model with {num_outputs} outputs.")
        return np.eye(num_outputs, dtype=np.float32)[labels]
    if y.size != n * num_outputs:
        raise ValueError(
            f"{caller}: probe y has shape {y.shape}; expected (n, O) = ({n}, {num_outputs}) "
            "to match the model's outputs (or integer class ids of shape (n,)). Pass targets "
            "encoded like the model's outputs.")
    return y.reshape(n, num_outputs).astype(np.float32)


def _layers(model):
    try:
        return list(model._flatten_layers(include_self=True, recursive=True))
    except AttributeError:  # pragma: no cover - every Keras 3 layer has it
        return [model, *getattr(model, "layers", [])]


def is_reduced_precision(model):
    """True when a layer of the model computes in float16 or bfloat16 (mixed precision)."""
    return any(getattr(layer, "compute_dtype", "float32") in ("float16", "bfloat16")
               for layer in _layers(model))


def _float32_layer(layer):
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = "float32"
    return layer.__class__.from_config(config)


def _float32_clone(model):
    """A float32 copy of a Sequential/functional model (fresh weights; see MeasuredNetwork)."""
    # Containers and Input layers created by the clone take the global policy: make it
    # float32 for the clone (Keras keeps it per thread), then restore it.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        return keras.models.clone_model(model, clone_function=_float32_layer, recursive=True)
    finally:
        keras.config.set_dtype_policy(previous)


class MeasuredNetwork:
    """The network the probes run on: the model itself, or its float32 copy.

    Under mixed precision the copy (same architecture, float32 dtype policy, the model's
    weights copied by `sync()` before every measurement) makes kernels and gradients float32.

    Attributes:
      network: The `keras.Model` to measure.
      description: "model" or "float32 copy of a mixed-precision model", for the summary.
      notes: Problems found (e.g. a mixed-precision model that could not be copied).
    """

    def __init__(self, model, x_example):
        self.model = model
        self.network = model
        self.description = "model"
        self.notes = []
        if not model.built:
            model(x_example, training=False)
        if is_reduced_precision(model):
            try:
                copy = _float32_clone(model)
                copy(x_example, training=False)
                if is_reduced_precision(copy) or [tuple(w.shape) for w in copy.weights] != [
                        tuple(w.shape) for w in model.weights]:
                    raise ValueError("the float32 clone differs from the model")
            except Exception as error:  # noqa: BLE001 - any clone failure: measure the model
                note = (f"model {model.name!r} computes in reduced precision and could not be "
                        f"copied to float32 ({type(error).__name__}: {error}); its gradients "
                        "and NTK were computed in its compute dtype (eigensolves in float64).")
                warnings.warn(note)
                self.notes.append(note)
            else:
                self.network = copy
                self.description = "float32 copy of a mixed-precision model"
        self.sync()

    def sync(self):
        """Copies the model's current weights into the copy (no-op on the model itself)."""
        if self.network is not self.model:
            self.network.set_weights(self.model.get_weights())

    def num_outputs(self, x_example):
        outputs = self.network(x_example, training=False)
        if isinstance(outputs, (dict, list, tuple)) or len(outputs.shape) != 2:
            raise ValueError(
                f"model {self.model.name!r} returns {type(outputs).__name__} of shape "
                f"{getattr(outputs, 'shape', None)} per batch; expected a single tensor of "
                "shape (n, O). Wrap the model so that it returns one (n, O) tensor.")
        return int(outputs.shape[-1])


def outside_strategy(function, *args, **kwargs):
    """Calls `function` outside any `tf.distribute` strategy scope and replica context.

    Inside a scope (e.g. `fit` called under `strategy.scope()`) it runs in a worker thread,
    since scopes are thread-local; elsewhere it runs directly. Exceptions propagate.
    """
    if not tf.distribute.has_strategy():
        return function(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result()


# --------------------------------------------------------------------------------------
# What the model trains with: loss kind, optimizer, learning rate.


def _loss_name(loss):
    if loss is None:
        return None
    if isinstance(loss, str):
        return loss
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


def loss_scale(loss, num_outputs):
    """The factor c with training loss = c · L (L the squared loss), or None if not squared.

    HalfSquaredError → 1; Keras mean squared error (mean over outputs) → 2/O.
    """
    if isinstance(loss, HalfSquaredError):
        return 1.0 if loss.reduction == _REDUCTION else None
    if isinstance(loss, keras.losses.MeanSquaredError):
        return 2.0 / num_outputs if loss.reduction == _REDUCTION else None
    if isinstance(loss, str) and loss.lower().replace("_", "") in (
            n.replace("_", "") for n in _MSE_NAMES):
        return 2.0 / num_outputs
    if callable(loss) and getattr(loss, "__name__", None) == "mean_squared_error":
        return 2.0 / num_outputs
    return None


def inner_optimizer(optimizer):
    """The optimizer that takes the steps (unwraps a mixed-precision LossScaleOptimizer)."""
    return getattr(optimizer, "inner_optimizer", None) or optimizer


def is_plain_sgd(optimizer):
    """True for keras SGD without momentum, Nesterov, weight decay, clipping, EMA."""
    opt = inner_optimizer(optimizer)
    if type(opt) is not keras.optimizers.SGD:  # noqa: E721 - subclasses may change the step
        return False
    return (float(opt.momentum) == 0.0 and not opt.nesterov and not opt.weight_decay
            and opt.clipnorm is None and opt.clipvalue is None and opt.global_clipnorm is None
            and not opt.use_ema and not getattr(opt, "gradient_accumulation_steps", None))


def optimizer_learning_rate(optimizer):
    """(η_opt, note): the optimizer's current learning rate as a float, or (None, why)."""
    opt = inner_optimizer(optimizer)
    if opt is None:
        return None, "the model has no optimizer"
    schedule = getattr(opt, "_learning_rate", None)
    try:
        value = np.asarray(opt.learning_rate)
        # The shortest decimal of a float32 rate: SGD(0.05) gives 0.05, not 0.0500000007.
        value = float(str(value.astype(np.float32))) if value.dtype == np.float32 \
            else float(value)
    except (TypeError, ValueError) as error:
        return None, f"could not read {type(opt).__name__}.learning_rate ({error})"
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return value, f"{type(schedule).__name__} schedule, its value at train begin"
    return value, None


# --------------------------------------------------------------------------------------
# The callback.


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
            raise ValueError(f"LPLRCallback: every_n_steps={every_n_steps!r}; expected a "
                             "positive int (optimizer steps between measurements).")
        probe_every_n_steps = every_n_steps if probe_every_n_steps is None \
            else probe_every_n_steps
        if not isinstance(probe_every_n_steps, int) or probe_every_n_steps < 1 \
                or probe_every_n_steps % every_n_steps:
            raise ValueError(f"LPLRCallback: probe_every_n_steps={probe_every_n_steps!r}; "
                             f"expected a positive multiple of every_n_steps={every_n_steps}.")
        if ntk_output_mode not in ("full", "trace"):
            raise ValueError(f"LPLRCallback: ntk_output_mode={ntk_output_mode!r}; expected "
                             "'full' (the nO x nO kernel) or 'trace' (n x n).")
        if learning_rate is not None and not (
                isinstance(learning_rate, (int, float)) and learning_rate > 0):
            raise ValueError(f"LPLRCallback: learning_rate={learning_rate!r}; expected a "
                             "positive float (η of a GD step on L) or None to read it from "
                             "the model's optimizer.")
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
                self._next_probe = (self._step // self.probe_every_n_steps + 1) \
                    * self.probe_every_n_steps

    def on_train_end(self, logs=None):
        if self.diagnostics is None:
            return
        if self.history and self.history[-1]["step"] == self._step \
                and self._last_probe_step != self._step:
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
        extended = getattr(strategy, "extended", None)
        return bool(getattr(extended, "should_checkpoint", True))

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
            self._measured.network, x, y, x, y,
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
            reasons.append(f"the training loss is {_loss_name(loss)!r}, not the squared loss"
                           if loss is not None else "the training loss is unknown")
        if not plain:
            name = type(inner_optimizer(optimizer)).__name__ if optimizer else None
            reasons.append(f"the optimizer {name} is not plain SGD (no momentum, weight "
                           "decay or clipping)")
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
                source = (f"optimizer learning rate {value:g} × {scale:g} (the training "
                          f"loss {_loss_name(loss)!r} is {scale:g}·L)")
            else:
                learning_rate, source = value, f"optimizer learning rate {value:g}"
        return {
            "loss": _loss_name(loss),
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
            raise ValueError("LPLRCallback.summary: no measurements yet; expected the callback "
                             "to have been passed to model.fit(..., callbacks=[callback]).")
        learning_rate = learning_rate or self._info["learning_rate"]
        if learning_rate is None:
            raise ValueError(
                "LPLRCallback.summary: the learning rate is unknown "
                f"({self._info['learning_rate_source']}); expected a positive η. Pass "
                "learning_rate= to LPLRCallback or to summary().")
        summary = analysis.summarize(
            self.history,
            learning_rate=learning_rate,
            l_star=self.l_star,
            tolerance=self.tolerance,
            loss_bound=self.loss_bound,
            window=self.fit_window,
            kernel_drift_bound=self.kernel_drift_bound,
            num_steps=self._num_steps,
        )
        info = dict(self._info, learning_rate=float(learning_rate))
        reasons = info["caveat_reasons"]
        summary["caveat"] = CAVEAT.format(reasons="; ".join(reasons),
                                          learning_rate=f"{learning_rate:g}") if reasons else None
        summary["callback"] = info
        return summary
