"""RiFT's out-of-distribution sets: the official CIFAR-10-C files, or none.

RiFT's OOD figure (``microsoft/robustlearn:RiFT/eval_ood.py`` with
``utils.py`` ``evaluate_cifar_corruption`` and ``dataloader.py`` ``CIFAR10C``)
is the clean accuracy on the official CIFAR-10-C files (Hendrycks &
Dietterich, 2019), averaged over :data:`RIFT_CORRUPTIONS`: each
``<corruption>.npy`` holds the 10,000 test images at severities 1..5 stacked
(50,000 images), so the official per-corruption accuracy is the mean over the
five severities and the reported number the mean over the corruptions. With
equal-sized sets that equals the mean over every (corruption, severity) set,
which is what :func:`official_ood_sets` returns and the pipeline averages.

The official files come from one of two places, tried in this order (never
generated, never downloaded):

1. a CIFAR-10-C folder (``config.eval.ood.data_dir``, default
   ``<data dir>/CIFAR-10-C``) holding ``<corruption>.npy`` and ``labels.npy``
   as distributed (``CIFAR-10-C.tar``, https://zenodo.org/record/2535967) and
   read by RiFT's code;
2. TFDS ``cifar10_corrupted/<config>`` prepared beforehand
   (:func:`jaxrobust.data.corruptions.load_corrupted` with ``source='tfds'``).

When neither has every set, :func:`check_official_ood` raises one
:class:`~jaxrobust.errors.DataError` naming what is missing and how to
provide it, before any stage runs.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxrobust.data import ArrayDataset, default_data_dir
from jaxrobust.errors import ConfigError, DataError

RIFT_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "speckle_noise", "impulse_noise", "defocus_blur",
    "gaussian_blur", "motion_blur", "zoom_blur", "snow", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression", "spatter", "saturate", "frost",
)
"""The 18 corruptions RiFT's ``evaluate_cifar_corruption`` averages, in its order.

The canonical 15 minus ``glass_blur``, plus the 4 extra ones (``speckle_noise``,
``gaussian_blur``, ``spatter``, ``saturate``); the paper's text speaks of the 15.
"""

CIFAR10C_FOLDER = "CIFAR-10-C"
CIFAR10C_PER_SEVERITY = 10_000
CIFAR10C_URL = "https://zenodo.org/record/2535967"
SEVERITIES = (1, 2, 3, 4, 5)


def cifar10c_dir(data_dir: str = "") -> pathlib.Path:
  """``data_dir`` if given, else ``<jaxrobust data dir>/CIFAR-10-C``."""
  return pathlib.Path(data_dir) if data_dir else default_data_dir() / CIFAR10C_FOLDER


def _folder_missing(folder: pathlib.Path, corruptions) -> list[str]:
  names = ["labels"] + list(corruptions)
  return [f"{n}.npy" for n in names if not (folder / f"{n}.npy").is_file()]


def load_cifar10c_folder(folder: str | os.PathLike, corruption: str, severity: int,
                         n: int = 0) -> ArrayDataset:
  """One official CIFAR-10-C set from a folder of ``.npy`` files.

  Args:
    folder: holds ``<corruption>.npy``, uint8 ``[5 K, 32, 32, 3]`` with the
      severities 1..5 stacked in order (the official files: K = 10,000 test
      images each, in test-set order) and ``labels.npy`` (int ``[5 K]``).
    corruption: a file name stem, e.g. ``'gaussian_noise'``.
    severity: 1..5.
    n: the first ``n`` images of that severity (0: all K).

  Returns:
    An :class:`ArrayDataset` named ``'CIFAR-10-C/<corruption>_<severity>'``
    with ``exact`` all True (official files).

  Raises:
    ConfigError: severity outside 1..5 or ``n`` outside 0..K.
    DataError: a missing or malformed file.
  """
  if severity not in SEVERITIES:
    raise ConfigError(f"CIFAR-10-C severity must be one of {SEVERITIES}, got {severity!r}")
  folder = pathlib.Path(folder)
  try:
    images = np.load(folder / f"{corruption}.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy", mmap_mode="r")
  except (OSError, ValueError) as e:
    raise DataError(f"cannot read the CIFAR-10-C files {corruption}.npy / labels.npy in "
                    f"{folder} ({e}); extract CIFAR-10-C.tar ({CIFAR10C_URL}) there") from e
  k = images.shape[0] // 5 if images.ndim == 4 else 0
  if (k == 0 or images.shape != (5 * k, 32, 32, 3) or images.dtype != np.uint8
      or labels.shape != (5 * k,)):
    raise DataError(f"{folder / (corruption + '.npy')} is {images.dtype} {images.shape} with "
                    f"labels {labels.shape}; an official CIFAR-10-C file is uint8 "
                    f"[{5 * CIFAR10C_PER_SEVERITY}, 32, 32, 3] (5 severities stacked) with as "
                    f"many labels")
  n = n or k
  if not 1 <= n <= k:
    raise ConfigError(f"{corruption}.npy has {k} images per severity; asked for {n}")
  lo = (severity - 1) * k
  return ArrayDataset(np.array(images[lo:lo + n]), np.array(labels[lo:lo + n], np.int32),
                      np.ones(n, bool), f"{CIFAR10C_FOLDER}/{corruption}_{severity}")


def _tfds_problem(corruptions, severities) -> str | None:
  """Why TFDS cannot give every set (None: every ``cifar10_corrupted`` config is prepared)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return f"tensorflow_datasets is not installed ({e})"
  from jaxrobust.data import corruptions as corr  # pylint: disable=g-import-not-at-top
  for c in corruptions:
    for s in severities:
      name = f"{corr.TFDS_NAME}/{corr.tfds_config_name(c, s)}"
      try:
        prepared = tfds.builder(name, try_gcs=False).is_prepared()
      except Exception:  # pylint: disable=broad-except  # tfds raises many types offline.
        prepared = False
      if not prepared:
        return f"TFDS has not prepared {name} (TFDS_DATA_DIR or ~/tensorflow_datasets)"
  return None


def check_official_ood(corruptions, severities, data_dir: str = "") -> str:
  """Where the official CIFAR-10-C sets will be read from: ``'folder'`` or ``'tfds'``.

  Args:
    corruptions: corruption names (e.g. :data:`RIFT_CORRUPTIONS`).
    severities: severities in 1..5.
    data_dir: the CIFAR-10-C folder ('' for ``<data dir>/CIFAR-10-C``).

  Raises:
    ConfigError: an unknown corruption or severity.
    DataError: neither the folder nor TFDS has every set; the message names
      the missing files and the ways to provide them.
  """
  from jaxrobust.data import corruptions as corr  # pylint: disable=g-import-not-at-top
  corruptions, severities = tuple(corruptions), tuple(severities)
  for c in corruptions:
    for s in severities:
      corr.tfds_config_name(c, s)  # ConfigError for an unknown name or severity.
  folder = cifar10c_dir(data_dir)
  in_folder = _folder_missing(folder, corruptions)
  if not in_folder:
    return "folder"
  tfds_msg = _tfds_problem(corruptions, severities)
  if tfds_msg is None:
    return "tfds"
  shown = ", ".join(in_folder[:4]) + (", ..." if len(in_folder) > 4 else "")
  raise DataError(
      f"the official CIFAR-10-C data is missing: {folder} lacks {len(in_folder)} file(s) "
      f"({shown}) and {tfds_msg}. Extract CIFAR-10-C.tar ({CIFAR10C_URL}) so that {folder} "
      f"holds <corruption>.npy and labels.npy (or point --config.eval.ood.data_dir at such "
      f"a folder), or run `tfds build {corr.TFDS_NAME} --file_format=array_record` where it can "
      f"download and set TFDS_DATA_DIR; or choose --config.eval.ood.source=none (no OOD "
      f"figure) or =generated (imagecorruptions-imaug, not comparable to CIFAR-10-C)")


def official_ood_sets(corruptions, severities, n: int, data_dir: str = "",
                      where: str | None = None) -> dict[str, ArrayDataset]:
  """The official CIFAR-10-C sets, keyed ``'<corruption>_<severity>'``.

  Args:
    corruptions: corruption names.
    severities: severities in 1..5.
    n: images per set (1..10000; the folder gives the first ``n`` in test
      order, TFDS its first ``n`` records; 0 with a folder: all).
    data_dir: the CIFAR-10-C folder ('' for ``<data dir>/CIFAR-10-C``).
    where: ``'folder'`` or ``'tfds'`` from :func:`check_official_ood`
      (None: check now).

  Raises:
    ConfigError, DataError: as :func:`check_official_ood` and
    :func:`load_cifar10c_folder`.
  """
  where = where or check_official_ood(corruptions, severities, data_dir)
  out = {}
  for c in corruptions:
    for s in severities:
      if where == "folder":
        out[f"{c}_{s}"] = load_cifar10c_folder(cifar10c_dir(data_dir), c, s, n)
      else:
        from jaxrobust.data import corruptions as corr  # pylint: disable=g-import-not-at-top
        m = n or CIFAR10C_PER_SEVERITY
        shape_only = ArrayDataset(np.zeros((m, 32, 32, 3), np.uint8), np.zeros(m, np.int32),
                                  np.ones(m, bool), "cifar10")
        out[f"{c}_{s}"] = corr.load_corrupted(shape_only, c, s, source="tfds")
  return out
