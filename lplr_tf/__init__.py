"""lplr_tf: train Keras models and measure why gradient descent converges fast.

Public API for your own TF pipeline (imported lazily, so `import lplr_tf` stays light):

    lplr_tf.LPLRCallback(probe_data, ...)    # a keras callback for model.fit (lplr/ logs)
    lplr_tf.diagnose(model, x, y, ...)       # the LPLR quantities at the current weights
    lplr_tf.diagnose(model, dataset, ...)    # ... on a finite tf.data.Dataset of (x, y)
    lplr_tf.losses.HalfSquaredError()        # the loss L itself, for model.compile
    lplr_tf.analysis.summarize(rows, learning_rate=eta)   # a metric history -> summary
"""

import importlib

__all__ = ["LPLRCallback", "diagnose", "analysis"]

_ATTRIBUTES = {
    "LPLRCallback": ("lplr_tf.callbacks", "LPLRCallback"),
    "diagnose": ("lplr_tf.api", "diagnose"),
}
_SUBMODULES = (
    "analysis",
    "api",
    "callbacks",
    "data",
    "diagnostics",
    "hessian",
    "losses",
    "ntk",
    "plots",
    "report",
)


def __getattr__(name):
    if name in _ATTRIBUTES:
        module, attribute = _ATTRIBUTES[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lplr_tf.{name}")
    raise AttributeError(f"module 'lplr_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
