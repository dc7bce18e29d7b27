"""The one per-model cache of compiled functions (the only module-level state of lplr_tf).

Compiled kernels (`empirical.NTKEngine`), NTK-vector products (`matfree`), Hessian-vector
products and the sharpness solver (`lplr_tf.hessian`) are built once per model and
configuration and reused by every probe, so repeated probes run traced graphs without
retracing and see the variables' current values. They live in one WeakKeyDictionary keyed
by the model: an entry is dropped with its model.

A cached object must not hold a strong reference to its model (it would keep the key
alive through the dictionary's value): hold `weakref.ref(model)` instead. Keys are
namespaced by their first element ("engine", "matfree", "hessian", ...); each includes the
identities of the model's trainable variables, so rebuilt or replaced variables give a
fresh entry rather than a stale graph.
"""

import weakref

_PER_MODEL = weakref.WeakKeyDictionary()


def variables_key(model):
    """A hashable identity of the model's current trainable variables."""
    return tuple(id(v) for v in model.trainable_variables)


def cached(model, key, build):
    """The object cached for (model, key), built by `build()` on first use.

    Args:
      model: A Keras model (weak-referenceable, hashable by identity).
      key: A hashable tuple; start it with the caller's namespace, e.g. ("engine", ...).
      build: Zero-argument callable returning the object; it must not keep `model` alive.

    Returns:
      The cached object.
    """
    entries = _PER_MODEL.setdefault(model, {})
    if key not in entries:
        entries[key] = build()
    return entries[key]


def cached_entries(model):
    """The dict of this model's cached objects (empty when none); for tests."""
    return dict(_PER_MODEL.get(model, {}))


def is_cached(model):
    """Whether anything is cached for `model`; for tests of the cache's lifetime."""
    return model in _PER_MODEL
