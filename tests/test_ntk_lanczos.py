"""Lanczos (host, compiled) and the blocked in-place Cholesky against NumPy/SciPy."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from lplr_tf.ntk import ProbeInterrupted, cholesky, lanczos


def symmetric(eigenvalues, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    matrix = (q * np.asarray(eigenvalues, dtype=np.float64)) @ q.T
    return 0.5 * (matrix + matrix.T)


@pytest.mark.parametrize(
    "which, expected",
    [("largest", 3.0), ("smallest", -2.5), ("largest_magnitude", 3.0)],
)
def test_host_lanczos_converges_to_the_selected_extreme(which, expected):
    eigenvalues = np.concatenate([[-2.5], np.linspace(-1.0, 1.0, 150), [3.0]])
    matrix = symmetric(eigenvalues, seed=0)
    start = np.random.default_rng(1).standard_normal(matrix.shape[0])
    result = lanczos.lanczos(
        lambda v: matrix @ v, start, which=which, tolerance=1e-10, return_vector=True
    )
    assert result.converged and result.iterations < 60
    assert result.value == pytest.approx(expected, rel=1e-10)
    assert result.ritz_min >= -2.5 - 1e-12 and result.ritz_max <= 3.0 + 1e-12
    # The Ritz vector is the eigenvector: its residual is at the tolerance level.
    residual = matrix @ result.vector - result.value * result.vector
    assert np.linalg.norm(residual) < 1e-4
    # The largest magnitude of an operator whose negative end dominates.
    flipped = lanczos.lanczos(lambda v: -matrix @ v, start, which="largest_magnitude")
    assert flipped.value == pytest.approx(-3.0, rel=1e-8)


def test_warm_start_from_the_eigenvector_stops_at_once():
    matrix = symmetric(np.linspace(0.1, 2.0, 80), seed=2)
    top = np.linalg.eigh(matrix)[1][:, -1]
    result = lanczos.lanczos(lambda v: matrix @ v, top, tolerance=1e-10)
    assert result.iterations == 1 and result.converged
    assert result.value == pytest.approx(2.0, rel=1e-12)


def test_unconverged_solve_says_so():
    matrix = symmetric(np.geomspace(1e-3, 1.0, 200), seed=3)
    start = np.ones(200)
    result = lanczos.lanczos(lambda v: matrix @ v, start, which="smallest", max_iterations=5)
    assert result.iterations == 5 and not result.converged
    assert result.value > 1e-3 * 1.5  # far from λ_min, and reported as such


@pytest.mark.parametrize(
    "jit_compile, static_shapes", [(False, False), (False, True), (True, True)]
)
def test_compiled_lanczos_equals_the_host_iteration(jit_compile, static_shapes):
    matrix = symmetric(np.concatenate([[-0.7], np.linspace(0.0, 1.0, 38), [1.6]]), seed=4)
    start = np.random.default_rng(5).standard_normal(40)
    operator = tf.constant(matrix)

    @tf.function(jit_compile=jit_compile)
    def solve(start, which):
        return lanczos.lanczos_graph(
            lambda v: tf.linalg.matvec(operator, v),
            start,
            which=which,
            tolerance=1e-9,
            max_iterations=24,
            static_shapes=static_shapes,
        )

    for which, expected in (("largest", 1.6), ("smallest", -0.7)):
        host = lanczos.lanczos(
            lambda v: matrix @ v, start, which=which, tolerance=1e-9, max_iterations=24
        )
        graph = solve(tf.constant(start), which)
        assert int(graph["iterations"]) == host.iterations
        assert bool(graph["converged"]) and host.converged
        assert float(graph["value"]) == pytest.approx(expected, rel=1e-8)
        vector = graph["vector"].numpy()
        assert abs(vector @ matrix @ vector) == pytest.approx(abs(expected), rel=1e-8)


def test_fixed_count_reference_is_exact_with_a_full_krylov_space():
    eigenvalues = np.linspace(-1.0, 4.0, 12)
    matrix = symmetric(eigenvalues, seed=6)
    low, high = lanczos.lanczos_extreme_eigenvalues(lambda v: matrix @ v, 12, num_iterations=12)
    assert (low, high) == (pytest.approx(-1.0, abs=1e-10), pytest.approx(4.0, abs=1e-10))


@pytest.mark.parametrize("size, block", [(37, 8), (64, 16), (20, 64)])
def test_blocked_cholesky_in_place_equals_lapack(size, block):
    matrix = symmetric(np.geomspace(1e-4, 1.0, size), seed=size)
    work = matrix.copy()
    assert cholesky.cholesky_in_place(work, block_size=block)
    expected = scipy.linalg.cholesky(matrix, lower=True)
    np.testing.assert_allclose(np.tril(work), expected, atol=1e-12)
    solve = cholesky.inverse_operator(work)
    v = np.random.default_rng(0).standard_normal(size)
    np.testing.assert_allclose(matrix @ solve(v), v, atol=1e-8)


@pytest.mark.parametrize("block", [8, 64])  # blocked panels, and one in-place LAPACK call
def test_cholesky_failure_proves_an_eigenvalue_at_or_below_zero(block):
    matrix = symmetric(np.concatenate([[-1e-3], np.linspace(0.5, 1.0, 30)]), seed=7)
    assert not cholesky.cholesky_in_place(matrix.copy(), block_size=block)
    shifted = matrix + 2e-3 * np.eye(31)  # λ_min = 1e-3 > 0
    assert cholesky.cholesky_in_place(shifted, block_size=block)


def test_cholesky_stops_between_panels_when_asked():
    matrix = symmetric(np.linspace(1.0, 2.0, 64), seed=8)
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) >= 3

    with pytest.raises(ProbeInterrupted, match="cholesky"):
        cholesky.cholesky_in_place(matrix, block_size=8, should_stop=should_stop)
    assert len(polls) == 3  # control came back at the first poll that said stop


def test_cholesky_rejects_a_fortran_or_float32_array():
    with pytest.raises(ValueError, match="float32"):
        cholesky.cholesky_in_place(np.eye(3, dtype=np.float32))
