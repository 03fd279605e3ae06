"""The TFDS source, with ``tfds.data_source`` replaced by an in-memory fake."""
import numpy as np
import pytest

from jaxrobust.data import load_split
from jaxrobust.errors import DataError


class _FakeSource:

  def __init__(self, n):
    rng = np.random.default_rng(0)
    self.items = [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                   "label": int(rng.integers(0, 100))} for _ in range(n)]

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


def test_tfds_source_reads_items(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  fake = _FakeSource(5)
  calls = {}

  def data_source(name, split, data_dir=None, download=True):
    calls.update(name=name, split=split)
    return fake

  monkeypatch.setattr(tfds, "data_source", data_source)
  ds = load_split("cifar100", "train", source="tfds")
  assert calls == {"name": "cifar100", "split": "train"}
  assert ds.images.shape == (5, 32, 32, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.images[3], fake.items[3]["image"])
  assert ds.labels.tolist() == [it["label"] for it in fake.items]


def test_tfds_failure_is_a_data_error(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")

  def data_source(*args, **kwargs):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds, "data_source", data_source)
  with pytest.raises(DataError, match="TFDS could not provide svhn_cropped:test.*numpy"):
    load_split("svhn_cropped", "test", source="tfds")
  with pytest.raises(DataError, match="unknown TFDS dataset"):
    load_split("imagenet2012", "test", source="tfds")
