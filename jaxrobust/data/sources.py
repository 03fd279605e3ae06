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
TFDS_DATASETS = ("cifar10", "cifar100", "mnist", "svhn_cropped", "imagenette", "imagenet2012")
# Our split name -> the TFDS split, for sets that name theirs differently.
TFDS_SPLITS = {"imagenette": {"test": "validation"}, "imagenet2012": {"test": "validation"}}


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


def _tfds_download_config():
  """Official URLs only (no prepared copy from GCS), every download checked against its
  registered sha256."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.download.DownloadConfig(try_download_gcs=False, force_checksums_validation=True)


def prepare_tfds(name: str, data_dir: str | os.PathLike | None = None):
  """Downloads and prepares TFDS dataset ``name`` in ``array_record`` format; returns its builder.

  The same as ``tfds build NAME --file_format=array_record --data_dir=DATA_DIR``: TFDS
  downloads the official archives (never a prepared copy from GCS), checks each against the
  sha256 TFDS has registered for its URL, extracts them and writes
  ``DATA_DIR/<name>/<version>/``. A prepared dataset is reused as it is. Preparing runs
  TFDS's builders, which read the archives with TensorFlow (``pip install
  'jaxrobust[tfds]'``); reading a prepared dataset does not need it.

  Args:
    name: a TFDS name from :data:`TFDS_DATASETS`.
    data_dir: TFDS data dir; None for TFDS's default (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).

  Returns:
    The prepared ``tfds.core.DatasetBuilder``.

  Raises:
    DataError: TensorFlow missing while the dataset still has to be prepared (the
      message names the ``tfds`` extra), or any failure of TFDS (network, checksum,
      disk), with its type and message.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    return builder
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise DataError(
        f"preparing TFDS {name} in {builder.data_dir} needs TensorFlow, which is not "
        f"installed: pip install 'jaxrobust[tfds]' (or point config.data.data_dir at a data "
        f"dir where `tfds build {name} --file_format=array_record` was run)") from e
  builder.download_and_prepare(file_format="array_record",
                               download_config=_tfds_download_config())
  return builder


def load_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None,
              image_size: int = 0) -> ArrayDataset:
  """Loads a TFDS dataset split into memory, preparing the dataset first when needed.

  Prepares with :func:`prepare_tfds` (download from the official URL, sha256 check,
  ``array_record`` files), then reads every record through ``as_data_source``.
  ``split='test'`` reads TFDS's ``validation`` split for sets without a test split
  (imagenette). Images whose size varies within the set (imagenette) are resized so
  their shorter side is ``image_size`` (bilinear, PIL) and center-cropped to
  ``image_size x image_size`` (the standard ImageNet evaluation transform without the
  crop ratio; ``torchvision.transforms.Resize`` + ``CenterCrop``).

  Args:
    name: a TFDS name from :data:`TFDS_DATASETS`.
    split: ``'train'`` or ``'test'`` (or any TFDS split spelling).
    data_dir: TFDS data dir; None for TFDS's default.
    image_size: side of the square images that sets of varying image size are
      brought to; 0 keeps the images as stored (required > 0 for such sets, and
      for fixed-size sets only allowed when equal to their size).

  Returns:
    An :class:`ArrayDataset` of uint8 ``[N, H, W, C]`` images and int32 labels.

  Raises:
    DataError: an unknown name, a missing ``image_size`` for a set of varying size,
      a class count or channel count in TFDS's metadata that contradicts
      :data:`jaxrobust.data.info.DATASETS`, or any failure of TFDS (see
      :func:`prepare_tfds`).
  """
  if name not in TFDS_DATASETS:
    raise DataError(f"unknown TFDS dataset {name!r}; known: {TFDS_DATASETS}")
  info = DATASETS[name]
  if info.image_shape is None and image_size < 1:
    raise DataError(f"{name} images vary in size; set config.data.image_size (e.g. 224) to "
                    f"resize and center-crop them to one square size")
  if info.image_shape is not None and image_size and image_size != info.image_shape[0]:
    raise DataError(f"{name} images are {info.image_shape}; config.data.image_size="
                    f"{image_size} must be 0 (resizing is only done for sets of varying size)")
  tfds_split = TFDS_SPLITS.get(name, {}).get(split, split)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,unused-import
    builder = prepare_tfds(name, data_dir)
    _check_tfds_metadata(name, builder.info)
    src = builder.as_data_source(split=tfds_split)
    images, labels = read_records(src, len(src), image_size if info.image_shape is None else 0)
  except DataError:
    raise
  except Exception as e:  # tfds raises many different types offline.
    raise DataError(
        f"TFDS could not provide {name}:{tfds_split} ({type(e).__name__}: {e}). On a "
        f"machine without internet use config.data.source='numpy' with the "
        f"bundled .npz files, or prepare the dataset with `tfds build {name} "
        f"--file_format=array_record` where it can be downloaded") from e
  images, labels = validate_arrays(name, images, labels, f"TFDS {name}:{tfds_split}")
  return ArrayDataset(images, labels, np.ones(len(labels), bool), name)


def _check_tfds_metadata(name: str, tfds_info) -> None:
  """Class count and channels in TFDS's ``DatasetInfo`` must match :data:`DATASETS`."""
  info = DATASETS[name]
  num_classes = tfds_info.features["label"].num_classes
  channels = tfds_info.features["image"].shape[-1]
  if num_classes != info.num_classes or (info.channels and channels != info.channels):
    raise DataError(f"{name}: TFDS's metadata has {num_classes} classes and {channels} "
                    f"channels, jaxrobust.data.info says {info.num_classes} and "
                    f"{info.channels}; register the dataset with its real metadata")


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 ``[H, W, C]`` -> uint8 ``[size, size, C]``: shorter side to ``size``, center crop.

  Bilinear resampling (PIL) of the whole image so that ``min(H, W) == size`` (the
  longer side rounded to the nearest pixel), then the central ``size x size`` window
  (offset ``(L - size) // 2`` along the longer side ``L``), as
  ``torchvision.transforms.Resize(size)`` followed by ``CenterCrop(size)``.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  if (nh, nw) != (h, w):
    pil = pil.resize((nw, nh), Image.BILINEAR)
  out = np.asarray(pil)
  top, left = (nh - size) // 2, (nw - size) // 2
  out = out[top:top + size, left:left + size]
  return out[..., None] if squeeze else out


def read_records(src, n: int, image_size: int = 0, chunk: int = 1024
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The first ``n`` ``{'image', 'label'}`` records of a TFDS data source as arrays.

  Reads ``chunk`` records per ``src.__getitems__`` call where the source has it (TFDS's
  ``ArrayRecordDataSource``: a few times faster than one record at a time), else
  ``src[i]``. ``image_size > 0`` brings every image to ``[image_size, image_size, C]``
  with :func:`resize_center_crop` (sets of varying image size).
  """
  def image(item):
    x = np.asarray(item["image"])
    return resize_center_crop(x, image_size) if image_size else x

  def items(start):
    keys = list(range(start, min(start + chunk, n)))
    if hasattr(src, "__getitems__"):
      return src.__getitems__(keys)
    return [src[i] for i in keys]

  images = labels = None
  for start in range(0, n, chunk):
    for i, item in enumerate(items(start), start):
      x = image(item)
      if images is None:
        images = np.empty((n,) + x.shape, np.uint8)
        labels = np.empty((n,), np.int32)
      images[i] = x
      labels[i] = item["label"]
  if images is None:
    raise DataError("the TFDS split has no records")
  return images, labels


def load_split(name: str, split: str, source: str = "numpy",
               data_dir: str | os.PathLike | None = None, image_size: int = 0) -> ArrayDataset:
  """Loads ``split`` (``'train'`` or ``'test'``) of dataset ``name``.

  Args:
    name: ``'cifar10'``, ``'mnist'`` (numpy or tfds) or another TFDS name.
    split: ``'train'`` or ``'test'``.
    source: ``'numpy'`` (bundled .npz) or ``'tfds'``.
    data_dir: folder of the .npz files / TFDS data dir; None for the default.
    image_size: ``config.data.image_size``: the square side that sets of varying image
      size (TFDS imagenette) are resized and center-cropped to; 0 keeps the stored size.

  Raises:
    DataError: unknown source or dataset, missing files, or an ``image_size`` that the
      data cannot have.
  """
  if source == "numpy":
    ds = load_numpy(name, split, data_dir)
    if image_size and ds.image_shape[:2] != (image_size, image_size):
      raise DataError(f"{name} .npz images are {ds.image_shape}; config.data.image_size="
                      f"{image_size} must be 0 or their size (.npz images are not resized)")
    return ds
  if source == "tfds":
    return load_tfds(name, split, data_dir, image_size)
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
