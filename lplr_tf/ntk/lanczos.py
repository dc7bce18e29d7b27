"""Lanczos iteration for extreme eigenvalues of a symmetric operator given as a matvec.

Used for the NTK (matrix-vector products with K, K − K₀, and (K − σI)⁻¹ through a Cholesky
factor) and for the loss Hessian (Hessian-vector products). The Krylov basis is fully
re-orthogonalized (classical Gram–Schmidt, repeated when it cancelled much of the vector),
which is affordable because the number of iterations is small (tens) and makes the Ritz
values reliable without restarts.

Three implementations of the same iteration:

* `lanczos_extreme_eigenvalues`: a fixed number of iterations on the host (NumPy), the
  reference that tests compare against.
* `lanczos`: the host iteration with a convergence test, one matvec per Python-level step
  (interruptible between steps through `should_stop`).
* `lanczos_graph`: the same iteration as a `tf.while_loop`, to be traced inside a
  `tf.function` (XLA-compilable: static shapes, the Krylov basis preallocated), so that the
  whole solve runs on the device with one host round trip.

Convergence test (both must hold, checked after every iteration k ≥ 2): the selected Ritz
value θ changed by at most `tolerance`·|θ| since the previous iteration, and its error
estimate min(r, r²/gap) is at most `tolerance`·|θ|, where r = β_k |s_k| is the Ritz pair's
residual norm (an eigenvalue lies within r of θ) and gap the distance to the next Ritz value
(for an isolated eigenvalue the Ritz value's error is at most about r²/gap). The iteration
also stops when the next Krylov vector vanishes (an invariant subspace: the Ritz values are
exact).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from lplr_tf.ntk import interrupt

WHICH = ("largest", "smallest", "largest_magnitude")
# A Krylov vector this much smaller than the operator's scale means an invariant subspace.
_BREAKDOWN = 1e-13


@dataclasses.dataclass(frozen=True)
class LanczosResult:
    """The outcome of one Lanczos solve.

    Attributes:
      value: The selected extreme Ritz value (largest, smallest or largest in magnitude).
      ritz_min, ritz_max: The extreme Ritz values (ritz_min >= λ_min, ritz_max <= λ_max).
      iterations: Matrix-vector products used.
      converged: Whether the convergence test passed (else max_iterations was reached).
      error_estimate: min(r, r²/gap) for `value` (absolute).
      vector: The unit Ritz vector of `value`, float64 (d,), when requested, else None.
    """

    value: float
    ritz_min: float
    ritz_max: float
    iterations: int
    converged: bool
    error_estimate: float
    vector: np.ndarray | None = None


def check_which(which, caller):
    if which not in WHICH:
        raise ValueError(f"{caller}: which={which!r}; expected one of {WHICH}.")


def lanczos_extreme_eigenvalues(matvec, dim, *, num_iterations=30, seed=0, tolerance=1e-10):
    """Smallest and largest Ritz value after a fixed number of Lanczos iterations (reference).

    Args:
      matvec: Callable mapping a float64 array of shape (dim,) to A @ v, shape (dim,).
        It may return any array-like (a tf.Tensor too); it is converted to float64.
      dim: Dimension of the operator.
      num_iterations: Krylov dimension; capped at `dim`. With num_iterations == dim the
        Ritz values are the exact eigenvalues (up to rounding).
      seed: Seed of the random start vector.
      tolerance: Stop early when the next Lanczos vector has norm below this (an invariant
        subspace was found).

    Returns:
      (ritz_min, ritz_max): floats. ritz_max <= lambda_max and ritz_min >= lambda_min.
    """
    if dim < 1:
        raise ValueError(f"lanczos: dim={dim}; expected a positive operator dimension.")
    steps = int(min(num_iterations, dim))
    rng = np.random.default_rng(seed)
    basis = np.zeros((steps + 1, dim))
    start = rng.standard_normal(dim)
    basis[0] = start / np.linalg.norm(start)
    alphas, betas = [], []
    for k in range(steps):
        w = np.asarray(matvec(basis[k]), dtype=np.float64).reshape(dim)
        alphas.append(float(basis[k] @ w))
        for _ in range(2):
            w = w - basis[: k + 1].T @ (basis[: k + 1] @ w)
        beta = float(np.linalg.norm(w))
        if k == steps - 1 or beta < tolerance:
            break
        betas.append(beta)
        basis[k + 1] = w / beta
    ritz = np.linalg.eigvalsh(_tridiagonal(alphas, betas[: len(alphas) - 1]))
    return float(ritz[0]), float(ritz[-1])


def _tridiagonal(alphas, betas):
    matrix = np.diag(np.asarray(alphas, dtype=np.float64))
    if len(betas):
        off = np.asarray(betas, dtype=np.float64)
        matrix += np.diag(off, 1) + np.diag(off, -1)
    return matrix


def _select(values, which):
    """Index into ascending `values` of the selected end, and of its inner neighbour."""
    top = which == "largest" or (which == "largest_magnitude" and values[-1] >= -values[0])
    if top:
        return len(values) - 1, len(values) - 2
    return 0, 1


def lanczos(
    matvec,
    start,
    *,
    which="largest",
    tolerance=1e-8,
    max_iterations=100,
    should_stop=None,
    stage="lanczos",
    return_vector=False,
):
    """Host Lanczos with a convergence test on the selected extreme Ritz value.

    Args:
      matvec: Callable, float64 (d,) → A v as float64 (d,) (array-like accepted).
      start: Start vector (d,), nonzero (e.g. the previous solve's Ritz vector).
      which: "largest", "smallest" or "largest_magnitude" (max |λ|, for an operator norm).
      tolerance: Relative tolerance of the convergence test (module docstring).
      max_iterations: Cap on matrix-vector products (also capped at d).
      should_stop: Optional callable polled before every product (`interrupt`).
      stage: Name of this solve in a ProbeInterrupted message.
      return_vector: Also return the Ritz vector of the selected value.

    Returns:
      LanczosResult.
    """
    check_which(which, "lanczos")
    start = np.asarray(start, dtype=np.float64).reshape(-1)
    dim = start.shape[0]
    norm = float(np.linalg.norm(start))
    if dim < 1 or not norm > 0 or not np.isfinite(norm):
        raise ValueError(
            f"lanczos: start vector of shape {start.shape} and norm {norm}; expected a "
            "nonzero finite vector."
        )
    steps = int(min(max_iterations, dim))
    basis = np.zeros((steps + 1, dim))
    basis[0] = start / norm
    alphas, betas = [], []
    previous, converged = None, False
    for k in range(steps):
        interrupt.check(should_stop, stage)
        w = np.asarray(matvec(basis[k]), dtype=np.float64).reshape(dim)
        alphas.append(float(basis[k] @ w))
        norm_before = np.linalg.norm(w)
        w -= basis[: k + 1].T @ (basis[: k + 1] @ w)
        if np.linalg.norm(w) < 0.7 * norm_before:  # DGKS: once more when much cancelled
            w -= basis[: k + 1].T @ (basis[: k + 1] @ w)
        beta = float(np.linalg.norm(w))
        values, vectors = np.linalg.eigh(_tridiagonal(alphas, betas))
        index, neighbour = _select(values, which)
        value = float(values[index])
        scale = max(abs(values[0]), abs(values[-1]))
        residual = beta * abs(vectors[-1, index])
        estimate = residual
        if k > 0:
            estimate = min(residual, residual**2 / max(abs(value - values[neighbour]), 1e-300))
        breakdown = beta <= _BREAKDOWN * max(scale, 1e-300)
        if breakdown or (
            previous is not None
            and abs(value - previous) <= tolerance * abs(value)
            and estimate <= tolerance * abs(value)
        ):
            converged = True
            break
        previous = value
        if k < steps - 1:
            betas.append(beta)
            basis[k + 1] = w / beta
    iterations = len(alphas)
    vector = None
    if return_vector:
        vector = basis[:iterations].T @ vectors[:, index]
    return LanczosResult(
        value=value,
        ritz_min=float(values[0]),
        ritz_max=float(values[-1]),
        iterations=iterations,
        converged=converged or iterations == dim,
        error_estimate=0.0 if converged and breakdown else float(estimate),
        vector=vector,
    )


def lanczos_graph(matvec, start, *, which, tolerance, max_iterations, static_shapes=False):
    """The Lanczos iteration as a tf.while_loop; call inside a tf.function.

    The tridiagonal matrix is m × m (static), its unused off-diagonal zero and its unused
    diagonal padded with a value beyond T_k's Gershgorin bound on the side away from the
    extreme asked for, so that the padding is never the extreme nor its neighbour. (Padding
    with α₀ instead, a Rayleigh quotient inside the spectrum, sits next to the top Ritz
    value after a warm start and ruins its gap, hence its error estimate.) The Krylov
    basis is a TensorArray that grows by one vector per iteration, and iteration k
    re-orthogonalizes against its k vectors only; with `static_shapes` (for XLA, which
    needs them) it is a preallocated (m + 1, d) tensor, zero beyond k, re-orthogonalized
    against in full: m·d work per iteration instead of k·d (for a Hessian with d = 3·10⁵
    and m = 24 that is measurable on a CPU, not on a GPU).

    Args:
      matvec: Traceable callable, (d,) tensor → (d,) tensor of start's dtype.
      start: (d,) nonzero tensor, float64 (float32 where the device has no float64).
      which: "largest", "smallest" or "largest_magnitude" (Python string, static).
      tolerance: Scalar tensor or float, relative tolerance of the convergence test.
      max_iterations: Python int m >= 1 (static; capped at d when d is static).
      static_shapes: Use only static shapes (set it when the caller is XLA-compiled).

    Returns:
      Dict of tensors: value, ritz_min, ritz_max, error_estimate (start's dtype),
      iterations (int32), converged (bool), vector ((d,), unit Ritz vector of value).
    """
    check_which(which, "lanczos_graph")
    dtype = start.dtype
    dim = start.shape[0]
    m = int(max_iterations if dim is None else min(max_iterations, dim))
    tolerance = tf.cast(tolerance, dtype)
    index = tf.range(m)
    unit = start / tf.norm(start)
    if static_shapes:
        basis0 = tf.concat([unit[None], tf.zeros((m, tf.shape(start)[0]), dtype)], 0)
        read = lambda basis, k: basis[k]
        prefix = lambda basis, k: basis
        write = lambda basis, k, v: tf.tensor_scatter_nd_update(basis, [[k]], [v])
    else:
        basis0 = tf.TensorArray(
            dtype, size=m + 1, element_shape=start.shape, clear_after_read=False
        ).write(0, unit)
        read = lambda basis, k: basis.read(k)
        prefix = lambda basis, k: basis.gather(tf.range(k + 1))
        write = lambda basis, k, v: basis.write(k, v)
    zeros = tf.zeros((m,), dtype)
    nothing = tf.constant(0.0, dtype)
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).tiny, dtype)

    def padded_eigh(alphas, betas, k, low):
        """eigh of T_k padded to m × m with a value below (low) or above its spectrum.

        Gershgorin bounds the spectrum of T_k by ±(max|α| + 2·max|β|); the padding sits at
        1.5 times that on the side away from the end asked for, so it is never an
        extreme nor the extreme's neighbour.
        """
        real = index <= k
        diagonal = tf.where(real, alphas, tf.zeros_like(alphas))
        off = tf.where(index < k, betas, tf.zeros_like(betas))
        bound = tf.reduce_max(tf.abs(diagonal)) + 2.0 * tf.reduce_max(tf.abs(off))
        pad = -1.5 * bound if low else 1.5 * bound
        tridiagonal = tf.linalg.diag(tf.where(real, diagonal, pad * tf.ones_like(diagonal)))
        if m > 1:
            tridiagonal += tf.linalg.diag(off[: m - 1], k=1) + tf.linalg.diag(off[: m - 1], k=-1)
        return tf.linalg.eigh(tridiagonal)

    def extremes(alphas, betas, k):
        """The selected Ritz value, its inner neighbour, its eigenvector of T_k (length m,
        zero beyond k), and the extreme Ritz values."""
        ends = {}
        if which in ("largest", "largest_magnitude"):
            values, vectors = padded_eigh(alphas, betas, k, low=True)
            ends["top"] = (values[m - 1], values[max(m - 2, 0)], vectors[:, m - 1])
            ritz_min, ritz_max = tf.gather(values, m - 1 - k), values[m - 1]
        if which in ("smallest", "largest_magnitude"):
            values, vectors = padded_eigh(alphas, betas, k, low=False)
            ends["bottom"] = (values[0], values[min(1, m - 1)], vectors[:, 0])
            ritz_min, ritz_max = values[0], tf.gather(values, k)
        if which == "largest_magnitude":
            ritz_max = ends["top"][0]
            top = tf.abs(ends["top"][0]) >= tf.abs(ends["bottom"][0])
            value, neighbour, column = (
                tf.where(top, a, b) for a, b in zip(ends["top"], ends["bottom"])
            )
        else:
            value, neighbour, column = next(iter(ends.values()))
        column = tf.where(index <= k, column, tf.zeros_like(column))
        return value, neighbour, column, ritz_min, ritz_max

    def body(k, basis, alphas, betas, previous, done, estimate):
        q = read(basis, k)
        w = matvec(q)
        alpha = tf.tensordot(q, w, 1)
        known = prefix(basis, k)
        project = lambda w: w - tf.linalg.matvec(known, tf.linalg.matvec(known, w), True)
        norm_before = tf.norm(w)
        w = project(w)
        # A second pass only when the first cancelled much of w (the DGKS criterion):
        # "twice is enough", once is when little was removed.
        w = tf.cond(tf.norm(w) < 0.7 * norm_before, lambda: project(w), lambda: w)
        beta = tf.norm(w)
        alphas = tf.tensor_scatter_nd_update(alphas, [[k]], [alpha])
        betas = tf.tensor_scatter_nd_update(betas, [[k]], [beta])
        value, neighbour, column, ritz_min, ritz_max = extremes(alphas, betas, k)
        residual = beta * tf.abs(column[k])
        gap = tf.maximum(tf.abs(value - neighbour), tiny)
        estimate = tf.where(k > 0, tf.minimum(residual, tf.square(residual) / gap), residual)
        scale = tf.maximum(tf.abs(ritz_min), tf.abs(ritz_max))
        breakdown = beta <= _BREAKDOWN * tf.maximum(scale, tiny)
        settled = (k > 0) & (tf.abs(value - previous) <= tolerance * tf.abs(value))
        done = breakdown | (settled & (estimate <= tolerance * tf.abs(value)))
        estimate = tf.where(breakdown, nothing, estimate)
        next_q = w / tf.where(beta > 0, beta, tf.ones_like(beta))
        basis = write(basis, k + 1, next_q)
        return k + 1, basis, alphas, betas, value, done, estimate

    k, basis, alphas, betas, _, done, estimate = tf.while_loop(
        lambda k, *state: (k < m) & tf.logical_not(state[4]),
        body,
        (tf.constant(0), basis0, zeros, zeros, nothing, tf.constant(False), nothing),
        maximum_iterations=m,
    )
    value, _, column, ritz_min, ritz_max = extremes(alphas, betas, k - 1)
    used = basis[:m] if static_shapes else basis.gather(tf.range(k))
    vector = tf.linalg.matvec(used, column if static_shapes else column[:k], transpose_a=True)
    return {
        "value": value,
        "ritz_min": ritz_min,
        "ritz_max": ritz_max,
        "iterations": k,
        "converged": done if dim is None else done | (k >= dim),
        "error_estimate": estimate,
        "vector": vector / tf.norm(vector),
    }
