"""The a-priori check at initialization: is K well conditioned on the ball GD will stay in?

Liu, Zhu & Belkin (2022, Thm. 6): if λ_min(K(θ)) ≥ μ₀ on the ball B(θ₀, R₀) with
R₀ = 2·√(2·β₀·L₀) / μ₀, and η ≤ 1/β, then GD from θ₀ stays in the ball and converges
linearly. Here μ₀ = λ₀/2 with λ₀ = λ_min(K₀), β₀ the sharpness at θ₀ and L₀ the loss at θ₀
(the theorem is for interpolation, L* = 0). Conventions of docs/theory.md: L = 1/(2n)
Σ‖f(x_i) − y_i‖², K = Θ/n with Θ = J Jᵀ the (nO × nO) empirical NTK.

The ball cannot be searched, so it is *sampled* in the directions GD can move in: every GD
step is −η·Jᵀr/n, in the row space of J, so δ ∝ Jᵀv for eigenvectors v of K₀ (the
`num_eigenvectors` bottom and top ones) and δ ∝ −Jᵀr₀ (the first gradient step), each at
radii R₀/4, R₀/2, R₀. Per sample it measures λ_min(K(θ₀ + δ)) and ‖K(θ₀ + δ) − K₀‖₂/‖δ‖.
The check `holds` when every sample has λ_min ≥ μ₀ and η ≤ 1/β₀. It is a sampled check,
not a proof: a sample can miss the worst point of the ball.

Cost: per sample one kernel and its statistics (`ntk.kernel_statistics`: λ_min by a
Cholesky factorization, ‖K − K₀‖₂ by Lanczos), the cost of an NTK probe; K₀'s bottom and top
eigenvectors are the Ritz vectors of its own statistics (a full eigendecomposition only
for `num_eigenvectors` > 1 on kernels up to `LARGE_KERNEL_DIM`). With d = nO ≤
`LARGE_KERNEL_DIM` all samples are taken (9 by default); above it only the first
`LARGE_KERNEL_SAMPLES`, in the order radius R₀ first, then the gradient, bottom and top
directions, so the check costs about two probes. scripts/benchmark_a_priori.py measures the
ratio to a probe. A kernel whose working set (Θ₀ and a sampled Θ in float32, one float64
workspace: 16·d² bytes) exceeds the memory budget is skipped with a note.
"""

import numpy as np
import tensorflow as tf

from lplr_tf import hessian, ntk
from lplr_tf.bounds import step_size_ok

KIND = "sampled check, not a proof"
DEFAULT_RADII = (0.25, 0.5, 1.0)
LARGE_KERNEL_DIM = 1024
LARGE_KERNEL_SAMPLES = 2
# The check holds Θ₀ and one sampled Θ (float32) and the statistics' float64 workspace.
BYTES_PER_KERNEL_ENTRY = 4 + 4 + 8


def _check_arguments(learning_rate, output_mode, radii, num_eigenvectors):
    if not learning_rate or learning_rate <= 0:
        raise ValueError(
            f"a_priori.check: learning_rate={learning_rate!r}; expected the positive GD step "
            "size η of the run."
        )
    if output_mode not in ("full", "trace"):
        raise ValueError(
            f"a_priori.check: output_mode={output_mode!r}; expected 'full' or 'trace' (the "
            "run's ntk_output_mode)."
        )
    if not radii or any(not r > 0 for r in radii):
        raise ValueError(
            f"a_priori.check: radii={radii!r}; expected positive fractions of R₀, e.g. "
            f"{DEFAULT_RADII}."
        )
    if not isinstance(num_eigenvectors, int) or num_eigenvectors < 0:
        raise ValueError(
            f"a_priori.check: num_eigenvectors={num_eigenvectors!r}; expected a non-negative "
            "int (bottom and top eigenvectors of K₀ to sample along)."
        )


def parameter_directions(network, x, vectors):
    """Jᵀv for each row v of `vectors`, J = ∂vec f(X)/∂θ over the trainable variables.

    Args:
      network: A built Keras model, called with training=False.
      x: Inputs (n, ...).
      vectors: float64 array (k, n·O), example-major like the full kernel (row i·O + o is
        output o of example i).

    Returns:
      float64 array (k, P) in the layout of `hessian.flatten(network.trainable_variables)`.
    """
    variables = network.trainable_variables
    directions = []
    for vector in np.asarray(vectors, np.float64):
        with tf.GradientTape() as tape:
            outputs = network(x, training=False)
        cotangent = tf.cast(tf.reshape(vector, tf.shape(outputs)), outputs.dtype)
        gradients = tape.gradient(
            outputs,
            variables,
            output_gradients=cotangent,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        directions.append(hessian.flatten(gradients))
    return np.stack(directions)


def _kernel(network, x, output_mode):
    """Θ(x, x) as NumPy (unnormalized)."""
    return ntk.empirical_ntk(network, x, output_mode=output_mode, as_numpy=True)


def _extreme_eigenvectors(theta0, statistics, num_eigenvectors, scale):
    """(d, 2k) columns: the k bottom, then the k top eigenvectors of K₀ (ascending)."""
    if num_eigenvectors <= 1 or theta0.shape[0] > LARGE_KERNEL_DIM:
        vectors = statistics.vectors
        columns = [vectors[name] for name in ("lambda_min", "lambda_max") if name in vectors]
        return np.stack(columns, axis=1) if num_eigenvectors else np.zeros((len(theta0), 0))
    return ntk.ntk_spectrum(theta0, scale=scale, return_eigenvectors=True).eigenvectors


def _sample_plan(eigenvectors, residual0, num_eigenvectors, radii):
    """[(name, radius fraction, v)] in priority order: largest radius first, then gradient,
    bottom and top eigenvectors (the gradient's v is −r₀: GD moves along −Jᵀr₀)."""
    dim = eigenvectors.shape[1]
    count = min(num_eigenvectors, dim)
    vectors = [("gradient", -residual0)]
    vectors += [(f"bottom_{k}", eigenvectors[:, k]) for k in range(count)]
    top = [k for k in range(dim - count, dim) if k >= count]  # no duplicates on tiny kernels
    vectors += [(f"top_{dim - 1 - k}", eigenvectors[:, k]) for k in reversed(top)]
    return [(name, fraction, v) for fraction in sorted(radii, reverse=True) for name, v in vectors]


def _skipped(result, reason):
    result.update(skipped=reason, holds=None)
    return result


def check(
    network,
    x,
    y,
    *,
    learning_rate,
    output_mode="full",
    radii=DEFAULT_RADII,
    num_eigenvectors=1,
    memory_budget_bytes=None,
    sharpness=None,
    max_samples=None,
    progress=None,
):
    """Samples the ball B(θ₀, R₀) of the theorem at the network's current weights θ₀.

    Args:
      network: A built Keras model at initialization (called with training=False).
      x: Training inputs (n, ...); y: targets (n, O).
      learning_rate: The GD step size η.
      output_mode: The run's NTK output mode; "trace" with O > 1 is skipped (not the
        theory's kernel).
      radii: Fractions of R₀ at which each direction is sampled.
      num_eigenvectors: How many bottom and how many top eigenvectors of K₀ give directions.
      memory_budget_bytes: Skip when the check's kernels need more (also passed to the NTK).
      sharpness: β₀ if already measured; else `hessian.sharpness` measures it.
      max_samples: Cap on the samples; None: all when d = nO ≤ LARGE_KERNEL_DIM, else
        LARGE_KERNEL_SAMPLES.
      progress: Optional callable taking one line of text, called before the samples and
        after each (each sample costs about one probe: minutes on large kernels).

    Returns:
      A JSON-ready dict: kind, output_mode, learning_rate, kernel_dim, kernel_change_method
        ("dense", or "lanczos (lower estimate)" above LARGE_KERNEL_DIM), lambda0 (λ_min(K₀)),
      mu0 (λ₀/2), beta0, loss0, radius (R₀), samples ([{direction, radius_fraction, radius,
      lambda_min, kernel_change (‖K − K₀‖₂), lipschitz (kernel_change/‖δ‖)}]),
      num_samples, min_lambda_min, lipschitz_ball, lambda_ok (every sample's λ_min ≥ μ₀),
      step_size_ok (η ≤ 1/β₀), holds (both), skipped (None, or why nothing was sampled).
      The weights are restored exactly before returning.

    Raises:
      ValueError: a non-positive η, an unknown output mode, bad radii or num_eigenvectors.
    """
    _check_arguments(learning_rate, output_mode, radii, num_eigenvectors)
    x = tf.convert_to_tensor(x)
    outputs0 = np.asarray(network(x, training=False), np.float64)
    n = int(x.shape[0])
    num_outputs = int(np.prod(outputs0.shape[1:]))
    dim = n * num_outputs if output_mode == "full" else n
    residual0 = (outputs0.reshape(n, -1) - np.asarray(y, np.float64).reshape(n, -1)).reshape(-1)
    result = {
        "kind": KIND,
        "output_mode": output_mode,
        "learning_rate": float(learning_rate),
        "kernel_dim": dim,
        "kernel_change_method": "lanczos (to 1e-8 relative)",
        "lambda0": None,
        "mu0": None,
        "beta0": None,
        "loss0": float(residual0 @ residual0 / (2 * n)),
        "radius": None,
        "samples": [],
        "num_samples": 0,
        "min_lambda_min": None,
        "lipschitz_ball": None,
        "lambda_ok": None,
        "step_size_ok": None,
        "holds": None,
        "skipped": None,
    }
    if output_mode == "trace" and num_outputs > 1:
        return _skipped(result, f"trace kernel with O = {num_outputs} is not the theory's kernel")
    budget = memory_budget_bytes or ntk.memory_budget()
    if BYTES_PER_KERNEL_ENTRY * dim * dim > budget:
        return _skipped(
            result,
            f"kernels of size {dim}×{dim} need ~{BYTES_PER_KERNEL_ENTRY * dim * dim:.3g} bytes "
            f"> the memory budget of {budget:.3g} bytes",
        )
    theta0 = _kernel(network, x, output_mode)
    statistics0 = ntk.kernel_statistics(theta0, scale=1.0 / n)
    if sharpness is None:
        sharpness = hessian.measure_sharpness(network, x, y, warm_start=False).value
    beta0 = float(sharpness)
    lambda0 = float(statistics0.lambda_min)
    result.update(lambda0=lambda0, mu0=lambda0 / 2, beta0=beta0)
    result["step_size_ok"] = bool(step_size_ok(learning_rate, beta0))
    if lambda0 <= 0:
        result.update(lambda_ok=False, holds=False)
        return _skipped(result, f"λ_min(K₀) = {lambda0:.3g} ≤ 0: no PL constant at θ₀")
    radius = 2.0 * np.sqrt(2.0 * beta0 * result["loss0"]) / result["mu0"]
    result["radius"] = float(radius)
    eigenvectors = _extreme_eigenvectors(theta0, statistics0, num_eigenvectors, 1.0 / n)
    plan = _sample_plan(eigenvectors, residual0, num_eigenvectors, radii)
    if max_samples is None:
        max_samples = len(plan) if dim <= LARGE_KERNEL_DIM else LARGE_KERNEL_SAMPLES
    plan = plan[:max_samples]
    report = progress or (lambda line: None)
    report(
        f"A-priori check at θ₀: λ₀ = {lambda0:.3g}, β₀ = {beta0:.6g}, R₀ = {radius:.3g}; "
        f"{len(plan)} sample(s) of the ball, one {dim}×{dim} kernel each"
    )
    names = list(dict.fromkeys(name for name, _, _ in plan))
    vectors = {name: v for name, _, v in plan}
    directions = dict(zip(names, parameter_directions(network, x, [vectors[k] for k in names])))
    variables = network.trainable_variables
    saved = [v.numpy() for v in variables]
    shapes = [tuple(v.shape) for v in variables]
    try:
        for name, fraction, _ in plan:
            direction = directions[name]
            length = float(np.linalg.norm(direction))
            if length == 0.0:
                continue  # v in the kernel's null space: GD cannot move along it
            delta = direction * (fraction * radius / length)
            for variable, start, part in zip(variables, saved, hessian.unflatten(delta, shapes)):
                variable.assign((start + part).astype(start.dtype))
            statistics = ntk.kernel_statistics(
                _kernel(network, x, output_mode),
                theta0,
                scale=1.0 / n,
                quantities=("lambda_min", "kernel_drift"),
            )
            change = float(statistics.kernel_drift_op)
            step = float(np.linalg.norm(delta))
            result["samples"].append(
                {
                    "direction": name,
                    "radius_fraction": float(fraction),
                    "radius": step,
                    "lambda_min": float(statistics.lambda_min),
                    "kernel_change": change,
                    "lipschitz": change / step,
                }
            )
            report(
                f"A-priori sample {len(result['samples'])}/{len(plan)} ({name} at "
                f"{fraction:g}·R₀): λ_min = {statistics.lambda_min:.3g}"
            )
    finally:
        for variable, start in zip(variables, saved):
            variable.assign(start)
    samples = result["samples"]
    if samples:
        lowest = min(s["lambda_min"] for s in samples)
        result.update(
            num_samples=len(samples),
            min_lambda_min=lowest,
            lipschitz_ball=max(s["lipschitz"] for s in samples),
            lambda_ok=bool(lowest >= result["mu0"]),
        )
        result["holds"] = result["lambda_ok"] and result["step_size_ok"]
    return result
