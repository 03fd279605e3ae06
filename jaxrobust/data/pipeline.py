"""Batch iterators: a resumable, seeded train iterator and padded eval batches.

The train iterator's order is a pure function of ``(seed, epoch, index)``: each
epoch draws a permutation from ``np.random.default_rng([seed, epoch])`` and each
batch's augmentation from ``default_rng([seed, epoch, index, 0])``. Its position
(``{'epoch', 'index'}``) is saved with the checkpoint, so a resumed run sees the
same batches as an uninterrupted one.

Multi-host: every process builds the same global batch (its examples sorted by
index, its crops and flips drawn for the whole batch) and keeps only its own
contiguous slice (``process_index``/``process_count``), so the global batch is
the same for any number of processes; :func:`jaxrobust.parallel.global_batch`
assembles the global array.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from jaxrobust.data.augment import random_crop_flip
from jaxrobust.data.sources import ArrayDataset
from jaxrobust.errors import ConfigError


class TrainIterator:
  """Infinite iterator of augmented training batches (host-local slices).

  Each item is ``{'image': uint8 [b, H, W, C], 'label': int32 [b]}`` with
  ``b = global_batch_size // process_count``. The last incomplete batch of an
  epoch is dropped.
  """

  def __init__(self, dataset: ArrayDataset, global_batch_size: int, seed: int,
               augment: bool = True, pad: int = 4, pad_mode: str = "constant",
               flip: bool = True, process_index: int = 0, process_count: int = 1):
    if global_batch_size % process_count:
      raise ConfigError(f"batch size {global_batch_size} is not divisible by the "
                        f"process count {process_count}")
    if global_batch_size > len(dataset):
      raise ConfigError(f"batch size {global_batch_size} exceeds the training set "
                        f"size {len(dataset)}; lower config.train.batch_size")
    self.dataset = dataset
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.augment = augment
    self.pad, self.pad_mode, self.flip = pad, pad_mode, flip
    self.process_index, self.process_count = process_index, process_count
    self.epoch, self.index = 0, 0
    self._perm_epoch, self._perm = -1, None

  @property
  def steps_per_epoch(self) -> int:
    return len(self.dataset) // self.global_batch_size

  def state(self) -> dict:
    """The iterator position, a JSON-serialisable dict."""
    return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed)}

  def restore(self, state: dict) -> None:
    """Moves to a position produced by :meth:`state`."""
    if int(state.get("seed", self.seed)) != self.seed:
      raise ConfigError(f"checkpoint was written with data seed {state['seed']} but "
                        f"the config has {self.seed}; use the original seed")
    self.epoch, self.index = int(state["epoch"]), int(state["index"])

  def _permutation(self) -> np.ndarray:
    if self._perm_epoch != self.epoch:
      self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(
          len(self.dataset))
      self._perm_epoch = self.epoch
    return self._perm

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    if self.index >= self.steps_per_epoch:
      self.epoch, self.index = self.epoch + 1, 0
    perm = self._permutation()
    g = self.global_batch_size
    lo = self.index * g
    local = g // self.process_count
    first = self.process_index * local
    # The global batch in one order, then this process's rows of it: every process count
    # yields the same global batch (examples, order and augmentation) for the same seed.
    idx = np.sort(perm[lo:lo + g])[first:first + local]
    images = self.dataset.images[idx]
    if self.augment:
      rng = np.random.default_rng([self.seed, self.epoch, self.index, 0])
      images = random_crop_flip(images, rng, self.pad, self.flip, self.pad_mode, draws=g,
                                offset=first)
    self.index += 1
    return {"image": images, "label": self.dataset.labels[idx]}


def eval_batches(dataset: ArrayDataset, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Yields padded eval batches covering every example exactly once.

  Each item is ``{'image': uint8 [b, H, W, C], 'label': int32 [b],
  'mask': float32 [b]}``; padding rows repeat example 0 with ``mask`` 0, so
  metrics aggregated as ``sum(flag * mask) / sum(mask)`` are exact.
  """
  if batch_size % process_count:
    raise ConfigError(f"eval batch size {batch_size} is not divisible by the "
                      f"process count {process_count}")
  n = len(dataset)
  local = batch_size // process_count
  for lo in range(0, n, batch_size):
    idx = np.arange(lo, lo + batch_size)
    mask = (idx < n).astype(np.float32)
    idx = np.where(idx < n, idx, 0)
    sl = slice(process_index * local, (process_index + 1) * local)
    yield {"image": dataset.images[idx[sl]], "label": dataset.labels[idx[sl]],
           "mask": mask[sl]}
