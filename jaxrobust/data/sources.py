"""Dataset sources behind one small interface: ``load_split(name, split, ...)``.

Two sources:

* ``numpy``: the bundled real data, ``<data_dir>/<name>_<split>.npz`` with uint8
  NHWC ``images`` and integer ``labels`` (see ``../shared/data/README.md``).
  ``data_dir`` comes from the config, else the ``JAXROBUST_DATA_DIR``
  environment variable, else ``../shared/data`` next to the repository.
* ``tfds``: TensorFlow Datasets by name (``cifar10``, ``cifar100``, ``mnist``,
  ``svhn_cropped``, ``imagenette``) for machines that can download or already
  prepared them.

Both return an :class:`ArrayDataset` of uint8 ``[N, H, W, C]`` images and int32
``[N]`` labels. Pixels stay uint8 on the host; conversion to float32 in [0, 1]
happens on device (see :func:`jaxrobust.data.to_float`).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile
import zlib

import numpy as np

from jaxrobust.data.info import DATASETS, NUM_CLASSES  # noqa: F401  (NUM_CLASSES re-exported)
from jaxrobust.data.validate import validate_arrays
from jaxrobust.errors import DataError

ENV_DATA_DIR = "JAXROBUST_DATA_DIR"
NUMPY_DATASETS = ("cifar10", "mnist")  # bundled in ../shared/data.
TFDS_DATASETS = ("cifar10", "cifar100", "mnist", "svhn_cropped", "imagenette")




@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """In-memory image classification data.

  Attributes:
    images: uint8 ``[N, H, W, C]`` in 0..255.
    labels: int32 ``[N]``.
    exact: bool ``[N]``; False for items whose pixels are lossy (the JPEG-derived
      part of the bundled CIFAR-10 test set). All True when unknown.
    name: dataset name, e.g. ``"cifar10"``.
  """
  images: np.ndarray
  labels: np.ndarray
  exact: np.ndarray
  name: str = ""

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise DataError(
          f"{self.name}: images must be uint8 [N, H, W, C], got "
          f"{self.images.dtype} {self.images.shape}")
    if self.labels.shape != (self.images.shape[0],):
      raise DataError(
          f"{self.name}: labels shape {self.labels.shape} does not match "
          f"{self.images.shape[0]} images")

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def take(self, idx) -> "ArrayDataset":
    """Returns the subset at integer indices or slice ``idx``."""
    return ArrayDataset(self.images[idx], self.labels[idx], self.exact[idx], self.name)


def default_data_dir() -> pathlib.Path:
  """``$JAXROBUST_DATA_DIR`` if set, else ``<repo>/../shared/data``."""
  env = os.environ.get(ENV_DATA_DIR)
  if env:
    return pathlib.Path(env)
  repo = pathlib.Path(__file__).resolve().parents[2]
  return repo.parent / "shared" / "data"


def load_numpy(name: str, split: str, data_dir: str | os.PathLike | None = None
               ) -> ArrayDataset:
  """Loads ``<data_dir>/<name>_<split>.npz``.

  Raises:
    DataError: when the file is absent or lacks ``images``/``labels``; the
      message names the expected path and how to point at another folder.
      Also when the arrays do not fit the dataset (image dtype/shape/channels,
      label dtype/range; see :func:`jaxrobust.data.validate.validate_arrays`).
  """
  # Bundled sets, and sets registered with jaxrobust.data.register_dataset (not TFDS names).
  if name not in NUMPY_DATASETS and (name in TFDS_DATASETS or name not in DATASETS):
    raise DataError(
        f"dataset {name!r} is not bundled as .npz (bundled: {NUMPY_DATASETS}); "
        f"use config.data.source='tfds' for it, or register it with "
        f"jaxrobust.data.register_dataset and put {name}_<split>.npz in the data folder")
  root = pathlib.Path(data_dir) if data_dir else default_data_dir()
  path = root / f"{name}_{split}.npz"
  if not path.is_file():
    raise DataError(
        f"dataset file not found: {path}. Put {name}_{split}.npz there, or set "
        f"config.data.data_dir / the {ENV_DATA_DIR} environment variable to the "
        f"folder that holds it, or use config.data.source='tfds'")
  try:
    with np.load(path) as f:
      images = np.asarray(f["images"])
      labels = np.asarray(f["labels"])
      exact = np.asarray(f["exact"]).astype(bool) if "exact" in f else np.ones(
          len(labels), bool)
  except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise DataError(f"{path} is not a valid dataset archive with 'images' and "
                    f"'labels' arrays ({e}); restore the file") from e
  images, labels = validate_arrays(name, images, labels, str(path), exact)
  return ArrayDataset(images, labels, exact, name)


def load_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None
              ) -> ArrayDataset:
  """Loads a TFDS dataset split into memory via ``tfds.data_source``.

  Needs the dataset prepared in ``array_record`` format (``tfds build NAME
  --file_format=array_record``) or a machine that can download it.

  Raises:
    DataError: when TFDS cannot provide the split.
  """
  if name not in TFDS_DATASETS:
    raise DataError(f"unknown TFDS dataset {name!r}; known: {TFDS_DATASETS}")
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=True)
    images, labels = read_records(src, len(src))
  except Exception as e:  # tfds raises many different types offline.
    raise DataError(
        f"TFDS could not provide {name}:{split} ({type(e).__name__}: {e}). On a "
        f"machine without internet use config.data.source='numpy' with the "
        f"bundled .npz files, or prepare the dataset with `tfds build {name} "
        f"--file_format=array_record` where it can be downloaded") from e
  images, labels = validate_arrays(name, images, labels, f"TFDS {name}:{split}")
  return ArrayDataset(images, labels, np.ones(len(labels), bool), name)


def read_records(src, n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first ``n`` ``{'image', 'label'}`` records of a TFDS data source as arrays."""
  shape = np.asarray(src[0]["image"]).shape
  images = np.empty((n,) + shape, np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):
    item = src[i]
    images[i] = item["image"]
    labels[i] = item["label"]
  return images, labels


def load_split(name: str, split: str, source: str = "numpy",
               data_dir: str | os.PathLike | None = None) -> ArrayDataset:
  """Loads ``split`` (``'train'`` or ``'test'``) of dataset ``name``.

  Args:
    name: ``'cifar10'``, ``'mnist'`` (numpy or tfds) or another TFDS name.
    split: ``'train'`` or ``'test'``.
    source: ``'numpy'`` (bundled .npz) or ``'tfds'``.
    data_dir: folder of the .npz files / TFDS data dir; None for the default.

  Raises:
    DataError: unknown source or dataset, or missing files.
  """
  if source == "numpy":
    return load_numpy(name, split, data_dir)
  if source == "tfds":
    return load_tfds(name, split, data_dir)
  raise DataError(f"unknown data source {source!r}; use 'numpy' or 'tfds'")


def train_val_split(labels: np.ndarray, num_val: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Class-balanced, seeded split of train indices into (train, validation).

  Takes ``num_val // num_classes`` examples of every class (the remainder from
  the first classes) for validation, chosen by ``np.random.default_rng(seed)``.

  Args:
    labels: int ``[N]`` train labels.
    num_val: validation size, ``0 <= num_val < N``.
    seed: split seed (independent of the training seed).

  Returns:
    ``(train_idx, val_idx)``: sorted int64 index arrays, disjoint, covering all N.

  Raises:
    DataError: when ``num_val`` is out of range or a class is too small.
  """
  n = len(labels)
  if not 0 <= num_val < n:
    raise DataError(f"validation size {num_val} must be in [0, {n})")
  classes = np.unique(labels)
  rng = np.random.default_rng(seed)
  per_class = np.full(len(classes), num_val // len(classes))
  per_class[: num_val % len(classes)] += 1
  val = []
  for c, k in zip(classes, per_class):
    idx = np.flatnonzero(labels == c)
    if k > len(idx):
      raise DataError(f"class {c} has {len(idx)} examples, fewer than the {k} "
                      f"needed for a balanced validation split of {num_val}")
    val.append(rng.choice(idx, size=k, replace=False))
  val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
  mask = np.ones(n, bool)
  mask[val_idx] = False
  return np.flatnonzero(mask), val_idx
