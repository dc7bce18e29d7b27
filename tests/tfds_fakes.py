"""Test helper: tensorflow-datasets mocked over a data_dir in which the datasets count as prepared.

`tfds.testing.mock_data` serves fake examples but leaves `builder.is_prepared()` false (the
mock's data_dir has no metadata), so `lplr_tf.image_sources.check_prepared` would refuse the
data as a real loader must. `mock_prepared` writes each dataset's metadata files
(dataset_info.json, features.json), what `is_prepared` checks, into a temporary data_dir and
mocks tfds over it: the loaders then run their real path on mock examples.
"""

import contextlib
import tempfile

import tensorflow_datasets as tfds


@contextlib.contextmanager
def mock_prepared(names=("mnist", "cifar10"), **mock_kwargs):
    """Context in which the tfds datasets `names` are "prepared" and serve mock examples.

    Args:
      names: tfds dataset names whose metadata is written.
      **mock_kwargs: Passed to `tfds.testing.mock_data`, e.g. num_examples=80 or
        as_dataset_fn=... (which then replaces the random examples).

    Yields:
      The temporary data_dir (the mock ignores the data_dir a loader passes).
    """
    with tempfile.TemporaryDirectory() as data_dir:
        for name in names:
            builder = tfds.builder(name, data_dir=data_dir)
            builder.data_path.mkdir(parents=True, exist_ok=True)
            builder.info.write_to_directory(builder.data_path)
        with tfds.testing.mock_data(data_dir=data_dir, **mock_kwargs):
            yield data_dir
