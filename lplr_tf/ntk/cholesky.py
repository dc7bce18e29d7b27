"""Host Cholesky factorization in place, in bounded steps, and solves with its factor.

λ_min of a kernel is found by inverse iteration on (K − σI)⁻¹ (`statistics`), which needs a
Cholesky factor K − σI = L Lᵀ: N³/3 flops, a quarter of a tridiagonalization (`eigvalsh`)
and a tenth of a full eigendecomposition. A failed factorization proves λ_min(K) ≤ σ.

LAPACK's `potrf` would do it in one call, but for N = 18,000 that call runs for tens of
seconds and cannot be interrupted. This is the right-looking blocked algorithm with the
same BLAS-3 kernels, one bounded step per Python-level call (a b × b diagonal factorization,
a b-wide triangular solve of the panel, then the trailing update in b-wide column chunks of
at most N·b² multiply-adds), so `should_stop` is polled every fraction of a second, and it
works in place on a C-ordered float64 array (no N² temporary: the largest one is N × b).
"""

import numpy as np
import scipy.linalg

from lplr_tf.ntk import interrupt

DEFAULT_BLOCK = 512


def cholesky_in_place(matrix, *, block_size=DEFAULT_BLOCK, should_stop=None):
    """Overwrites the lower triangle of a symmetric positive definite matrix with L.

    Only the lower triangle of `matrix` is read; on return it holds L with A = L Lᵀ and the
    strict upper triangle holds garbage.

    Args:
      matrix: C-ordered float64 array (N, N), modified in place.
      block_size: Panel width b.
      should_stop: Optional callable polled between steps (`interrupt`).

    Returns:
      True on success; False when A is not (numerically) positive definite, in which case
      `matrix` holds garbage and λ_min(A) ≤ 0 (to rounding).
    """
    if matrix.dtype != np.float64 or not matrix.flags.c_contiguous:
        raise ValueError(
            f"cholesky_in_place: matrix of dtype {matrix.dtype} (C-contiguous: "
            f"{matrix.flags.c_contiguous}); expected a C-ordered float64 array."
        )
    size = matrix.shape[0]
    for k0 in range(0, size, block_size):
        k1 = min(k0 + block_size, size)
        interrupt.check(should_stop, "cholesky")
        try:
            diagonal = scipy.linalg.cholesky(matrix[k0:k1, k0:k1], lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return False
        if not np.all(np.isfinite(np.diagonal(diagonal))):
            return False
        matrix[k0:k1, k0:k1] = diagonal
        if k1 == size:
            break
        # The panel L21 = A21 L11⁻ᵀ, kept contiguous as its transpose (b, N − k1).
        panel_t = scipy.linalg.solve_triangular(
            diagonal, matrix[k1:, k0:k1].T, lower=True, check_finite=False
        )
        matrix[k1:, k0:k1] = panel_t.T
        panel = panel_t.T
        for j0 in range(k1, size, block_size):
            j1 = min(j0 + block_size, size)
            interrupt.check(should_stop, "cholesky")
            # Lower part of A22 −= L21 L21ᵀ, one column chunk at a time.
            matrix[j0:, j0:j1] -= panel[j0 - k1 :] @ panel_t[:, j0 - k1 : j1 - k1]
    return True


def inverse_operator(factor):
    """v ↦ (L Lᵀ)⁻¹ v for the lower-triangular factor returned in place by cholesky_in_place.

    Two triangular solves, 2N² flops, reading only the lower triangle.
    """

    def apply(vector):
        y = scipy.linalg.solve_triangular(factor, vector, lower=True, check_finite=False)
        return scipy.linalg.solve_triangular(factor, y, lower=True, trans="T", check_finite=False)

    return apply
