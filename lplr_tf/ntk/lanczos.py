"""Lanczos iteration for the extreme eigenvalues of a symmetric operator given as a matvec.

Used for matrix-free spectra: the NTK through NTK-vector products and the loss Hessian
through Hessian-vector products. The Krylov basis is kept in float64 and fully
re-orthogonalized, which is affordable because the number of iterations is small (tens),
and makes the Ritz values reliable without restarts.
"""

import numpy as np


def lanczos_extreme_eigenvalues(matvec, dim, *, num_iterations=30, seed=0, tolerance=1e-10):
    """Estimates the smallest and largest eigenvalue of a symmetric linear operator.

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
      (ritz_min, ritz_max): floats. ritz_max <= lambda_max and ritz_min >= lambda_min; both
      converge quickly for well-separated extreme eigenvalues.
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
        alpha = float(basis[k] @ w)
        alphas.append(alpha)
        # Full re-orthogonalization against the whole basis (twice is enough).
        for _ in range(2):
            w = w - basis[: k + 1].T @ (basis[: k + 1] @ w)
        beta = float(np.linalg.norm(w))
        if k == steps - 1 or beta < tolerance:
            break
        betas.append(beta)
        basis[k + 1] = w / beta
    tridiagonal = np.diag(alphas)
    if betas:
        off = np.asarray(betas[: len(alphas) - 1])
        tridiagonal += np.diag(off, 1) + np.diag(off, -1)
    ritz = np.linalg.eigvalsh(tridiagonal)
    return float(ritz[0]), float(ritz[-1])
