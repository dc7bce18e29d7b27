"""Tests of lplr_tf.data: loaders, target conventions, offline errors, batch pipelines."""

import functools
import os
import time
from unittest import mock

import gin
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from tfds_fakes import mock_prepared

from lplr_tf import data, image_sources

# ----------------------------------------------------------------------------- digits


def _sklearn_labels(ds, classes):
    """sklearn labels of ds's rows, for ds drawn with n = all examples of `classes`.

    With the whole class subset selected, the standardization statistics are those of
    all these sklearn rows, so each returned row is matched to its sklearn row exactly.
    """
    bunch = load_digits()
    keep = np.isin(bunch.target, classes)
    raw, labels = bunch.data[keep], bunch.target[keep]
    std = raw.std(0)
    expected = (raw - raw.mean(0)) / np.where(std > 0, std, 1.0)
    flat = ds.x.reshape(ds.n, -1)
    dist = ((flat[:, None, :] - expected[None, :, :]) ** 2).sum(-1)
    match = dist.argmin(1)
    assert np.allclose(dist[np.arange(ds.n), match], 0.0, atol=1e-6)
    return labels[match]


def test_digits_binary_shapes_and_pm1_mapping_against_sklearn():
    available = int(np.isin(load_digits().target, (3, 7)).sum())
    ds = data.digits(n=available, classes=(3, 7), seed=1)
    assert ds.x.shape == (available, 64) and ds.y.shape == (available, 1)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.float32
    assert (ds.n, ds.input_shape, ds.output_dim) == (available, (64,), 1)
    assert ds.name == "digits(3 vs 7)"
    labels = _sklearn_labels(ds, (3, 7))
    assert set(np.unique(ds.y)) == {-1.0, 1.0}
    np.testing.assert_array_equal(ds.y[:, 0], np.where(labels == 3, -1.0, 1.0))


def test_digits_multiclass_one_hot_in_given_order():
    classes = (9, 2, 5)
    available = int(np.isin(load_digits().target, classes).sum())
    ds = data.digits(n=available, classes=classes)
    assert ds.y.shape == (available, 3)
    np.testing.assert_array_equal(ds.y.sum(1), 1.0)
    assert set(np.unique(ds.y)) == {0.0, 1.0}
    labels = _sklearn_labels(ds, classes)
    np.testing.assert_array_equal(np.asarray(classes)[ds.y.argmax(1)], labels)
    pm1 = data.digits(n=20, classes=(0, 1), targets="one_hot")
    assert pm1.y.shape == (20, 2)


def test_digits_standardized_per_feature():
    ds = data.digits(n=150, classes=(0, 1), seed=0)
    assert not np.isnan(ds.x).any()
    std = ds.x.std(0)
    varying = std > 0
    assert varying.sum() > 30 and (~varying).sum() > 0  # digits has blank border pixels
    np.testing.assert_allclose(ds.x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(std[varying], 1.0, rtol=1e-4)
    np.testing.assert_array_equal(ds.x[:, ~varying], 0.0)


def test_digits_seeded_subset_and_image_layout():
    a = data.digits(n=100, seed=3)
    b = data.digits(n=100, seed=3)
    c = data.digits(n=100, seed=4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    img = data.digits(n=100, seed=3, image=True)
    assert img.x.shape == (100, 8, 8, 1) and img.input_shape == (8, 8, 1)
    np.testing.assert_array_equal(img.x.reshape(100, 64), a.x)


def test_digits_reads_gin_bindings():
    gin.parse_config(["data.digits.n = 30", "digits.classes = (4, 6, 8)"])
    ds = data.digits()
    assert ds.x.shape == (30, 64) and ds.y.shape == (30, 3)


# ---------------------------------------------------------------------- teacher-student


def test_teacher_student_sphere_shapes_and_determinism():
    ds = data.teacher_student(n=50, input_dim=7, output_dim=3, teacher_width=20, seed=2)
    assert ds.x.shape == (50, 7) and ds.y.shape == (50, 3) and ds.x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ds.x, axis=1), 1.0, rtol=1e-6)
    assert 0.1 < ds.y.std() < 3.0
    again = data.teacher_student(n=50, input_dim=7, output_dim=3, teacher_width=20, seed=2)
    np.testing.assert_array_equal(ds.x, again.x)
    np.testing.assert_array_equal(ds.y, again.y)
    other = data.teacher_student(n=50, input_dim=7, output_dim=3, teacher_width=20, seed=3)
    assert not np.allclose(ds.x, other.x) and not np.allclose(ds.y, other.y)
    prefix = data.teacher_student(n=10, input_dim=7, output_dim=3, teacher_width=20, seed=2)
    np.testing.assert_array_equal(prefix.y, ds.y[:10])  # same teacher, nested inputs


# ------------------------------------------------------------- mnist / cifar10 (mocked)


def _mock_label_count(name, classes, num_examples):
    with mock_prepared(num_examples=num_examples):
        ds = tfds.builder(name).as_dataset(split="train")
        labels = np.array([ex["label"] for ex in tfds.as_numpy(ds)])
    return int(np.isin(labels, classes).sum())


def test_mnist_under_mock_data(tmp_path):
    available = _mock_label_count("mnist", (0, 1), 80)
    assert available >= 6
    tfds_mnist = functools.partial(data.mnist, source="tfds", data_dir=str(tmp_path))
    with mock_prepared(num_examples=80) as data_dir:
        ds = tfds_mnist(n=available, classes=(0, 1), seed=0)
        assert ds.x.shape == (available, 784) and ds.y.shape == (available, 1)
        assert ds.name == "mnist(0 vs 1, tfds train)"
        assert ds.source.startswith("MNIST train split from tensorflow-datasets, prepared in ")
        assert data_dir in ds.source  # the directory actually read (the mock's)
        assert set(np.unique(ds.y)) <= {-1.0, 1.0}
        assert abs(ds.x.mean()) < 1e-5 and abs(ds.x.std() - 1.0) < 1e-4
        a = tfds_mnist(n=5, seed=7, flatten=False)
        b = tfds_mnist(n=5, seed=7, flatten=False)
        c = tfds_mnist(n=5, seed=8, flatten=False)
        assert a.x.shape == (5, 28, 28, 1)
        np.testing.assert_array_equal(a.x, b.x)
        assert not np.array_equal(a.x, c.x)
        with pytest.raises(ValueError, match=rf"n={available + 1} but only {available} "):
            tfds_mnist(n=available + 1)
        multi = tfds_mnist(n=6, classes=(2, 3, 4), split="test")
        assert multi.y.shape == (6, 3) and multi.name == "mnist(2,3,4, tfds test)"
        np.testing.assert_array_equal(multi.y.sum(1), 1.0)


def test_cifar10_under_mock_data(tmp_path):
    classes = (3, 5)
    available = _mock_label_count("cifar10", classes, 60)
    assert available >= 4
    with mock_prepared(num_examples=60):
        ds = data.cifar10(n=available, classes=classes, data_dir=str(tmp_path))
        assert ds.x.shape == (available, 32, 32, 3) and ds.y.shape == (available, 1)
        assert ds.name == "cifar10(3 vs 5, tfds train)"
        assert ds.source.startswith("CIFAR-10 train split from tensorflow-datasets")
        np.testing.assert_allclose(ds.x.mean((0, 1, 2)), 0.0, atol=1e-5)
        np.testing.assert_allclose(ds.x.std((0, 1, 2)), 1.0, rtol=1e-4)
        with pytest.raises(ValueError, match=rf"only {available} examples"):
            data.cifar10(n=available + 1, classes=classes, data_dir=str(tmp_path))
        flat = data.cifar10(n=4, classes=classes, data_dir=str(tmp_path), flatten=True, seed=1)
        again = data.cifar10(n=4, classes=classes, data_dir=str(tmp_path), flatten=True, seed=1)
        assert flat.x.shape == (4, 3072)
        np.testing.assert_array_equal(flat.x, again.x)


# ------------------------------------------------------- mnist from real prepared files


@pytest.fixture(scope="module")
def prepared_mnist(tmp_path_factory):
    """A genuinely prepared tfds MNIST (tiny), built offline from fake IDX files.

    Image i is constant with pixel value 20 * label, so labels can be read off x.
    """
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    root = tmp_path_factory.mktemp("mnist")
    files = {}
    for split, count in [("train", 40), ("test", 20)]:
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = np.repeat(20 * labels, 28 * 28).astype(np.uint8)
        files[f"{split}_data"] = str(root / f"{split}_data")
        files[f"{split}_labels"] = str(root / f"{split}_labels")
        (root / f"{split}_data").write_bytes(b"\0" * 16 + images.tobytes())
        (root / f"{split}_labels").write_bytes(b"\0" * 8 + labels.tobytes())
    data_dir = str(root / "tfds")
    with (
        mock.patch.object(tfds_mnist, "_TRAIN_EXAMPLES", 40),
        mock.patch.object(tfds_mnist, "_TEST_EXAMPLES", 20),
        mock.patch.object(
            tfds.download.DownloadManager, "download_and_extract", lambda self, urls: files
        ),
    ):
        tfds.builder("mnist", data_dir=data_dir).download_and_prepare()
    return data_dir


def test_mnist_from_prepared_data_dir(prepared_mnist):
    ds = data.mnist(n=8, classes=(7, 2), source="tfds", data_dir=prepared_mnist)  # 4 of each
    assert ds.x.shape == (8, 784)
    assert ds.source == (
        f"MNIST train split from tensorflow-datasets, prepared in {prepared_mnist}/mnist/3.0.1"
    )
    high = ds.x.mean(1) > 0  # label 7 images are brighter than label 2 images
    assert high.sum() == 4
    np.testing.assert_array_equal(ds.y[:, 0], np.where(high, -1.0, 1.0))  # 7 -> -1, 2 -> +1
    with pytest.raises(ValueError, match=r"only 8 examples"):
        data.mnist(n=9, classes=(7, 2), source="tfds", data_dir=prepared_mnist)
    test = data.mnist(n=4, classes=(0, 1), source="tfds", data_dir=prepared_mnist, split="test")
    assert test.x.shape == (4, 784)


# ------------------------------------------------------------------- the offline error


@pytest.mark.parametrize(
    "name, loader, fix",
    [
        ("mnist", functools.partial(data.mnist, source="tfds"), "data.mnist.source = 'tfds' and "),
        ("cifar10", data.cifar10, "bindings "),
    ],
)
def test_missing_tfds_data_fails_fast_with_instructions(tmp_path, name, loader, fix):
    empty = str(tmp_path / "empty")
    start = time.monotonic()
    with pytest.raises(image_sources.DatasetNotAvailableError) as info:
        loader(n=10, data_dir=empty)
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert empty in message and f"'{name}'" in message
    assert "download_and_prepare()" in message
    assert f"{fix}data.{name}.data_dir = '{empty}'" in message
    assert not os.path.exists(os.path.join(empty, name, "3.0.1", "dataset_info.json"))


# -------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (
            dict(classes=(0, 12)),
            r"unknown class ids \[12\] in classes=\(0, 12\); expected .*0\.\.9",
        ),
        (dict(classes=(3, 3)), r"duplicate classes in classes=\(3, 3\)"),
        (dict(classes=(3,)), r"classes=\(3,\), fewer than 2 classes"),
        (dict(classes=3), r"classes must be a sequence .* got 3"),
        (dict(n=0), r"data.digits.n = 0; expected an integer >= 1"),
        (
            dict(n=400, classes=(0, 1)),
            r"n=400 but only 360 examples of classes \(0, 1\) are "
            r"available; pass n <= 360",
        ),
        (
            dict(targets="pm2"),
            r"data.digits.targets = 'pm2'; expected one of 'auto', 'pm1', 'one_hot'",
        ),
        (dict(classes=(0, 1, 2), targets="pm1"), r"targets='pm1' needs exactly 2 classes"),
        (dict(seed=-1), r"data.digits.seed = -1; expected an integer >= 0"),
        (dict(image="yes"), r"data.digits.image = 'yes'; expected True or False"),
    ],
)
def test_digits_validation_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.digits(**kwargs)


def test_tfds_loader_validation_before_touching_data(tmp_path):
    empty = str(tmp_path)  # not prepared: a check that read data would fail differently
    with pytest.raises(
        ValueError, match=r"data.mnist.split = 'validation'; expected one of 'train', 'test'"
    ):
        data.mnist(split="validation", source="tfds", data_dir=empty)
    with pytest.raises(ValueError, match=r"cifar10: unknown class ids \[10\]"):
        data.cifar10(classes=(0, 10), data_dir=empty)
    with pytest.raises(ValueError, match=r"data.mnist.targets = 'onehot'; expected one of"):
        data.mnist(targets="onehot", source="tfds", data_dir=empty)
    with pytest.raises(ValueError, match=r"data.cifar10.flatten = 1; expected True or False"):
        data.cifar10(flatten=1, data_dir=empty)


def test_dataset_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match=r"y of shape \(4,\).*Reshape y to 2-D"):
        data.Dataset("bad", np.zeros((4, 2), np.float32), np.zeros(4, np.float32))


# ---------------------------------------------------------------------- batch pipelines


def _indexed(n):
    ids = np.arange(n, dtype=np.float32)[:, None]
    return data.Dataset("ids", np.repeat(ids, 3, axis=1), ids)


def _epoch(pipeline_iterable):
    batches = [(x.numpy(), y.numpy()) for x, y in pipeline_iterable]
    for x, y in batches:
        np.testing.assert_array_equal(x[:, 0], y[:, 0])  # pairs stay together
    return [len(y) for _, y in batches], np.concatenate([y[:, 0] for _, y in batches])


def test_batch_pipeline_epochs_cover_once_reshuffle_and_are_seeded():
    ds = _indexed(10)
    pipeline = data.batch_pipeline(ds, batch_size=4, seed=5)
    sizes, first = _epoch(pipeline)
    _, second = _epoch(pipeline)
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(np.sort(first), np.arange(10))
    np.testing.assert_array_equal(np.sort(second), np.arange(10))
    assert not np.array_equal(first, second)
    replay = data.batch_pipeline(ds, batch_size=4, seed=5)
    np.testing.assert_array_equal(_epoch(replay)[1], first)
    np.testing.assert_array_equal(_epoch(replay)[1], second)
    other = data.batch_pipeline(ds, batch_size=4, seed=6)
    assert not np.array_equal(_epoch(other)[1], first)
