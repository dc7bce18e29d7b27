"""How a user's Keras model is trained, as the LPLR theory sees it.

The theory is about plain full-batch gradient descent on the squared loss
L = 1/(2n) Σ_i ‖f(x_i) − y_i‖². These helpers tell how far a compiled Keras model is from
that: the scale between its loss and L (`loss_scale`), whether its optimizer is plain SGD,
and its learning rate; `CAVEAT` is the text a summary carries when it is not.
"""

import keras
import numpy as np

from lplr_tf.losses import HalfSquaredError

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
_REDUCTION = HalfSquaredError.REDUCTION


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


def is_plain_sgd(optimizer):
    """True for keras SGD without momentum, Nesterov, weight decay, clipping, EMA."""
    opt = inner_optimizer(optimizer)
    if type(opt) is not keras.optimizers.SGD:
        return False
    return (
        float(opt.momentum) == 0.0
        and not opt.nesterov
        and not opt.weight_decay
        and opt.clipnorm is None
        and opt.clipvalue is None
        and opt.global_clipnorm is None
        and not opt.use_ema
        and not getattr(opt, "gradient_accumulation_steps", None)
    )


def optimizer_learning_rate(optimizer):
    """(η_opt, note): the optimizer's current learning rate as a float, or (None, why)."""
    opt = inner_optimizer(optimizer)
    if opt is None:
        return None, "the model has no optimizer"
    schedule = getattr(opt, "_learning_rate", None)
    try:
        value = np.asarray(opt.learning_rate)
        # The shortest decimal of a float32 rate: SGD(0.05) gives 0.05, not 0.0500000007.
        value = float(str(value.astype(np.float32))) if value.dtype == np.float32 else float(value)
    except (TypeError, ValueError) as error:
        return None, f"could not read {type(opt).__name__}.learning_rate ({error})"
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return value, f"{type(schedule).__name__} schedule, its value at train begin"
    return value, None
