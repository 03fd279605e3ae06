"""Dataset metadata (jaxrobust.data.info): one source for shapes and class counts."""
import json
import pathlib

import numpy as np
import pytest

from jaxrobust import data as jdata
from jaxrobust.data import DATASETS, NUM_CLASSES, DatasetInfo, dataset_info, register_dataset
from jaxrobust.errors import DataError

from ..train.helpers import load_config


def test_bundled_and_tfds_metadata_unchanged(data_dir):
  assert NUM_CLASSES == {"cifar10": 10, "cifar100": 100, "mnist": 10, "svhn_cropped": 10,
                         "imagenette": 10, "imagenet2012": 1000}
  assert dataset_info("mnist").image_shape == (28, 28, 1)
  for name in ("cifar10", "cifar100", "svhn_cropped"):
    assert dataset_info(name).image_shape == (32, 32, 3)
  for name in ("cifar10", "mnist"):  # the bundled files agree with their metadata.
    ds = jdata.load_split(name, "test", data_dir=data_dir)
    info = dataset_info(name)
    assert ds.image_shape == info.image_shape and ds.labels.max() + 1 == info.num_classes
  with pytest.raises(DataError, match="unknown dataset 'svhn'.*register_dataset"):
    dataset_info("svhn")


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
  """Registers ``name`` with ``shape`` (None: varying sizes) and writes its .npz files."""

  def make(name, shape, data_shape, num_classes=4):
    # Entries that monkeypatch removes again after the test.
    monkeypatch.setitem(DATASETS, name, None)
    monkeypatch.setitem(NUM_CLASSES, name, 0)
    assert register_dataset(DatasetInfo(name, shape, num_classes)) is DATASETS[name]
    assert NUM_CLASSES[name] == num_classes
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("test", 100)):
      np.savez(tmp_path / f"{name}_{split}.npz",
               images=rng.integers(0, 256, (n,) + data_shape, dtype=np.uint8),
               labels=np.arange(n) % num_classes)
    return str(tmp_path)

  return make


def _run(config, workdir):
  # Imported here: the trainer pulls in every package.
  from jaxrobust.train.restore import load_trained  # pylint: disable=g-import-not-at-top
  from jaxrobust.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  train_and_evaluate(config, str(workdir))
  return load_trained(str(workdir), "latest")


@pytest.mark.parametrize("name, shape", [("fake20", (20, 20, 3)), ("fake_varied", None)])
def test_other_image_size_trains_and_reloads(name, shape, fake_dataset, tmp_path):
  from jaxrobust.train.builders import model_fingerprint  # pylint: disable=g-import-not-at-top
  data_dir = fake_dataset(name, shape, (20, 20, 3))
  config = load_config("cifar10_pgd_at", "smoke")
  config.data.name, config.data.data_dir = name, data_dir
  config.train.num_steps = 2
  workdir = tmp_path / "run"
  trained = _run(config, workdir)
  saved = json.loads(pathlib.Path(workdir, "config.json").read_text())
  assert saved["data"]["image_shape"] == [20, 20, 3]
  # Reload rebuilt the 20x20, 4-class model and its fingerprint check passed.
  assert trained.step == 2
  assert model_fingerprint(trained.config, (20, 20, 3)).endswith("classes=4|in=(20, 20, 3)")
  x = np.random.default_rng(1).random((2, 20, 20, 3)).astype(np.float32)
  assert trained.logits_fn()(x).shape == (2, 4)


def test_images_contradicting_the_metadata_are_a_data_error(fake_dataset):
  from jaxrobust.train.builders import build_splits  # pylint: disable=g-import-not-at-top
  data_dir = fake_dataset("fake20", (20, 20, 3), (24, 24, 3))
  config = load_config("cifar10_pgd_at", "smoke")
  config.data.name, config.data.data_dir = "fake20", data_dir
  # Refused on load (jaxrobust.data.validate reads the same metadata).
  with pytest.raises(DataError, match=r"fake20 images must be 20x20x3 .*got 24x24x3"):
    build_splits(config)
  with pytest.raises(DataError, match="image_shape"):
    register_dataset(DatasetInfo("bad", (20, 20), 4))
