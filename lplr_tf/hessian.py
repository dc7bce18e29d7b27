"""Hessian-vector products of the squared loss and the sharpness β = λ_max(∇²L).

The loss is the one of DESIGN.md §1, L(θ) = 1/(2n) Σ_i ‖f(x_i; θ) − y_i‖², differentiated
with respect to `model.trainable_variables` (the model is called with training=False).
Hessian-vector products use a nested `tf.GradientTape` (reverse-over-reverse) inside one
`tf.function` (jit_compile=False, pinned). The parameter vector θ in R^P is the
concatenation of the trainable variables flattened in row-major order, in the order of
`model.trainable_variables`; Lanczos works on float64 numpy vectors of that layout.

Compiled functions are cached on the model object itself (a plain, non-trackable holder
attribute), so repeated probes on the same model and input shapes do not retrace and the
cache is freed with the model; no module-level state is kept.
"""

import numpy as np
import tensorflow as tf

from lplr_tf.ntk.lanczos import lanczos_extreme_eigenvalues

_CACHE_ATTRIBUTE = "_lplr_hessian_vector_product"


def flatten(tensors):
    """Concatenates tensors (or arrays) into one float64 numpy vector of shape (P,)."""
    if not tensors:
        return np.zeros((0,), dtype=np.float64)
    return np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1) for t in tensors])


def unflatten(vector, shapes):
    """Splits a flat vector of shape (P,) into numpy arrays of the given shapes."""
    vector = np.asarray(vector).reshape(-1)
    sizes = [int(np.prod(shape)) for shape in shapes]
    if sum(sizes) != vector.shape[0]:
        raise ValueError(
            f"unflatten: vector of length {vector.shape[0]}; expected "
            f"{sum(sizes)} = the number of parameters of shapes {shapes}. "
            "Pass a vector built by `flatten` for the same model."
        )
    parts = np.split(vector, np.cumsum(sizes)[:-1])
    return [part.reshape(shape) for part, shape in zip(parts, shapes)]


class HessianVectorProduct:
    """Compiled v ↦ ∇²L(θ) v for one Keras model, on flat parameter vectors.

    Args:
      model: A built Keras model; its current `trainable_variables` define θ.

    Attributes:
      dim: P, the number of trainable parameters.
      shapes: The shapes of the trainable variables, in order.
    """

    def __init__(self, model):
        self._model = model
        self._variables = list(model.trainable_variables)
        if not self._variables:
            raise ValueError(
                f"HessianVectorProduct: model {model.name!r} has no trainable "
                "variables; expected a built model. Call the model on a batch "
                "(or build it) before measuring its Hessian."
            )
        self.shapes = [tuple(int(d) for d in v.shape) for v in self._variables]
        self.dim = int(sum(np.prod(shape) for shape in self.shapes))
        self._dtype = tf.as_dtype(self._variables[0].dtype)
        self._function = tf.function(self._product, jit_compile=False)

    def matches(self, model):
        """True when `model` still has exactly the variables this product was built for."""
        current = model.trainable_variables
        return len(current) == len(self._variables) and all(
            a is b for a, b in zip(current, self._variables)
        )

    @property
    def tracing_count(self):
        """How many times the compiled product was traced (1 per input signature)."""
        return self._function.experimental_get_tracing_count()

    def _product(self, x, y, vector):
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        parts = tf.split(vector, sizes)
        tangents = [tf.reshape(p, s) for p, s in zip(parts, self.shapes)]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                prediction = self._model(x, training=False)
                residual = prediction - tf.reshape(
                    tf.cast(y, prediction.dtype), tf.shape(prediction)
                )
                count = tf.cast(tf.shape(prediction)[0], prediction.dtype)
                loss = 0.5 * tf.reduce_sum(tf.square(residual)) / count
            gradients = inner.gradient(
                loss, self._variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            directional = tf.add_n(
                [tf.reduce_sum(g * tf.cast(t, g.dtype)) for g, t in zip(gradients, tangents)]
            )
        products = outer.gradient(
            directional, self._variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return tf.concat([tf.reshape(p, [-1]) for p in products], axis=0)

    def __call__(self, x, y, vector):
        """Returns ∇²L v as float64 numpy, shape (P,), for a flat vector v of shape (P,)."""
        vector = np.asarray(vector, dtype=np.float64).reshape(-1)
        if vector.shape[0] != self.dim:
            raise ValueError(
                f"hessian_vector_product: vector of length {vector.shape[0]}; "
                f"expected P = {self.dim} (the model's trainable parameters). "
                "Build it with `flatten` over model.trainable_variables."
            )
        result = self._function(
            tf.convert_to_tensor(x), tf.convert_to_tensor(y), tf.constant(vector, dtype=self._dtype)
        )
        return result.numpy().astype(np.float64)


def _cached_product(model):
    """Returns the model's cached HessianVectorProduct, building it when stale or absent."""
    holder = model.__dict__.get(_CACHE_ATTRIBUTE)
    if holder is None or not holder[0].matches(model):
        holder = [HessianVectorProduct(model)]
        # object.__setattr__ bypasses Keras' attribute tracking: the cache is not a weight.
        object.__setattr__(model, _CACHE_ATTRIBUTE, holder)
    return holder[0]


def hessian_vector_product(model, x, y, vector):
    """Hessian of L(θ) = 1/(2n) Σ‖model(x_i) − y_i‖² times a flat vector.

    Args:
      model: A built Keras model.
      x: Inputs, shape (n, ...).
      y: Targets, shape (n, O) (or any shape with the model output's number of elements).
      vector: Flat float64 vector v, shape (P,), layout of `flatten(model.trainable_variables)`.

    Returns:
      ∇²L(θ) v, float64 numpy array of shape (P,).
    """
    return _cached_product(model)(x, y, vector)


def sharpness(model, x, y, *, num_iterations=20, seed=0):
    """Sharpness β = λ_max(∇²L(θ)) by Lanczos on Hessian-vector products.

    Args:
      model: A built Keras model (called with training=False).
      x: Inputs, shape (n, ...).
      y: Targets, shape (n, O).
      num_iterations: Lanczos iterations (capped at P); exact when ≥ P.
      seed: Seed of the Lanczos start vector.

    Returns:
      The largest Ritz value (a lower bound on λ_max that converges quickly), a float.
    """
    product = _cached_product(model)
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    _, ritz_max = lanczos_extreme_eigenvalues(
        lambda v: product(x, y, v), product.dim, num_iterations=num_iterations, seed=seed
    )
    return float(ritz_max)
