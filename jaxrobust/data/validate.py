"""Checks of loaded image/label arrays against what the dataset must look like.

A dataset file with labels outside the class range or images of another
dataset's shape trains or evaluates without complaint but gives wrong numbers
(or a traceback deep inside the first convolution); :func:`validate_arrays`
refuses it with a :class:`~jaxrobust.errors.DataError` naming the file, the
problem and the fix. Both sources (``.npz`` and TFDS) call it when loading.
"""
from __future__ import annotations

import numpy as np

from jaxrobust.data.info import DATASETS
from jaxrobust.errors import DataError


def expected_metadata(name: str) -> tuple[tuple[int, int, int] | None, int | None]:
  """``(image_shape, num_classes)`` a dataset's arrays must match.

  From :data:`jaxrobust.data.info.DATASETS`. ``image_shape`` is ``(H, W, C)``
  or None when any size is allowed; ``num_classes`` None for a dataset the
  library does not know (then only dtypes and the non-negativity of labels are
  checked).
  """
  info = DATASETS.get(name)
  return (None, None) if info is None else (info.image_shape, info.num_classes)


def validate_arrays(name: str, images, labels, where: str,
                    exact=None) -> tuple[np.ndarray, np.ndarray]:
  """Checks a dataset split's arrays and returns ``(images, int32 labels)``.

  Args:
    name: dataset name, e.g. ``'cifar10'`` (selects the expected metadata).
    images: uint8 ``[N, H, W, C]`` pixels in 0..255.
    labels: integer ``[N]`` class indices in ``0..num_classes - 1``.
    where: the file (or TFDS split) they came from, for the message.
    exact: optional bool ``[N]`` exact-pixel flags.

  Returns:
    ``(images, labels)`` with labels cast to int32 (after the range check).

  Raises:
    DataError: wrong image dtype/rank/shape/channels, non-integer labels,
      labels out of range, or mismatched lengths.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  shape, num_classes = expected_metadata(name)
  fix = f"regenerate or restore {where}, or set config.data.name to the dataset it holds"
  if images.dtype != np.uint8:
    raise DataError(f"{where}: images must be uint8 pixels in 0..255, got {images.dtype}; "
                    f"store them as uint8 (multiply [0, 1] floats by 255 and round)")
  if images.ndim != 4:
    raise DataError(f"{where}: images must be [N, H, W, C], got shape {images.shape}; "
                    f"add the channel axis (e.g. images[..., None] for grey images)")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise DataError(f"{where}: labels shape {labels.shape} does not match the "
                    f"{images.shape[0]} images (one integer label per image); {fix}")
  if shape is not None and images.shape[1:] != shape:
    raise DataError(f"{where}: {name} images must be {shape[0]}x{shape[1]}x{shape[2]} "
                    f"(H x W x C), got {'x'.join(map(str, images.shape[1:]))}; {fix}")
  if exact is not None and np.shape(exact) != labels.shape:
    raise DataError(f"{where}: 'exact' must be [N] with N = {images.shape[0]}, got shape "
                    f"{np.shape(exact)}; {fix}")
  if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{where}: labels must be integer class indices, got {labels.dtype}; "
                    f"{fix}")
  if labels.size:
    lo, hi = int(labels.min()), int(labels.max())
    top = num_classes - 1 if num_classes is not None else np.iinfo(np.int32).max
    if lo < 0 or hi > top:
      bad = int(np.sum((labels < 0) | (labels > top)))
      raise DataError(f"{where}: labels must be in 0..{top} for {name}, got {lo}..{hi} "
                      f"({bad} of {labels.size} out of range); {fix}")
  return images, labels.astype(np.int32)
