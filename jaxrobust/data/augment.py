"""Standard CIFAR augmentation in NumPy: pad + random crop, horizontal flip.

Runs on the host over uint8 batches, driven by an explicit
``np.random.Generator`` so a batch is a pure function of its seed.
"""
from __future__ import annotations

import numpy as np


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4,
                     flip: bool = True, pad_mode: str = "constant", *,
                     draws: int | None = None, offset: int = 0) -> np.ndarray:
  """Pads by ``pad`` pixels, takes a random crop of the original size, flips.

  Equivalent to torchvision ``RandomCrop(H, padding=pad)`` (``pad_mode=
  'constant'``, zeros) or ``padding_mode='reflect'``, followed by
  ``RandomHorizontalFlip(0.5)``.

  Args:
    images: uint8 ``[B, H, W, C]``.
    rng: the generator that draws crop offsets and flips.
    pad: padding in pixels on each side; 0 disables cropping.
    flip: whether to flip each image left-right with probability 0.5.
    pad_mode: ``'constant'`` (zeros) or ``'reflect'``.
    draws, offset: the offsets and flips are drawn for ``draws`` images
      (default ``B``) and rows ``offset .. offset + B`` of them are used, so
      that a process augmenting its slice of a global batch applies exactly
      what one process augmenting the whole batch would.

  Returns:
    uint8 ``[B, H, W, C]``.
  """
  b, h, w, _ = images.shape
  n = b if draws is None else draws
  if not 0 <= offset <= n - b:
    raise ValueError(f"rows {offset}..{offset + b} of {n} drawn augmentations")
  sel = slice(offset, offset + b)
  out = images
  if pad > 0:
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
    dy = rng.integers(0, 2 * pad + 1, size=n)[sel]
    dx = rng.integers(0, 2 * pad + 1, size=n)[sel]
    rows = dy[:, None] + np.arange(h)[None, :]  # [B, H]
    cols = dx[:, None] + np.arange(w)[None, :]  # [B, W]
    out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if flip:
    do_flip = rng.random(n)[sel] < 0.5
    out = np.where(do_flip[:, None, None, None], out[:, :, ::-1], out)
  return np.ascontiguousarray(out)
