"""The kernel-regime (linearized) residual r_t^lin = (I − ηK₀)^t r₀ at arbitrary steps.

Full-batch GD on the linearized model f_lin(θ) = f(θ₀) + J₀(θ − θ₀) with the squared loss
L = 1/(2n)‖r‖² moves the residual by r_{t+1} = r_t − η K₀ r_t, K₀ = Θ₀/n (example-major,
the "full" kernel). With K₀ = V diag(λ) Vᵀ (one float64 eigendecomposition):

    r_t^lin = V diag((1 − ηλ)^t) Vᵀ r₀,

so any set of steps costs one O(N³) eigendecomposition (done once, at the first probe) and
an O(N²) product per step. The probe reports dev_t = ‖r_t − r_t^lin‖ / ‖r₀‖ (residuals, not
losses: both losses become tiny late in a run and their ratio blows up; the residual
deviation does not). Departure from the kernel regime: dev_t > 0.1.

Cost: the eigendecomposition (`eigh` with vectors, ~9N³ flops) holds three N² float64
arrays at its peak and is one LAPACK call (not interruptible): seconds at N = 2,000,
minutes at N = 18,000. Compute it once per run and keep only the residuals at the logged
steps (`linearized_residuals`), or its `LinearizedDynamics` while steps are open-ended.
"""

import numpy as np
import scipy.linalg

_CALLER = "linearized_residuals"


class LinearizedDynamics:
    """The eigendecomposition of K₀ and r₀, from which r_t^lin follows for any t.

    Args:
      kernel0: Θ₀ (or K₀), (N, N), example-major ("full" mode), any float dtype.
      residual0: r₀ = vec(f(X) − Y) at θ₀, (N,) or (n, O) (flattened example-major).
      learning_rate: The GD step size η > 0.
      scale: Multiplies kernel0 first (1/n turns Θ₀ into K₀ = Θ₀/n).

    Attributes:
      eigenvalues: float64 (N,), ascending, of K₀.
      coefficients: float64 (N,), Vᵀ r₀.
    """

    def __init__(self, kernel0, residual0, learning_rate, *, scale=1.0):
        matrix = np.array(kernel0, dtype=np.float64)  # a copy: eigh overwrites it
        residual0 = np.asarray(residual0, dtype=np.float64).reshape(-1)
        if (
            matrix.ndim != 2
            or matrix.shape[0] != matrix.shape[1]
            or (matrix.shape[0] != residual0.shape[0])
        ):
            raise ValueError(
                f"{_CALLER}: kernel0 shape {matrix.shape} and residual0 of {residual0.shape[0]}"
                " entries; expected (N, N) and N = n·O entries. Pass the full (example-major) "
                "kernel and vec(f(X) − Y) flattened example by example."
            )
        if not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(
                f"{_CALLER}: learning_rate={learning_rate!r}; expected the positive GD step."
            )
        matrix *= float(scale)
        matrix += matrix.T
        matrix *= 0.5
        self.eigenvalues, self._vectors = scipy.linalg.eigh(
            matrix, overwrite_a=True, check_finite=False, driver="evd"
        )
        self.learning_rate = float(learning_rate)
        self.coefficients = self._vectors.T @ residual0
        self.residual0_norm = float(np.linalg.norm(residual0))

    def residuals(self, steps):
        """r_t^lin for each t in steps: float64 (len(steps), N); inf where it overflows."""
        steps = np.asarray(list(steps), dtype=np.int64).reshape(-1)
        if steps.size and steps.min() < 0:
            raise ValueError(
                f"{_CALLER}: steps contain {steps.min()}; expected non-negative integers."
            )
        factors = 1.0 - self.learning_rate * self.eigenvalues
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # η·λ > 2 diverges
            powers = np.power(factors[None, :], steps[:, None].astype(np.float64))
            return (powers * self.coefficients[None, :]) @ self._vectors.T

    def deviation(self, step, residual):
        """dev_t = ‖r_t − r_t^lin‖ / ‖r₀‖ for the observed residual r_t at `step`."""
        residual = np.asarray(residual, dtype=np.float64).reshape(-1)
        linear = self.residuals([step])[0]
        if self.residual0_norm == 0:
            return 0.0 if np.array_equal(residual, linear) else float("inf")
        return float(np.linalg.norm(residual - linear) / self.residual0_norm)


def linearized_residuals(kernel0, residual0, learning_rate, steps, *, scale=1.0):
    """r_t^lin = (I − ηK₀)^t r₀ at the given steps, from one eigendecomposition of K₀.

    Args:
      kernel0: Θ₀ or K₀, (N, N) example-major ("full" mode: row i·O + o is output o of
        example i).
      residual0: r₀ = vec(f(X) − Y), (N,) or (n, O), in the same example-major order.
      learning_rate: The GD step size η.
      steps: Iterable of non-negative integer steps t.
      scale: Multiplies kernel0 first (1/n for Θ₀ → K₀).

    Returns:
      float64 (len(steps), N), example-major like r₀ (reshape to (len(steps), n, O)).
    """
    return LinearizedDynamics(kernel0, residual0, learning_rate, scale=scale).residuals(steps)
