"""Mixup / CutMix of a batch with timm's batch-mode semantics, as pure jittable functions.

timm's ``Mixup(mode='batch')`` (``timm/data/mixup.py``), which Mo et al.
apply to the adversarial-training batch before the attack (``mo666666/When-
Adversarial-Training-Meets-Vision-Transformers:train_cifar.py``, METHODS
2.12). One draw per batch:

* with probability ``prob`` the batch is mixed, else left as is (``lam = 1``);
* if both alphas are > 0, CutMix is chosen with probability ``switch_prob``,
  else Mixup; ``lam ~ Beta(alpha, alpha)`` of the chosen one;
* the partner of image ``i`` is image ``B - 1 - i`` (the batch reversed);
* Mixup: ``x <- lam x + (1 - lam) x_rev``;
* CutMix: a box of side ``int(H sqrt(1 - lam))`` x ``int(W sqrt(1 - lam))``
  centred at a uniform pixel ``(cy, cx)``, its corners ``c -/+ side // 2``
  clipped to the image, takes the reversed batch's pixels, and ``lam`` is
  corrected to ``1 - box area / (H W)`` (``correct_lam=True``);
* targets ``lam * onehot(y) + (1 - lam) * onehot(y_rev)`` with optional
  label smoothing (``off = s / K``, ``on = 1 - s + off``).

The draws use ``jax.random`` (not NumPy's global state), so the semantics, not
the random numbers, match timm. The batch size must be even (timm asserts it).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MixupSettings:
  """timm ``Mixup`` arguments (batch mode); defaults are Mo et al.'s.

  Attributes:
    mixup_alpha: Beta parameter of Mixup's lam; 0 disables Mixup.
    cutmix_alpha: Beta parameter of CutMix's lam; 0 disables CutMix.
    prob: probability that a batch is mixed at all.
    switch_prob: probability of CutMix when both are enabled.
    label_smoothing: smoothing of the mixed targets (timm ``label_smoothing``).

  Raises:
    ValueError: a negative alpha, or a probability / smoothing outside [0, 1].
  """
  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  prob: float = 0.3
  switch_prob: float = 0.5
  label_smoothing: float = 0.0

  def __post_init__(self):
    if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
      raise ValueError(f"mixup_alpha ({self.mixup_alpha}) and cutmix_alpha "
                       f"({self.cutmix_alpha}) must be >= 0")
    for name in ("prob", "switch_prob", "label_smoothing"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

  @property
  def active(self) -> bool:
    """Whether any batch can be mixed."""
    return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def mixup_targets(y: jax.Array, num_classes: int, lam, label_smoothing: float = 0.0):
  """Soft targets ``lam * t(y) + (1 - lam) * t(y[::-1])`` (timm ``mixup_target``).

  Args:
    y: int ``[B]`` labels.
    num_classes: K.
    lam: float scalar in [0, 1] (traced or not).
    label_smoothing: s; ``t`` is one-hot with ``on = 1 - s + s/K``, ``off = s/K``.

  Returns:
    float32 ``[B, K]``, rows summing to 1.
  """
  off = label_smoothing / num_classes
  on = 1.0 - label_smoothing + off
  t = jax.nn.one_hot(y, num_classes, dtype=jnp.float32) * (on - off) + off
  lam = jnp.asarray(lam, jnp.float32)
  return t * lam + t[::-1] * (1.0 - lam)


def cutmix_box(key: jax.Array, height: int, width: int, lam) -> tuple[jax.Array, ...]:
  """timm's ``rand_bbox``: ``(yl, yh, xl, xh)`` int32 corners of the CutMix box.

  ``cut = int(side * sqrt(1 - lam))`` per side, centre ``(cy, cx)`` uniform
  over the pixels, corners ``c - cut // 2`` and ``c + cut // 2`` clipped to
  ``[0, side]``; the box is rows ``yl:yh``, columns ``xl:xh``.

  Args:
    key: PRNG key.
    height, width: image size H, W.
    lam: Beta draw in [0, 1] (traced or not).
  """
  ratio = jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  yl, yh = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  xl, xh = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return yl, yh, xl, xh


def box_mask(height: int, width: int, box) -> jax.Array:
  """bool ``[H, W]``: True inside rows ``yl:yh`` and columns ``xl:xh``."""
  yl, yh, xl, xh = box
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)


def mixup_cutmix(key: jax.Array, x: jax.Array, y: jax.Array, num_classes: int,
                 settings: MixupSettings = MixupSettings()):
  """Mixes a batch as timm's batch-mode ``Mixup`` (see the module docstring).

  Args:
    key: PRNG key of this batch.
    x: float32 ``[B, H, W, C]`` in [0, 1]; ``B`` even.
    y: int ``[B]`` labels.
    num_classes: K.
    settings: :class:`MixupSettings`.

  Returns:
    ``(x_mixed, targets, lam)``: float32 ``[B, H, W, C]`` in [0, 1], float32
    ``[B, K]`` soft targets and the float32 scalar lam (1 when not mixed;
    CutMix: ``1 - box area / (H W)``).

  Raises:
    ValueError: an odd batch size.
  """
  b, h, w = x.shape[:3]
  if b % 2:
    raise ValueError(f"Mixup/CutMix pairs image i with image B-1-i and needs an even batch "
                     f"size, got {b}; use an even config.train.batch_size")
  x = x.astype(jnp.float32)
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
  apply = jax.random.uniform(k_apply) < settings.prob
  if settings.mixup_alpha > 0 and settings.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < settings.switch_prob
  else:
    use_cutmix = jnp.asarray(settings.cutmix_alpha > 0)
  one = jnp.float32(1.0)
  lam_mix = (jax.random.beta(k_mix, settings.mixup_alpha, settings.mixup_alpha)
             if settings.mixup_alpha > 0 else one)
  lam_cut = (jax.random.beta(k_cut, settings.cutmix_alpha, settings.cutmix_alpha)
             if settings.cutmix_alpha > 0 else one)
  x_rev = x[::-1]
  box = cutmix_box(k_box, h, w, lam_cut)
  inside = box_mask(h, w, box)
  yl, yh, xl, xh = box
  lam_box = 1.0 - ((yh - yl) * (xh - xl)).astype(jnp.float32) / jnp.float32(h * w)
  x_cut = jnp.where(inside[None, :, :, None], x_rev, x)
  x_mix = x * lam_mix + x_rev * (1.0 - lam_mix)
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_box, lam_mix), one).astype(jnp.float32)
  x_out = jnp.where(apply, jnp.where(use_cutmix, x_cut, x_mix), x)
  return x_out, mixup_targets(y, num_classes, lam, settings.label_smoothing), lam
