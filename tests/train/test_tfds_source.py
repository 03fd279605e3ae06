"""The TFDS source, with ``tfds.builder`` replaced by an in-memory fake (no files, no network)."""
import types

import numpy as np
import pytest

from jaxrobust.data import load_split
from jaxrobust.data.sources import read_records
from jaxrobust.errors import DataError


class _FakeSource:

  def __init__(self, n, shape=(32, 32, 3), num_classes=100):
    rng = np.random.default_rng(0)
    self.items = [{"image": rng.integers(0, 256, shape, dtype=np.uint8),
                   "label": int(rng.integers(0, num_classes))} for _ in range(n)]

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


class _FakeBuilder:
  """What load_tfds uses of a prepared ``tfds.core.DatasetBuilder``."""

  def __init__(self, source, num_classes=100, channels=3):
    self.source = source
    self.splits = []
    self.data_dir = "/nonexistent"
    self.info = types.SimpleNamespace(features={
        "label": types.SimpleNamespace(num_classes=num_classes),
        "image": types.SimpleNamespace(shape=(None, None, channels))})

  def is_prepared(self):
    return True

  def as_data_source(self, split):
    self.splits.append(split)
    return self.source


def test_tfds_source_reads_items(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  fake = _FakeBuilder(_FakeSource(5))
  calls = {}

  def builder(name, data_dir=None, file_format=None):
    calls.update(name=name, data_dir=data_dir, file_format=file_format)
    return fake

  monkeypatch.setattr(tfds, "builder", builder)
  ds = load_split("cifar100", "train", source="tfds", data_dir="/some/dir")
  assert calls == {"name": "cifar100", "data_dir": "/some/dir", "file_format": "array_record"}
  assert fake.splits == ["train"]
  assert ds.images.shape == (5, 32, 32, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.images[3], fake.source.items[3]["image"])
  assert ds.labels.tolist() == [it["label"] for it in fake.source.items]


def test_read_records_chunks_equal_single_reads():
  src = _FakeSource(7, shape=(4, 4, 1), num_classes=10)

  class Batched(_FakeSource):
    def __init__(self):  # pylint: disable=super-init-not-called
      self.items, self.calls = src.items, []

    def __getitems__(self, keys):
      self.calls.append(list(keys))
      return [self.items[k] for k in keys]

  batched = Batched()
  images, labels = read_records(batched, 7, chunk=3)
  assert batched.calls == [[0, 1, 2], [3, 4, 5], [6]]
  ref_images, ref_labels = read_records(src, 7)
  np.testing.assert_array_equal(images, np.stack([it["image"] for it in src.items]))
  np.testing.assert_array_equal(images, ref_images)
  np.testing.assert_array_equal(labels, ref_labels)


def test_tfds_metadata_must_match_dataset_info(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds, "builder", lambda *a, **k: _FakeBuilder(_FakeSource(3), 10))
  with pytest.raises(DataError, match="cifar100: TFDS's metadata has 10 classes"):
    load_split("cifar100", "train", source="tfds")


def test_tfds_failure_is_a_data_error(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")

  def builder(*args, **kwargs):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds, "builder", builder)
  with pytest.raises(DataError, match="TFDS could not provide svhn_cropped:test.*numpy"):
    load_split("svhn_cropped", "test", source="tfds")
  with pytest.raises(DataError, match="unknown TFDS dataset"):
    load_split("places365_small", "test", source="tfds")
  with pytest.raises(DataError, match="imagenette images vary in size; set config.data.image_size"):
    load_split("imagenette", "train", source="tfds")
