"""Tests of lplr_tf.hessian against closed-form and dense Hessians."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lplr_tf import hessian
from lplr_tf.ntk import cache


def linear_problem(dtype="float32", n=12, d=3, outputs=2, seed=0):
    """A Dense model (kernel + bias) and data; returns model, x, y and the exact Hessian.

    For f(x) = xW + b the loss Hessian is kron([X, 1]ᵀ[X, 1] / n, I_O) in the layout
    [kernel (row-major, d·O entries), bias (O entries)].
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    y = rng.standard_normal((n, outputs)).astype(dtype)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((d,), dtype=dtype), keras.layers.Dense(outputs, dtype=dtype)]
    )
    augmented = np.concatenate([x.astype(np.float64), np.ones((n, 1))], axis=1)
    exact = np.kron(augmented.T @ augmented / n, np.eye(outputs))
    return model, x, y, exact


def test_flatten_unflatten_round_trip():
    shapes = [(3, 2), (2,), ()]
    vector = np.arange(9, dtype=np.float64)
    parts = hessian.unflatten(vector, shapes)
    assert [p.shape for p in parts] == shapes
    np.testing.assert_array_equal(hessian.flatten(parts), vector)
    with pytest.raises(ValueError, match="length 8"):
        hessian.unflatten(vector[:-1], shapes)


@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_hessian_vector_product_matches_closed_form(dtype, rtol):
    model, x, y, exact = linear_problem(dtype)
    rng = np.random.default_rng(1)
    for _ in range(3):
        vector = rng.standard_normal(exact.shape[0])
        product = hessian.hessian_vector_product(model, x, y, vector)
        np.testing.assert_allclose(
            product, exact @ vector, rtol=rtol, atol=rtol * np.abs(exact @ vector).max()
        )


def test_sharpness_is_top_eigenvalue_and_does_not_retrace():
    model, x, y, exact = linear_problem("float32")
    top = np.linalg.eigvalsh(exact).max()
    assert hessian.sharpness(model, x, y, num_iterations=20) == pytest.approx(top, rel=1e-4)
    product = hessian._cached_product(model)
    traces = product.tracing_count
    # A parameter update does not change the Hessian of a linear model, nor retrace.
    model.layers[0].kernel.assign(model.layers[0].kernel * 2.0)
    assert hessian.sharpness(model, x, y, seed=3) == pytest.approx(top, rel=1e-4)
    assert hessian._cached_product(model) is product
    assert product.tracing_count == traces == 1


def test_nonlinear_model_hvp_is_symmetric_and_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3))
    y = rng.standard_normal((8, 1))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="float64"),
            keras.layers.Dense(4, activation="tanh", dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    dim = hessian.flatten(model.trainable_variables).shape[0]
    basis = np.eye(dim)
    matrix = np.stack([hessian.hessian_vector_product(model, x, y, e) for e in basis])
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-10)
    # Finite differences of the gradient along a random direction.
    direction = rng.standard_normal(dim)
    theta = hessian.flatten(model.trainable_variables)

    def gradient_at(params):
        for variable, value in zip(
            model.trainable_variables,
            hessian.unflatten(params, [v.shape for v in model.trainable_variables]),
        ):
            variable.assign(value)
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum((model(x) - y) ** 2) / 8
        return hessian.flatten(tape.gradient(loss, model.trainable_variables))

    step = 1e-6
    finite = gradient_at(theta + step * direction) - gradient_at(theta - step * direction)
    finite /= 2 * step
    gradient_at(theta)
    np.testing.assert_allclose(matrix @ direction, finite, rtol=1e-5, atol=1e-7)
    assert hessian.sharpness(model, x, y, num_iterations=dim) == pytest.approx(
        np.linalg.eigvalsh(matrix).max(), rel=1e-8
    )


def tanh_problem(seed=0):
    """A small tanh network (P = 32), data, and its dense Hessian from P products."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    y = rng.standard_normal((10, 2)).astype(np.float32)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(2),
        ]
    )
    dim = hessian.flatten(model.trainable_variables).shape[0]
    matrix = np.stack([hessian.hessian_vector_product(model, x, y, e) for e in np.eye(dim)])
    return model, x, y, 0.5 * (matrix + matrix.T)


@pytest.mark.parametrize(
    "jit_compile, dtype, tolerance, rel",
    [(False, "float64", 1e-7, 1e-6), (True, "float64", 1e-7, 1e-6), (False, "float32", 1e-5, 1e-4)],
)
def test_compiled_sharpness_is_the_top_eigenvalue_of_the_dense_hessian(
    jit_compile, dtype, tolerance, rel
):
    model, x, y, matrix = tanh_problem()
    top = np.linalg.eigvalsh(matrix)[-1]
    result = hessian.measure_sharpness(
        model, x, y, tolerance=tolerance, jit_compile=jit_compile, krylov_dtype=dtype
    )
    assert result.value == pytest.approx(top, rel=rel)
    assert result.converged and result.iterations < matrix.shape[0]
    assert result.value == pytest.approx(hessian.sharpness(model, x, y), rel=1e-4)


def test_warm_start_needs_fewer_products_and_does_not_retrace():
    model, x, y, matrix = tanh_problem(seed=1)
    cold = hessian.measure_sharpness(model, x, y, warm_start=False)
    first = hessian.measure_sharpness(model, x, y)  # warm start from here on
    solver = next(
        v for k, v in cache.cached_entries(model).items() if k[:2] == ("hessian", "sharpness")
    )
    traces = solver.tracing_count
    kernel = model.layers[0].kernel
    kernel.assign(kernel * 1.01)  # a training step's worth of change
    moved = np.linalg.eigvalsh(
        np.stack([hessian.hessian_vector_product(model, x, y, e) for e in np.eye(len(matrix))])
    )[-1]
    warm = hessian.measure_sharpness(model, x, y)
    assert warm.value == pytest.approx(moved, rel=1e-4)
    assert warm.iterations < cold.iterations and first.iterations == cold.iterations
    assert solver.tracing_count == traces == 1  # cold and warm calls share one trace
    # warm_start=False is a fixed random start: reproducible, and it leaves the state alone.
    again = hessian.measure_sharpness(model, x, y, warm_start=False)
    assert again.iterations == hessian.measure_sharpness(model, x, y, warm_start=False).iterations


def test_unconverged_sharpness_says_so():
    model, x, y, matrix = tanh_problem(seed=2)
    result = hessian.measure_sharpness(model, x, y, max_iterations=2, tolerance=1e-12)
    assert result.iterations == 2 and not result.converged
    assert result.value <= np.linalg.eigvalsh(matrix)[-1] * (1 + 1e-6)


def test_bad_tolerance_names_the_value():
    model, x, y, _ = tanh_problem()
    with pytest.raises(ValueError, match="tolerance=0"):
        hessian.measure_sharpness(model, x, y, tolerance=0)
