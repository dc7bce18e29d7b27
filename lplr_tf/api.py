"""The functional API: the LPLR quantities of any Keras model at its current weights.

    metrics = lplr_tf.diagnose(model, x, y)              # arrays
    metrics = lplr_tf.diagnose(model, dataset)           # a finite tf.data.Dataset of (x, y)
    metrics["pl_ratio"], metrics["ntk_lambda_min"], metrics["sharpness"]

For a metric history (rows with `step`, `loss`, ... from `LPLRCallback.history` or a
metrics.jsonl) use `lplr_tf.analysis.summarize(rows, learning_rate=eta)`.
"""

import warnings

import tensorflow as tf

from lplr_tf.diagnostics import Diagnostics
from lplr_tf.keras_training import logits_hint, not_covered_reasons, not_covered_verdict
from lplr_tf.probing import Recorder, Schedule
from lplr_tf.user_models import MeasuredNetwork, outside_strategy, probe_arrays, probe_targets

_KEYS = (
    "loss",
    "grad_norm_sq",
    "pl_ratio",
    "ntk_lambda_min",
    "ntk_lambda_max",
    "ntk_trace",
    "ntk_condition",
    "gn_sharpness",
    "sharpness",
)


def diagnose(model, x, y=None, *, l_star=0.0, probe_settings=None, output_layer=None):
    """Measures the LPLR quantities of a Keras model at its current weights on (x, y).

    Conventions, on the n examples given: the squared loss L = 1/(2n) Σ_i ‖f(x_i) − y_i‖²
    (whatever loss the model was compiled with), its gradient over the measured network's
    trainable variables, the PL ratio q = ‖∇L‖² / (2 (L − L*)), the spectrum of the normalized
    NTK K = Θ/n with Θ = J Jᵀ (float32 kernel, float64 eigensolve; a mixed-precision model is
    measured through a float32 copy), and the sharpness β = λ_max(∇²L) by Lanczos. The model
    is called with training=False. Works inside and outside a `tf.distribute` strategy scope
    (it measures the variables' current values).

    A model the theory does not cover (a softmax output: K singular by construction; a
    sigmoid/tanh output with targets at its bounds) is measured all the same, with a
    `UserWarning` that says why and which `output_layer` measures the logits.

    Args:
      model: A Keras model mapping (n, ...) to (n, O).
      x: Inputs, array-like of shape (n, ...), or a finite `tf.data.Dataset` of (x, y) or
        (x, y, sample_weight) batches (then leave y out; sample weights are ignored).
      y: Targets of shape (n, O) (or (n,) when O = 1), or integer class ids of shape (n,)
        for a model with O > 1 outputs (one-hot encoded).
      l_star: L* of the PL ratio.
      probe_settings: A `diagnostics.ProbeSettings` (default: NTK in "full" mode and the
        sharpness).
      output_layer: The name of the layer whose output is measured (the sub-model from the
        inputs to it), e.g. the logits before a softmax; default the model's output.

    Returns:
      A dict with loss, grad_norm_sq, pl_ratio (None when L ≤ L*), and when measured
      ntk_lambda_min, ntk_lambda_max, ntk_trace, ntk_condition (λ_max/λ_min; None when
      λ_min ≤ 0), gn_sharpness (λ_max of the Gauss–Newton matrix Jᵀ J / n = λ_max(K)) and
      sharpness. Non-finite values are None.

    Raises:
      ValueError: mismatched x and y, a dataset together with y, targets that do not match
        the outputs, or an unknown output_layer.
    """
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError(
                f"diagnose: x is a tf.data.Dataset and y is a {type(y).__name__}; expected "
                "y=None with a dataset of (x, y) batches. Pass diagnose(model, dataset)."
            )
        probe_data = x
    elif y is None:
        raise ValueError(
            f"diagnose: x is a {type(x).__name__} and y is None; expected targets y of shape "
            "(n, O) for arrays x. Pass diagnose(model, x, y), or a tf.data.Dataset of (x, y)."
        )
    else:
        probe_data = (x, y)
    x, y = probe_arrays(probe_data, caller="diagnose")

    def measure():
        x_tensor = tf.constant(x)
        measured = MeasuredNetwork(model, x_tensor[:1], output_layer, caller="diagnose")
        targets = probe_targets(y, measured.num_outputs(x_tensor[:1]), "diagnose")
        reasons = not_covered_reasons(
            measured.network, measured.network(x_tensor, training=False), targets
        )
        diagnostics = Diagnostics(
            measured.network,
            (x_tensor, tf.constant(targets)),
            settings=probe_settings,
            l_star=l_star,
        )
        recorder = Recorder(diagnostics, Schedule(log_every=1, probe_every=1))
        row = recorder.record(0, probe=True).row
        if reasons:
            hint = logits_hint(measured.source, "diagnose")
            warnings.warn(
                not_covered_verdict(reasons, row.get("ntk_lambda_min"), hint), stacklevel=3
            )
        return row

    row = outside_strategy(measure)
    return {key: row[key] for key in _KEYS if key in row}
