"""Dataset metadata in one place: image shape, channels and class count by name.

:data:`DATASETS` maps a dataset name to its :class:`DatasetInfo`; the trainer,
the model builder, checkpoint restoring and RiFT read shapes and class counts
from here (or from the shape a run recorded in ``config.data.image_shape``),
never from the dataset's name. :func:`register_dataset` adds a dataset (e.g. a
``<name>_{train,test}.npz`` pair in the data folder, or a TFDS name).
"""
from __future__ import annotations

import dataclasses

from jaxrobust.errors import DataError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about a dataset.

  Attributes:
    name: the dataset name (``config.data.name``; the TFDS name for TFDS sets).
    image_shape: ``(H, W, C)`` of every image, or None when the source's images
      vary in size (TFDS ``imagenette`` full-size): the shape then comes from the
      loaded data and is recorded in the run's ``config.data.image_shape``.
    num_classes: K, the number of labels / logits.
  """
  name: str
  image_shape: tuple[int, int, int] | None
  num_classes: int

  @property
  def channels(self) -> int | None:
    return None if self.image_shape is None else self.image_shape[-1]


# TFDS: cifar10, cifar100, mnist, svhn_cropped have fixed shapes. imagenette (TFDS's
# default 'full-size-v2' config) has RGB images of varying size and 10 classes (TFDS's
# ``DatasetInfo``: Image(shape=(None, None, 3)), ClassLabel(10)); the loader resizes and
# center-crops them to config.data.image_size and the trainer records that shape.
DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10),
    "cifar100": DatasetInfo("cifar100", (32, 32, 3), 100),
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10),
    "svhn_cropped": DatasetInfo("svhn_cropped", (32, 32, 3), 10),
    "imagenette": DatasetInfo("imagenette", None, 10),
    # TFDS imagenet2012 (ILSVRC-2012, 1000 classes, images of varying size): TFDS prepares it
    # only from the archives downloaded by hand into its manual_dir.
    "imagenet2012": DatasetInfo("imagenet2012", None, 1000),
}

# name -> K, derived from DATASETS (kept importable as jaxrobust.data.NUM_CLASSES).
NUM_CLASSES: dict[str, int] = {n: i.num_classes for n, i in DATASETS.items()}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
  """Adds (or replaces) ``info`` in :data:`DATASETS` (and :data:`NUM_CLASSES`); returns it.

  Raises:
    DataError: a malformed ``image_shape`` or ``num_classes``.
  """
  shape = info.image_shape
  if shape is not None and (len(shape) != 3 or any(int(d) < 1 for d in shape)):
    raise DataError(f"{info.name}: image_shape must be (H, W, C) or None, got {shape}")
  if info.num_classes < 2:
    raise DataError(f"{info.name}: num_classes must be >= 2, got {info.num_classes}")
  DATASETS[info.name] = info
  NUM_CLASSES[info.name] = info.num_classes
  return info


def dataset_info(name: str) -> DatasetInfo:
  """The :class:`DatasetInfo` of ``name``.

  Raises:
    DataError: an unknown name (the message lists the known ones).
  """
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} (add one with "
                    f"jaxrobust.data.register_dataset)")
  return DATASETS[name]


def check_image_shape(info: DatasetInfo, image_shape) -> None:
  """Raises DataError when loaded images of ``image_shape`` contradict ``info``."""
  if info.image_shape is not None and tuple(image_shape) != tuple(info.image_shape):
    raise DataError(f"{info.name}: the loaded images are {tuple(image_shape)}, but the "
                    f"dataset's metadata says {tuple(info.image_shape)}; fix the data files "
                    f"or register the dataset with its real shape")
