"""How a user's Keras model and its training relate to the LPLR theory.

The theory is about plain full-batch gradient descent on the squared loss
L = 1/(2n) Σ_i ‖f(x_i) − y_i‖² of a model whose kernel K = Θ/n can be positive definite.
These helpers say how far a compiled Keras model is from that, in two grades:

* a *caveat* (`caveat_reasons`, `caveat_text`): the training is not plain full-batch GD on L
  (another loss, Adam, momentum, a schedule, mini-batches). The measured quantities keep their
  meaning; the GD bounds, the a-posteriori estimate and the linearized curve become reference
  values.
* *not covered* (`not_covered_reasons`, `not_covered_verdict`): the measured output cannot
  satisfy the theory's hypotheses at all. A softmax (or log-softmax) output makes K singular
  by construction: each example's outputs sum to 1, so Σ_o ∂f_o/∂θ = 0 and the n vectors
  e_i ⊗ 1_O span a null space of Θ (λ_min(K) = 0; a measured ±1e-9 is rounding). A sigmoid or
  tanh output with targets at its bounds reaches them only at infinite logits, where the
  derivative vanishes and K → 0: no linear rate near the targets. Measuring the logits (the
  layer before the activation) avoids both.
"""

import keras
import numpy as np

from lplr_tf.losses import HalfSquaredError

# Where the summary points for the long explanation (README section titles).
CAVEAT_POINTER = "README: 'Other losses and optimizers'"
NOT_COVERED_POINTER = "README: 'Models the theory does not cover'"

_MSE_NAMES = ("mse", "mean_squared_error", "meansquarederror")
_REDUCTION = HalfSquaredError.REDUCTION
# Outputs constrained to a simplex: K has a null space by construction.
_SINGULAR_OUTPUTS = ("softmax", "log_softmax")
# Bounded outputs: their bounds are reached only at infinite pre-activations.
_SATURATING_OUTPUTS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
# Relative spread below which per-example output sums count as one constant.
_CONSTANT_SUM_TOLERANCE = 1e-5


def loss_name(loss):
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
        n.replace("_", "") for n in _MSE_NAMES
    ):
        return 2.0 / num_outputs
    if callable(loss) and getattr(loss, "__name__", None) == "mean_squared_error":
        return 2.0 / num_outputs
    return None


def inner_optimizer(optimizer):
    """The optimizer that takes the steps (unwraps a mixed-precision LossScaleOptimizer)."""
    return getattr(optimizer, "inner_optimizer", None) or optimizer


def optimizer_reasons(optimizer):
    """Short reasons why `optimizer` is not plain gradient descent ([] for plain SGD)."""
    opt = inner_optimizer(optimizer)
    if opt is None:
        return ["no optimizer"]
    if type(opt) is not keras.optimizers.SGD:
        return [f"{type(opt).__name__} steps"]
    features = []
    if float(opt.momentum):
        features.append(f"momentum {float(opt.momentum):g}")
    if opt.nesterov:
        features.append("Nesterov")
    if opt.weight_decay:
        features.append(f"weight decay {opt.weight_decay:g}")
    if opt.clipnorm is not None or opt.clipvalue is not None or opt.global_clipnorm is not None:
        features.append("gradient clipping")
    if opt.use_ema:
        features.append("EMA")
    if getattr(opt, "gradient_accumulation_steps", None):
        features.append(f"{opt.gradient_accumulation_steps}-step gradient accumulation")
    return [f"SGD with {', '.join(features)}"] if features else []


def is_plain_sgd(optimizer):
    """True for keras SGD without momentum, Nesterov, weight decay, clipping, EMA."""
    return optimizer is not None and not optimizer_reasons(optimizer)


def optimizer_learning_rate(optimizer):
    """(η_opt, schedule): the current learning rate as a float (or None), and the schedule's
    class name when the rate follows a `LearningRateSchedule` (else None)."""
    opt = inner_optimizer(optimizer)
    if opt is None:
        return None, None
    schedule = getattr(opt, "_learning_rate", None)
    schedule_name = (
        type(schedule).__name__
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
        else None
    )
    try:
        value = np.asarray(opt.learning_rate)
        # The shortest decimal of a float32 rate: SGD(0.05) gives 0.05, not 0.0500000007.
        value = float(str(value.astype(np.float32))) if value.dtype == np.float32 else float(value)
    except (TypeError, ValueError):
        return None, schedule_name
    return value, schedule_name


def caveat_reasons(loss, scale, optimizer, schedule, steps_per_epoch):
    """Short reasons why the training is not plain full-batch GD on L ([] when it is)."""
    reasons = []
    if scale is None:
        name = loss_name(loss)
        reasons.append(f"loss {name!r}" if name else "unknown loss")
    reasons.extend(optimizer_reasons(optimizer))
    if schedule is not None:
        reasons.append(f"{schedule} schedule (η is its value at train begin)")
    if steps_per_epoch is not None and int(steps_per_epoch) > 1:
        reasons.append(f"{int(steps_per_epoch)} mini-batches per epoch")
    return reasons


def caveat_text(reasons, learning_rate):
    """The summary's `caveat`: the reasons and what the GD quantities then mean (one line)."""
    if not reasons:
        return None
    return (
        f"Not plain full-batch GD on the squared loss ({'; '.join(reasons)}): loss, PL ratio "
        "and rate are of the squared probe loss; ρ_bound, the a-posteriori estimate and the "
        f"linearized curve are those of plain GD with η = {learning_rate:g} on it, reference "
        f"values, not predictions ({CAVEAT_POINTER})."
    )


def training_info(model, num_outputs, steps_per_epoch, learning_rate=None, caller="LPLRCallback"):
    """How a compiled model trains, and the step η on L that the summary's GD quantities use.

    Args:
      model: The compiled `keras.Model`.
      num_outputs: O, the measured outputs per example (for the scale of Keras' "mse").
      steps_per_epoch: Batches per epoch of the `fit` (None when unknown).
      learning_rate: An explicit η on L (wins), or None to read it from the optimizer and
        convert it by the loss scale: η = c·η_opt when the training loss is c·L.
      caller: The name shown in `learning_rate_source`.

    Returns:
      A dict with loss, squared_loss, loss_scale, optimizer, plain_sgd,
      learning_rate_schedule, full_batch, learning_rate (None when unknown),
      learning_rate_source and caveat_reasons.
    """
    loss = getattr(model, "loss", None)
    scale = loss_scale(loss, num_outputs)
    optimizer = getattr(model, "optimizer", None)
    value, schedule = optimizer_learning_rate(optimizer)
    if learning_rate is not None:
        learning_rate, source = float(learning_rate), "given explicitly"
    elif value is None or not value > 0:
        learning_rate, source = None, f"unknown: pass learning_rate= to {caller}"
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
        "plain_sgd": is_plain_sgd(optimizer),
        "learning_rate_schedule": schedule,
        "full_batch": None if steps_per_epoch is None else int(steps_per_epoch) == 1,
        "learning_rate": learning_rate,
        "learning_rate_source": source,
        "caveat_reasons": caveat_reasons(loss, scale, optimizer, schedule, steps_per_epoch),
    }


def _activation_name(layer):
    """The activation a layer applies last, by name ('softmax', 'linear', ...), or None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None)


def _producer(tensor):
    """The layer that produced a symbolic Keras tensor, or None."""
    history = getattr(tensor, "_keras_history", None)
    return history[0] if history else None


def _output_layer(model):
    """The layer that produces the model's output (inside nested models), or None."""
    if isinstance(model, keras.Sequential):
        layer = model.layers[-1] if model.layers else None
    else:
        outputs = getattr(model, "outputs", None)
        layer = _producer(outputs[0]) if outputs and len(outputs) == 1 else None
    if layer is None or layer is model:
        return None
    return _output_layer(layer) if isinstance(layer, keras.Model) else layer


def output_activation(model):
    """The activation of the layer that produces the model's output, when the graph shows it.

    Sequential and functional models (nested ones too) are read; a subclassed model gives None
    (`not_covered_reasons` then relies on its outputs alone).
    """
    layer = _output_layer(model)
    return None if layer is None else _activation_name(layer)


def logits_hint(model, caller):
    """How to measure the logits of `model`: the `output_layer=` to pass, or what to change."""
    layer = _output_layer(model)
    activation = None if layer is None else _activation_name(layer)
    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        try:
            previous = _producer(layer.input)
        except (AttributeError, ValueError):  # a layer called more than once
            previous = None
        if previous is not None and not isinstance(previous, keras.layers.InputLayer):
            return f"{caller}(..., output_layer={previous.name!r})"
    if activation:
        return (
            f"give the last layer no activation, follow it with keras.layers.Activation("
            f"{activation!r}), and pass its name as {caller}(..., output_layer=...)"
        )
    return f"pass the layer before the activation as {caller}(..., output_layer=...)"


def not_covered_reasons(network, outputs, targets):
    """Why the LPLR theory cannot hold for the measured output ([] when nothing is found).

    Args:
      network: The measured `keras.Model` (its output activation is read when visible).
      outputs: Its outputs on the probe set, (n, O).
      targets: The probe targets, (n, O).

    Returns:
      Short reasons, each a sentence fragment naming the cause.
    """
    outputs = np.asarray(outputs, np.float64)
    targets = np.asarray(targets, np.float64)
    activation = output_activation(network)
    if activation in _SINGULAR_OUTPUTS:
        return [
            f"the {activation} output makes K = Θ/n singular by construction (each example's "
            "probabilities sum to 1)"
        ]
    if activation in _SATURATING_OUTPUTS:
        low, high = _SATURATING_OUTPUTS[activation]
        if np.any((targets <= low) | (targets >= high)):
            return [
                f"the {activation} output reaches the targets {low:g}/{high:g} only at infinite "
                "logits, where K = Θ/n vanishes"
            ]
        return []
    # A softmax the graph does not show (subclassed model): per-example output sums that are
    # one constant while the outputs themselves vary.
    if outputs.ndim == 2 and outputs.shape[1] > 1 and outputs.shape[0] > 1:
        sums = outputs.sum(axis=1)
        spread = np.max(np.abs(outputs - outputs.mean(axis=0)))
        scale = max(1.0, abs(float(sums.mean())))
        if spread > 0 and np.ptp(sums) <= _CONSTANT_SUM_TOLERANCE * scale:
            return [
                f"each example's outputs sum to {float(sums.mean()):.6g}, which makes K = Θ/n "
                "singular by construction"
            ]
    return []


def not_covered_verdict(reasons, lambda_min, logits_hint_text):
    """The summary's verdict for a model the theory does not cover (replaces the GD one)."""
    measured = "" if lambda_min is None else f"; measured λ_min(K) = {lambda_min:.3g}"
    return (
        f"Not covered by the LPLR theory: {'; '.join(reasons)}{measured}. ρ_bound, the PL bound "
        f"and the a-posteriori estimate say nothing here. Measure the logits: {logits_hint_text} "
        f"({NOT_COVERED_POINTER})."
    )
