"""Unlabeled images and the mixed labeled / unlabeled batches of semi-supervised training.

Two ways to get an unlabeled set (:mod:`jaxrobust.train.semisup` picks one from
``config.method.unlabeled``):

* any ``.npz`` of images (:func:`load_unlabeled_npz`): key ``images`` or ``x``,
  uint8 ``[N, H, W, C]`` or float in [0, 1]; any other array in the file (labels
  included) is never read;
* the training examples of a labeled set outside the labeled subset
  (``config.data.train_size``), images only: the papers' controlled setting
  (CIFAR-10 with 4,000 labels, the rest unlabeled).

An :class:`UnlabeledSet` holds images only: there is no field a true label
could live in. Semi-supervised batches (:class:`SemiSupervisedIterator`) give
every unlabeled row either a pseudo-label (a teacher's prediction) or
:data:`NO_LABEL`.

Batch composition follows ``yaircarmon/semisup-adv:datasets.py``
``SemiSupervisedSampler`` (l. 165-211): ``B_u = int(B * unsup_fraction)``
unlabeled rows drawn uniformly WITH replacement (``torch.randint``, l. 198-203)
and ``B - B_u`` labeled rows from a permutation of the labeled set, cycled
(l. 191-196); an "epoch" is a fixed number of batches
(``robust_self_training.py`` l. 234-240: 50K points; here ``(labeled +
unlabeled) // B`` batches, 49 for 4k + 45k CIFAR-10 images at B = 1000).
Differences, all without effect on the loss: the labeled rows come first and
the unlabeled rows after (the official sampler shuffles the batch because
``DataParallel`` normalises per GPU, l. 204-206; here BatchNorm statistics
are over the global batch), and an incomplete last labeled batch of a pass
is dropped (officially it is topped up with unlabeled rows).
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from typing import Iterator

import numpy as np

from jaxrobust.data.augment import random_crop_flip
from jaxrobust.data.pipeline import TrainIterator
from jaxrobust.data.sources import ArrayDataset
from jaxrobust.errors import ConfigError, DataError

NO_LABEL = -1  # the label of an unlabeled row without pseudo-label.
IMAGE_KEYS = ("images", "x")  # the keys an unlabeled .npz may hold its images under.


@dataclasses.dataclass(frozen=True)
class UnlabeledSet:
  """Images without labels.

  Attributes:
    images: uint8 ``[N, H, W, C]`` in 0..255.
    source: where they came from (a path, or ``'<dataset>:rest'``), for logs.
  """
  images: np.ndarray
  source: str = ""

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise DataError(f"unlabeled images from {self.source} must be uint8 [N, H, W, C], got "
                      f"{self.images.dtype} {self.images.shape}")

  def __len__(self) -> int:
    return int(self.images.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def take(self, idx) -> "UnlabeledSet":
    """The images at integer indices or slice ``idx``."""
    return UnlabeledSet(self.images[idx], self.source)

  def subsample(self, size: int, seed: int) -> "UnlabeledSet":
    """A seeded random subset of ``size`` images (all when ``size`` is 0 or >= N), sorted.

    As ``aux_take_amount`` of ``yaircarmon/semisup-adv:datasets.py`` (l. 79-93).
    """
    if not size or size >= len(self):
      return self
    idx = np.random.default_rng([seed, 2]).choice(len(self), size=size, replace=False)
    return self.take(np.sort(idx))


def as_uint8_images(images: np.ndarray, where: str) -> np.ndarray:
  """uint8 ``[N, H, W, C]`` as stored, or float in [0, 1] quantised to 8 bits.

  Float images are ``round(255 x)`` (exact for images that came from 8-bit
  pixels; the training pipeline stores uint8 and divides by 255 on device).

  Raises:
    DataError: not 4-D, a dtype other than uint8 / float, or floats outside [0, 1].
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise DataError(f"{where}: images must be [N, H, W, C], got shape {images.shape}")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{where}: images must be uint8 (0..255) or float in [0, 1], got "
                    f"{images.dtype}")
  if images.size and (not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1):
    raise DataError(f"{where}: float images must be in [0, 1] (got min {images.min()}, max "
                    f"{images.max()}); divide uint8 pixels by 255")
  return np.round(images.astype(np.float64) * 255.0).astype(np.uint8)


def load_unlabeled_npz(path: str | os.PathLike) -> UnlabeledSet:
  """The images of an ``.npz`` file: key ``images`` or ``x`` (nothing else is read).

  Args:
    path: the file; uint8 ``[N, H, W, C]`` or float ``[N, H, W, C]`` in [0, 1]
      (quantised to uint8, :func:`as_uint8_images`).

  Raises:
    DataError: a missing or unreadable file, no ``images`` / ``x`` key, or
      images of the wrong dtype, shape or range.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f"unlabeled data file not found: {path}; set config.method.unlabeled to an "
                    f".npz holding 'images' (or 'x'), or 'rest' for the training examples "
                    f"outside config.data.train_size")
  try:
    with np.load(path, allow_pickle=False) as f:
      key = next((k for k in IMAGE_KEYS if k in f.files), None)
      if key is None:
        raise DataError(f"{path} has no images: its arrays are {sorted(f.files)}; store them "
                        f"under 'images' (or 'x'), uint8 [N, H, W, C] or float in [0, 1]")
      images = np.asarray(f[key])
  except DataError:
    raise
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise DataError(f"{path} is not a readable .npz archive ({e}); restore the file") from e
  return UnlabeledSet(as_uint8_images(images, path), path)


def split_sizes(global_batch_size: int, unsup_fraction: float) -> tuple[int, int]:
  """``(labeled rows, unlabeled rows)`` of a batch: ``B_u = int(B * unsup_fraction)``.

  As ``SemiSupervisedSampler`` (``datasets.py`` l. 177-178).

  Raises:
    ConfigError: ``unsup_fraction`` outside [0, 1) or a batch without labeled rows.
  """
  if not 0 <= unsup_fraction < 1:
    raise ConfigError(f"config.method.unsup_fraction must be in [0, 1), got {unsup_fraction}")
  n_u = int(global_batch_size * unsup_fraction)
  n_l = global_batch_size - n_u
  if n_l < 1:
    raise ConfigError(f"batch size {global_batch_size} with unsup_fraction {unsup_fraction} "
                      f"leaves no labeled row; raise config.train.batch_size")
  return n_l, n_u


class SemiSupervisedIterator:
  """Infinite iterator of mixed labeled / unlabeled training batches (host-local slices).

  Each global batch is ``B_l`` labeled rows (a :class:`~jaxrobust.data.
  TrainIterator` over ``labeled`` with batch ``B_l``, its own seeded
  permutations, cycled) followed by ``B_u`` unlabeled rows drawn with
  replacement (:func:`split_sizes`). Every process builds the whole global
  batch and keeps its contiguous slice, so the global batch (rows, order,
  augmentation) is the same for any number of processes. Items are
  ``{'image': uint8 [b, H, W, C], 'label': int32 [b]}`` with ``b = B //
  process_count``; unlabeled rows carry ``pseudo_labels[i]`` or
  :data:`NO_LABEL` (-1) when ``pseudo_labels`` is None.

  Draws of step ``(epoch, index)``: unlabeled rows ``default_rng([seed, epoch,
  index, 1]).integers(N_u)``, their crops / flips ``default_rng([seed, epoch,
  index, 2])``; the labeled iterator's as :class:`TrainIterator` (seed
  ``seed``). The position (:meth:`state`) resumes with the checkpoint.
  """

  def __init__(self, labeled: ArrayDataset, unlabeled: UnlabeledSet,
               global_batch_size: int, seed: int, unsup_fraction: float = 0.5,
               pseudo_labels: np.ndarray | None = None, augment: bool = True, pad: int = 4,
               pad_mode: str = "constant", flip: bool = True, process_index: int = 0,
               process_count: int = 1):
    if global_batch_size % process_count:
      raise ConfigError(f"batch size {global_batch_size} is not divisible by the "
                        f"process count {process_count}")
    self.n_labeled, self.n_unlabeled = split_sizes(global_batch_size, unsup_fraction)
    if self.n_unlabeled and not len(unlabeled):
      raise DataError(f"the unlabeled set ({unlabeled.source}) is empty; give unlabeled images "
                      f"or set config.method.unsup_fraction=0")
    if len(unlabeled) and unlabeled.image_shape != labeled.image_shape:
      raise DataError(f"unlabeled images ({unlabeled.source}) are {unlabeled.image_shape}, the "
                      f"labeled ones {labeled.image_shape}; give images of the same shape")
    if pseudo_labels is not None:
      pseudo_labels = np.asarray(pseudo_labels, np.int32)
      if pseudo_labels.shape != (len(unlabeled),):
        raise DataError(f"{pseudo_labels.shape[0]} pseudo-labels for {len(unlabeled)} unlabeled "
                        f"images; recompute them for this unlabeled set")
    self.labeled_it = TrainIterator(labeled, self.n_labeled, seed, augment=augment, pad=pad,
                                    pad_mode=pad_mode, flip=flip)
    self.unlabeled, self.pseudo_labels = unlabeled, pseudo_labels
    self.global_batch_size, self.seed = global_batch_size, seed
    self.augment, self.pad, self.pad_mode, self.flip = augment, pad, pad_mode, flip
    self.process_index, self.process_count = process_index, process_count
    self.epoch, self.index = 0, 0

  @property
  def steps_per_epoch(self) -> int:
    """``(labeled + unlabeled) // B``: one "epoch" is that many examples' worth of batches."""
    return max(1, (len(self.labeled_it.dataset) + len(self.unlabeled)) // self.global_batch_size)

  def state(self) -> dict:
    """The position (JSON-serialisable), the labeled iterator's included."""
    return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed),
            "labeled": self.labeled_it.state()}

  def restore(self, state: dict) -> None:
    """Moves to a position produced by :meth:`state`."""
    if int(state.get("seed", self.seed)) != self.seed:
      raise ConfigError(f"checkpoint was written with data seed {state['seed']} but "
                        f"the config has {self.seed}; use the original seed")
    if "labeled" not in state:
      raise ConfigError("the checkpoint's data position is not a semi-supervised one; resume "
                        "with the config the run was started with")
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
    self.labeled_it.restore(state["labeled"])

  def __iter__(self) -> Iterator[dict]:
    return self

  def global_next(self) -> dict:
    """The next whole global batch (every process computes the same one)."""
    if self.index >= self.steps_per_epoch:
      self.epoch, self.index = self.epoch + 1, 0
    lab = next(self.labeled_it)
    images, labels = [lab["image"]], [lab["label"].astype(np.int32)]
    if self.n_unlabeled:
      step = [self.seed, self.epoch, self.index]
      idx = np.random.default_rng(step + [1]).integers(0, len(self.unlabeled), self.n_unlabeled)
      u = self.unlabeled.images[idx]
      if self.augment:
        u = random_crop_flip(u, np.random.default_rng(step + [2]), self.pad, self.flip,
                             self.pad_mode)
      images.append(u)
      labels.append(self.pseudo_labels[idx] if self.pseudo_labels is not None
                    else np.full(self.n_unlabeled, NO_LABEL, np.int32))
    self.index += 1
    return {"image": np.concatenate(images), "label": np.concatenate(labels)}

  def __next__(self) -> dict:
    batch = self.global_next()
    local = self.global_batch_size // self.process_count
    sl = slice(self.process_index * local, (self.process_index + 1) * local)
    return {k: v[sl] for k, v in batch.items()}
