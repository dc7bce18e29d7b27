"""Hessian-vector products of the squared loss and the sharpness β = λ_max(∇²L).

The loss is `losses.squared_loss`, L(θ) = 1/(2n) Σ_i ‖f(x_i; θ) − y_i‖², differentiated
with respect to `model.trainable_variables` (the model is called with training=False).
Hessian-vector products use a nested `tf.GradientTape` (reverse-over-reverse). The
parameter vector θ in R^P is the concatenation of the trainable variables flattened in
row-major order, in the order of `model.trainable_variables`.

Two ways to the sharpness:

* `measure_sharpness` (what probes use): Lanczos on Hessian-vector products inside one
  compiled function (`ntk.lanczos.lanczos_graph`, a tf.while_loop; XLA-compilable), with a
  convergence test on the top Ritz value (relative `tolerance`, a cap `max_iterations`),
  warm-started from the previous call's top Ritz vector. Across the probes of a run the
  top eigenvector moves little, so a probe typically needs a handful of products instead
  of 20. The state is a small `SharpnessSolver` per model, in the engine's per-model cache.
* `sharpness`: a fixed number of host-side Lanczos iterations from a random start, one host
  round trip per product: the reference the tests compare against.
"""

import dataclasses
import weakref

import numpy as np
import tensorflow as tf

from lplr_tf import losses
from lplr_tf.ntk import cache
from lplr_tf.ntk.lanczos import lanczos_extreme_eigenvalues, lanczos_graph


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


def _trainable(model, caller):
    # The Keras variables themselves: under a tf.distribute strategy a tape reads them in
    # the cross-replica context, where the MirroredVariable inside (`.value`) has no handle.
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError(
            f"{caller}: model {model.name!r} has no trainable variables; expected a built "
            "model. Call the model on a batch (or build it) before measuring its Hessian."
        )
    return variables


def _graph_product(model_ref, variables, x, y, vector):
    """∇²L v inside a graph, for a flat vector (P,) of any float dtype (returned in it)."""
    shapes = [tuple(int(d) for d in v.shape) for v in variables]
    parts = tf.split(vector, [int(np.prod(s)) for s in shapes])
    tangents = [tf.cast(tf.reshape(p, s), v.dtype) for p, s, v in zip(parts, shapes, variables)]
    zero = tf.UnconnectedGradients.ZERO
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            prediction = model_ref()(x, training=False)
            loss = losses.squared_loss(prediction, y, tf.shape(prediction)[0], prediction.dtype)
        gradients = inner.gradient(loss, variables, unconnected_gradients=zero)
        directional = tf.add_n([tf.reduce_sum(g * t) for g, t in zip(gradients, tangents)])
    products = outer.gradient(directional, variables, unconnected_gradients=zero)
    return tf.concat([tf.reshape(tf.cast(p, vector.dtype), [-1]) for p in products], axis=0)


class HessianVectorProduct:
    """Compiled v ↦ ∇²L(θ) v for one Keras model, on flat float64 NumPy vectors.

    Build through `hessian_vector_product` (cached per model).

    Attributes:
      dim: P, the number of trainable parameters.
      shapes: The shapes of the trainable variables, in order.
    """

    def __init__(self, model):
        model_ref = weakref.ref(model)  # the cache must not keep the model alive
        variables = _trainable(model, "hessian_vector_product")
        self.shapes = [tuple(int(d) for d in v.shape) for v in variables]
        self.dim = int(sum(np.prod(shape) for shape in self.shapes))
        self._dtype = tf.as_dtype(variables[0].dtype)
        self._function = tf.function(
            lambda x, y, v: _graph_product(model_ref, variables, x, y, v), jit_compile=False
        )

    @property
    def tracing_count(self):
        """How many times the compiled product was traced (1 per input signature)."""
        return self._function.experimental_get_tracing_count()

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
    key = ("hessian", "product", cache.variables_key(model))
    return cache.cached(model, key, lambda: HessianVectorProduct(model))


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


FIXED_ITERATIONS = 20


def sharpness(model, x, y, *, num_iterations=FIXED_ITERATIONS, seed=0):
    """Sharpness by a fixed number of host-side Lanczos iterations (the reference path).

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


@dataclasses.dataclass(frozen=True)
class SharpnessResult:
    """One sharpness measurement.

    Attributes:
      value: β, the top Ritz value of ∇²L (a lower bound on λ_max, to `tolerance`).
      iterations: Hessian-vector products used.
      converged: Whether the convergence test passed before `max_iterations`.
      error_estimate: The Lanczos error estimate of `value` (absolute).
    """

    value: float
    iterations: int
    converged: bool
    error_estimate: float


class SharpnessSolver:
    """Warm-started, compiled Lanczos for λ_max(∇²L) of one model.

    Holds the start vector of the next solve (a tf.Variable of shape (P,)): at first
    a seeded random unit vector, then the previous solve's top Ritz vector plus a small
    random component (`warm_start_noise` of its norm) so that an eigenvector that rises
    past the previous top one is still found.

    Args:
      model: A built Keras model.
      max_iterations: Cap on Hessian-vector products per solve (static: part of the graph).
      seed: Seed of the random start and of the noise.
      jit_compile: XLA-compile the solve.
      warm_start_noise: Relative size of the random component added to the warm start
        (over the demo run, 0, 0.01 and 0.1 all needed 3.3 products per probe on average;
        the noise is there for robustness, not speed).
      krylov_dtype: dtype of the Lanczos vectors (see measure_sharpness).
    """

    def __init__(
        self,
        model,
        *,
        max_iterations,
        seed=0,
        jit_compile=False,
        warm_start_noise=0.1,
        krylov_dtype="float32",
    ):
        model_ref = weakref.ref(model)
        self._model_ref = model_ref
        variables = _trainable(model, "measure_sharpness")
        self._distributed = any(
            isinstance(getattr(v, "value", v), tf.distribute.DistributedValues) for v in variables
        )
        self.dim = int(sum(int(v.shape.num_elements()) for v in variables))
        self.max_iterations = int(max_iterations)
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(self.dim)
        dtype = tf.as_dtype(krylov_dtype)
        self._noise = tf.constant(noise / np.linalg.norm(noise) * warm_start_noise, dtype)
        first = rng.standard_normal(self.dim)
        self._random_start = tf.constant(first / np.linalg.norm(first), dtype)
        self._start = tf.Variable(self._random_start, trainable=False)
        self._warm = tf.Variable(False, trainable=False)

        # warm_start is a boolean tensor, not a Python bool: a cold call (the a-priori check,
        # η = c/β₀) and the warm probes then share one trace instead of tracing twice.
        def solve(x, y, tolerance, warm_start):
            warm = tf.logical_and(warm_start, self._warm)
            start = tf.where(warm, self._start + self._noise, self._random_start)
            result = lanczos_graph(
                lambda v: _graph_product(model_ref, variables, x, y, v),
                tf.convert_to_tensor(start),
                which="largest",
                tolerance=tolerance,
                max_iterations=self.max_iterations,
                static_shapes=jit_compile,
            )
            self._start.assign(tf.where(warm_start, result["vector"], self._start))
            self._warm.assign(tf.logical_or(self._warm, warm_start))
            return result

        self._solve = tf.function(solve, jit_compile=jit_compile)

    @property
    def tracing_count(self):
        return self._solve.experimental_get_tracing_count()

    @property
    def state(self):
        """The warm-start state as a trackable, for checkpoints: a resumed run then starts
        its next solve from the same vector as an uninterrupted one (same numbers)."""
        return tf.train.Checkpoint(start=self._start, warm=self._warm)

    def __call__(self, x, y, *, tolerance, warm_start=True):
        if self._distributed:
            # Mirrored variables have no handle in the cross-replica context of a compiled
            # Lanczos loop; each product as its own compiled call works: the fixed-count host
            # path (20 products from a fixed start, no warm start).
            value = sharpness(self._model_ref(), x, y, num_iterations=FIXED_ITERATIONS)
            return SharpnessResult(value, FIXED_ITERATIONS, True, float("nan"))
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        result = self._solve(x, y, tf.constant(float(tolerance)), tf.constant(bool(warm_start)))
        return SharpnessResult(
            value=float(result["value"]),
            iterations=int(result["iterations"]),
            converged=bool(result["converged"]),
            error_estimate=float(result["error_estimate"]),
        )


def measure_sharpness(
    model,
    x,
    y,
    *,
    tolerance=1e-5,
    max_iterations=24,
    warm_start=True,
    seed=0,
    jit_compile=False,
    krylov_dtype="float32",
):
    """Sharpness β = λ_max(∇²L(θ)) by compiled, warm-started Lanczos (see module docstring).

    Args:
      model: A built Keras model (called with training=False).
      x: Inputs, shape (n, ...).
      y: Targets, shape (n, O).
      tolerance: Relative tolerance of the convergence test on the top Ritz value.
      max_iterations: Cap on Hessian-vector products.
      warm_start: Start from the previous call's top Ritz vector (and store this one's);
        False: a fixed seeded random start, no state change.
      seed: Seed of the solver's random start (used when the solver is first built).
      jit_compile: XLA-compile the whole solve.
      krylov_dtype: dtype of the Krylov vectors and the tridiagonal problem. float32 (the
        default) halves the memory traffic of the P-dimensional vector work, which was ~30%
        of a solve on a CPU at n = 256–1024 for P = 3·10⁵, and agreed with the float64
        20-iteration reference to 3e-6 relative (the target is 1e-4); "float64" is there
        for tighter tolerances.

    Returns:
      SharpnessResult (value, iterations, converged, error_estimate).
    """
    if not 0 < tolerance < 1 or int(max_iterations) < 1:
        raise ValueError(
            f"measure_sharpness: tolerance={tolerance!r}, max_iterations={max_iterations!r}; "
            "expected 0 < tolerance < 1 and max_iterations >= 1."
        )
    solver = sharpness_solver(
        model,
        max_iterations=max_iterations,
        seed=seed,
        jit_compile=jit_compile,
        krylov_dtype=krylov_dtype,
    )
    return solver(x, y, tolerance=tolerance, warm_start=warm_start)


def sharpness_solver(
    model, *, max_iterations=24, seed=0, jit_compile=False, krylov_dtype="float32"
):
    """The model's cached `SharpnessSolver` for this configuration (built on first use)."""
    key = ("hessian", "sharpness", int(max_iterations), bool(jit_compile), seed, krylov_dtype)
    key += (cache.variables_key(model),)
    return cache.cached(
        model,
        key,
        lambda: SharpnessSolver(
            model,
            max_iterations=max_iterations,
            seed=seed,
            jit_compile=jit_compile,
            krylov_dtype=krylov_dtype,
        ),
    )
