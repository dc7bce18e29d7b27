"""Matrix-free NTK: NTK-vector products Θv = J (Jᵀ v) and spectra from them.

Θ never exists: Jᵀv is one reverse-mode pass (a VJP with cotangent v on the outputs), and
J t one forward-mode pass (a JVP with tangent t on the parameters, through
tf.autodiff.ForwardAccumulator). Memory is that of one forward/backward pass, so this is
the path for probe sets whose (n·O)² kernel does not fit. Over example blocks,
Jᵀv = Σ_b J_bᵀ v_b is accumulated first, then (Θv)_b = J_b (Jᵀv) per block.

Vectors are example-major like the "full" kernel: entry i·O + o is output o of example i.
Θ is unnormalized; `scale=1/n` gives products and spectra of K = Θ/n.
"""

import weakref

import numpy as np
import tensorflow as tf

from lplr_tf.ntk import cache, common, interrupt, lanczos, spectrum
from lplr_tf.ntk.statistics_result import finish

_CALLER = "ntk_vector_product"
# Quantities of the matrix-free path that are estimates, not exact to tolerance.
ESTIMATES = ("lambda_min", "trace", "condition_number", "effective_rank")


class _MatrixFree:
    """Compiled VJP, JVP and Rademacher-quadratic-form functions for one model."""

    def __init__(self, model, jit_compile):
        model_ref = weakref.ref(model)
        variables = common.trainable_tf_variables(model)
        zero = tf.UnconnectedGradients.ZERO

        def outputs(x):
            return common.flatten_outputs(model_ref()(x, training=False), tf.shape(x)[0])

        def vjp(x, v):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(variables)
                f = outputs(x)
            return tape.gradient(f, variables, output_gradients=v, unconnected_gradients=zero)

        def jvp(x, tangents):
            # ForwardAccumulator needs tf.Variables, not Keras 3 variables (PITFALLS).
            with tf.autodiff.ForwardAccumulator(variables, tangents) as accumulator:
                f = outputs(x)
            return accumulator.jvp(f, unconnected_gradients=zero)

        def ntvp(x, v):
            return jvp(x, vjp(x, v))

        def quadratic_form(x, v):
            # vᵀ Θ v = ‖Jᵀ v‖²: Hutchinson needs the VJP only.
            return tf.add_n([tf.reduce_sum(tf.square(g)) for g in vjp(x, v)])

        compile_ = lambda fn: tf.function(fn, jit_compile=jit_compile)
        self.vjp, self.jvp = compile_(vjp), compile_(jvp)
        self.ntvp, self.quadratic_form = compile_(ntvp), compile_(quadratic_form)

    def product(self, x, v, block_size):
        """Θv for x (n, ...) and v (n, O), float32."""
        n = int(x.shape[0])
        if block_size is None or block_size >= n:
            return self.ntvp(x, v)
        tangents = self.blocked_vjp(x, v, block_size)
        blocks = _blocks(n, block_size)
        return tf.concat([self.jvp(x[s:e], tangents) for s, e in blocks], axis=0)

    def quadratic_form_blocked(self, x, v, block_size):
        """vᵀΘv = ‖Jᵀv‖² for x (n, ...) and v (n, O)."""
        if block_size is None or block_size >= int(x.shape[0]):
            return self.quadratic_form(x, v)
        return tf.add_n([tf.reduce_sum(tf.square(t)) for t in self.blocked_vjp(x, v, block_size)])

    def blocked_vjp(self, x, v, block_size):
        """Jᵀv summed over blocks of `block_size` examples: one list of parameter tangents."""
        tangents = None
        for start, stop in _blocks(int(x.shape[0]), block_size):
            part = self.vjp(x[start:stop], v[start:stop])
            tangents = part if tangents is None else [a + b for a, b in zip(tangents, part)]
        return tangents


def _blocks(n, block_size):
    return [(start, min(start + block_size, n)) for start in range(0, n, block_size)]


def _functions(model, jit_compile):
    key = ("matfree", bool(jit_compile), cache.variables_key(model))
    return cache.cached(model, key, lambda: _MatrixFree(model, jit_compile))


def _prepare(model, x, caller):
    x = common.as_batch(x, "x", caller, model)
    common.ensure_built(model, x)
    return x, common.num_outputs(model, x)


def ntk_vector_product(model, x, v, *, scale=1.0, block_size=None, jit_compile=False):
    """Θv (times `scale`) without forming Θ, by one VJP and one JVP.

    Args:
      model: Keras model, called as `model(x, training=False)`.
      x: Array-like (n, *example_shape).
      v: Array-like (n·O,) example-major, or (n, O).
      scale: Multiplies the product; 1/n gives K v with K = Θ/n.
      block_size: Examples per block (bounds activation memory); None: one block.
      jit_compile: XLA-compile the VJP/JVP (pinned to False by default).

    Returns:
      tf.Tensor with v's shape, in the model's compute dtype.
    """
    x, num_outputs = _prepare(model, x, _CALLER)
    n = int(x.shape[0])
    v = tf.convert_to_tensor(v)
    if v.shape.num_elements() != n * num_outputs or v.shape.rank not in (1, 2):
        raise ValueError(
            f"{_CALLER}: v has shape {tuple(v.shape)}; expected ({n * num_outputs},) or "
            f"({n}, {num_outputs}) for n={n} examples with O={num_outputs} outputs. "
            "Order v example-major (entry i·O + o)."
        )
    with common.tf32_disabled():
        product = _functions(model, jit_compile).product(
            x, tf.reshape(tf.cast(v, x.dtype), (n, num_outputs)), block_size
        )
    return tf.reshape(product, v.shape) * scale


def matrix_free_spectrum(
    model,
    x,
    *,
    scale=1.0,
    num_iterations=30,
    num_probes=16,
    seed=0,
    block_size=None,
    jit_compile=False,
    should_stop=None,
):
    """λ_max and a λ_min estimate of scale·Θ by Lanczos on NTK-vector products.

    The trace is Hutchinson's estimate mean_k z_kᵀ Θ z_k over Rademacher z_k (each one VJP,
    since zᵀΘz = ‖Jᵀz‖²). Lanczos Ritz values bracket inward: the reported λ_max is a
    lower bound and λ_min an upper bound of the true extremes, both converging quickly
    for separated extremes; λ_min of an ill-conditioned kernel needs more iterations.

    Args:
      model: Keras model. x: (n, *example_shape).
      scale: Multiplies Θ (1/n for K = Θ/n).
      num_iterations: Lanczos steps (each one NTK-vector product); capped at n·O.
      num_probes: Hutchinson probe vectors for the trace.
      seed: Seed of the Lanczos start vector and of the probes.
      block_size: Examples per block in each product.
      jit_compile: XLA-compile the VJP/JVP.
      should_stop: Optional callable polled before every product (`interrupt`).

    Returns:
      NTKSpectrum with method="lanczos" and eigenvalues=None.
    """
    x, num_outputs = _prepare(model, x, "matrix_free_spectrum")
    n = int(x.shape[0])
    dim = n * num_outputs
    if num_iterations < 1 or num_probes < 1:
        raise ValueError(
            f"matrix_free_spectrum: num_iterations={num_iterations}, num_probes={num_probes};"
            " expected both >= 1."
        )
    functions = _functions(model, jit_compile)
    matvec = _matvec(functions, x, num_outputs, scale, block_size, should_stop)
    with common.tf32_disabled():
        ritz_min, ritz_max = lanczos.lanczos_extreme_eigenvalues(
            matvec, dim, num_iterations=num_iterations, seed=seed
        )
        rng = np.random.default_rng(seed + 1)
        trace = _hutchinson_trace(functions, x, num_outputs, num_probes, rng, block_size)
    return spectrum.summarize(ritz_min, ritz_max, trace * scale, method="lanczos")


def _matvec(functions, x, num_outputs, scale, block_size, should_stop):
    n = int(x.shape[0])

    def matvec(u):
        interrupt.check(should_stop, "matrix-free lanczos")
        v = tf.constant(np.reshape(u, (n, num_outputs)), dtype=x.dtype)
        return functions.product(x, v, block_size).numpy().astype(np.float64).ravel() * scale

    return matvec


def _hutchinson_trace(functions, x, num_outputs, num_probes, rng, block_size):
    """mean_k z_kᵀ Θ z_k over Rademacher z_k (each one VJP: zᵀΘz = ‖Jᵀz‖²)."""
    n = int(x.shape[0])
    estimates = []
    for _ in range(num_probes):
        z = tf.constant(rng.choice(np.array([-1.0, 1.0]), size=(n, num_outputs)), x.dtype)
        estimates.append(float(functions.quadratic_form_blocked(x, z, block_size)))
    return float(np.mean(estimates))


def matrix_free_statistics(
    model,
    x,
    *,
    scale,
    tolerance=1e-6,
    max_iterations=128,
    num_probes=16,
    seed=0,
    block_size=None,
    jit_compile=False,
    should_stop=None,
):
    """`kernel_statistics` without forming the kernel: the probe's path beyond the budget.

    λ_max by Lanczos on NTK-vector products to `tolerance` (exact to it); λ_min by a
    second Lanczos run for the smallest eigenvalue, stopped at `max_iterations`: a Ritz
    value is an upper bound of λ_min and converges slowly for an ill-conditioned kernel,
    so it is an *estimate* (listed in `estimates` with the trace, a Hutchinson estimate,
    and the condition number and effective rank computed from them). No drift: K₀ is not
    kept on this path.

    Args:
      model: Keras model. x: (n, *example_shape) probe set ("full" kernel, N = n·O).
      scale: Multiplies Θ (1/n for K = Θ/n).
      tolerance, max_iterations: Of each Lanczos solve (NTK-vector products each).
      num_probes: Hutchinson vectors for the trace.
      seed: Seed of the start vectors and the probes.
      block_size: Examples per block in each product (bounds activation memory).
      jit_compile: XLA-compile the VJP/JVP.
      should_stop: Optional callable polled before every product.

    Returns:
      KernelStatistics with method="matrix_free" and `estimates` = ESTIMATES.
    """
    x, num_outputs = _prepare(model, x, "matrix_free_statistics")
    dim = int(x.shape[0]) * num_outputs
    functions = _functions(model, jit_compile)
    matvec = _matvec(functions, x, num_outputs, float(scale), block_size, should_stop)
    rng = np.random.default_rng(seed)
    solve = dict(tolerance=tolerance, max_iterations=max_iterations, should_stop=should_stop)
    with common.tf32_disabled():
        top = lanczos.lanczos(
            matvec,
            rng.standard_normal(dim),
            which="largest",
            stage="matrix-free lanczos",
            **solve,
        )
        bottom = lanczos.lanczos(
            matvec,
            rng.standard_normal(dim),
            which="smallest",
            stage="matrix-free lanczos",
            **solve,
        )
        trace = _hutchinson_trace(functions, x, num_outputs, num_probes, rng, block_size)
    return finish(
        min(bottom.value, top.ritz_min),
        top.value,
        trace * float(scale),
        iterations={"lambda_max": top.iterations, "lambda_min": bottom.iterations},
        converged=top.converged,
        method="matrix_free",
        backend="host",
        estimates=ESTIMATES,
    )
