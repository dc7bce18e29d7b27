"""Independent references for the tests: a one-hidden-layer tanh net in float64.

Nothing here uses lplr_tf's probes, NTK engine or Hessian code: the Jacobian is written out
by hand in NumPy (and checked against `tf.GradientTape.jacobian` in test_references.py), the
Hessian is dense (TensorFlow's Jacobian of the gradient, float64), eigenvalues come from
NumPy, gradient descent is a loop. Conventions of docs/theory.md: L = 1/(2n) Σ‖f(x_i) − y_i‖²,
the residual r = vec(f(X) − Y) is example-major (entry i·O + o), J = ∂r/∂θ is (nO × P),
K = J Jᵀ / n, ∇L = Jᵀr / n, and θ is the trainable variables flattened in order
(`model.trainable_variables`, row-major): W₁ (d, w), b₁ (w,), W₂ (w, O), b₂ (O,).
"""

import numpy as np
import tensorflow as tf

from lplr_tf.models.fc import build_model


def tanh_model(input_dim, output_dim, width=8, seed=3):
    """The Keras net under test: x → tanh(x W₁ + b₁) W₂ + b₂ (standard parameterization)."""
    return build_model(
        (input_dim,),
        output_dim,
        width=width,
        depth=1,
        activation="tanh",
        parameterization="standard",
        seed=seed,
    )


def flat_weights(model):
    """θ of a Keras model as a float64 vector (P,)."""
    return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in model.get_weights()])


def operator_norm(matrix):
    """‖A‖₂, the largest singular value."""
    return float(np.linalg.norm(matrix, 2))


class TanhNet:
    """f(x; θ) = tanh(x W₁ + b₁) W₂ + b₂ on a fixed training set, in float64.

    Args:
      x: Training inputs (n, d).
      y: Training targets (n, O).
      width: Hidden units w.
    """

    def __init__(self, x, y, width):
        self.x = np.asarray(x, np.float64)
        self.y = np.asarray(y, np.float64)
        self.n, self.input_dim = self.x.shape
        self.num_outputs = self.y.shape[1]
        self.width = width
        d, w, o = self.input_dim, width, self.num_outputs
        self.shapes = [(d, w), (w,), (w, o), (o,)]
        self.num_parameters = d * w + w + w * o + o
        self._hessian = tf.function(
            self._dense_hessian,
            input_signature=[tf.TensorSpec([self.num_parameters], tf.float64)],
        )

    def split(self, theta):
        """(W₁, b₁, W₂, b₂) views of θ."""
        parts, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            parts.append(theta[start : start + size].reshape(shape))
            start += size
        return parts

    def _data(self, x, y):
        x = self.x if x is None else np.asarray(x, np.float64)
        y = self.y if y is None else np.asarray(y, np.float64)
        return x, y

    def outputs(self, theta, x=None):
        """f(X) (m, O) on the training inputs, or on other inputs x (m, d)."""
        x, _ = self._data(x, None)
        w1, b1, w2, b2 = self.split(np.asarray(theta, np.float64))
        return np.tanh(x @ w1 + b1) @ w2 + b2

    def residual(self, theta, x=None, y=None):
        """r = vec(f(X) − Y), example-major (m·O,)."""
        x, y = self._data(x, y)
        return (self.outputs(theta, x) - y).reshape(-1)

    def loss(self, theta, x=None, y=None):
        """L = ‖f(X) − Y‖² / (2m) on the training set, or on (x, y) with m examples."""
        x, y = self._data(x, y)
        residual = self.residual(theta, x, y)
        return 0.5 * float(residual @ residual) / x.shape[0]

    def jacobian(self, theta, x=None):
        """J = ∂ vec f(X) / ∂θ, (m·O, P), rows example-major, columns in θ's layout."""
        x, _ = self._data(x, None)
        w1, b1, w2, _ = self.split(np.asarray(theta, np.float64))
        hidden = np.tanh(x @ w1 + b1)  # (m, w)
        slope = 1.0 - hidden**2  # tanh' of the pre-activations
        eye = np.eye(self.num_outputs)
        m, o = x.shape[0], self.num_outputs
        blocks = [
            np.einsum("ia,ik,ko->ioak", x, slope, w2).reshape(m * o, -1),  # W₁
            np.einsum("ik,ko->iok", slope, w2).reshape(m * o, -1),  # b₁
            np.einsum("ik,op->iokp", hidden, eye).reshape(m * o, -1),  # W₂
            np.broadcast_to(eye, (m, o, o)).reshape(m * o, -1),  # b₂
        ]
        return np.concatenate(blocks, axis=1)

    def gradient(self, theta, x=None, y=None):
        """∇L = Jᵀr / m (P,) on the training set, or on (x, y)."""
        x, y = self._data(x, y)
        return self.jacobian(theta, x).T @ self.residual(theta, x, y) / x.shape[0]

    def kernel(self, theta, x=None):
        """K = J Jᵀ / m, (m·O, m·O), example-major."""
        x, _ = self._data(x, None)
        jacobian = self.jacobian(theta, x)
        return jacobian @ jacobian.T / x.shape[0]

    def _dense_hessian(self, theta):
        x, y = tf.constant(self.x), tf.constant(self.y)
        with tf.GradientTape() as outer:
            outer.watch(theta)
            with tf.GradientTape() as inner:
                inner.watch(theta)
                sizes = [int(np.prod(shape)) for shape in self.shapes]
                w1, b1, w2, b2 = (
                    tf.reshape(part, shape)
                    for part, shape in zip(tf.split(theta, sizes), self.shapes)
                )
                outputs = tf.tanh(x @ w1 + b1) @ w2 + b2
                loss = 0.5 * tf.reduce_sum((outputs - y) ** 2) / self.n
            gradient = inner.gradient(loss, theta)
        return outer.jacobian(gradient, theta)

    def hessian(self, theta):
        """∇²L (P, P), dense, on the training set."""
        return self._hessian(tf.constant(np.asarray(theta, np.float64))).numpy()

    def sharpness(self, theta):
        """β = λ_max(∇²L)."""
        return float(np.linalg.eigvalsh(self.hessian(theta))[-1])

    def gradient_descent(self, theta0, learning_rate, num_steps):
        """[θ_0, ..., θ_T] of full-batch GD θ ← θ − η∇L."""
        thetas = [np.asarray(theta0, np.float64)]
        for _ in range(num_steps):
            thetas.append(thetas[-1] - learning_rate * self.gradient(thetas[-1]))
        return thetas
