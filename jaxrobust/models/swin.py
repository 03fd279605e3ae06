"""Swin Transformer in Flax NNX, with the attention-gradient gate of ARD.

Architecture (Liu et al. 2021, "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows"): the reference for structure and
parameter names is timm's ``timm/models/swin_transformer.py`` (timm >= 0.9,
the layout of the golden fixtures in ``tests/fixtures/``)::

    patch_embed.{proj, norm}                  # p x p stride-p conv, then LayerNorm
    layers.{i}.downsample.{norm, reduction}   # PatchMerging at the START of stage i > 0
    layers.{i}.blocks.{j}.{norm1, attn.{qkv, proj, relative_position_bias_table},
                           norm2, mlp.{fc1, fc2}}
    norm, head                                # final LayerNorm, mean over tokens, linear

Each block is (``W-MSA`` for even ``j``, ``SW-MSA`` with shift ``window // 2``
for odd ``j``)::

    x = x + gate_j(WindowAttention(roll(LN_1(x), -shift)) rolled back)
    x = x + Mlp(LN_2(x))

Window attention: multi-head softmax attention inside each non-overlapping
``window x window`` window of tokens, logits ``(q * head_dim ** -0.5) k^T``
plus a learned relative position bias ``relative_position_bias_table``
``[(2w - 1)^2, heads]`` indexed by the pairwise offset (timm's
``get_relative_position_index``); in a shifted block the cyclically shifted
map mixes regions that are not neighbours in the image, so tokens of
different regions get ``-100`` added to their logits (timm's ``attn_mask``:
a softmax weight below ``e^-100``, i.e. they never attend to each other,
:func:`shifted_window_mask`). A stage whose token grid is not larger than the
window uses one window of the whole grid and no shift (timm's
``_calc_window_shift``). PatchMerging concatenates the 2 x 2 neighbours in
timm's order ``(0,0), (1,0), (0,1), (1,1)`` (row, column), LayerNorm, then a
bias-free ``4C -> 2C`` linear.

Layouts: linear kernels are ``[in, out]`` (timm ``weight.T``), the patch
kernel HWIO ``[p, p, C, D]``; the fused ``qkv`` kernel ``[D, 3D]`` keeps
timm's ``(3, heads, head_dim)`` output order, so a timm state dict converts by
transposes (:mod:`jaxrobust.models.convert_timm`). GELU is the exact (erf)
GELU of ``torch.nn.GELU``; LayerNorm epsilon 1e-5 (torch's default).

**ARD gate** (attention random dropping, Mo et al. 2022; official code:
``mo666666/When-Adversarial-Training-Meets-Vision-Transformers:
train_imagenette.py:214-221`` registers the backward hook on each
``SwinTransformerBlock.drop_path``, which in their ``model_for_imagenet/
swin.py:305-306`` wraps only the attention residual branch: ``x = shortcut +
self.drop_path(x)``, ``x = x + self.mlp(self.norm2(x))``):
``model(x, attention_grad_keep=keep)`` with ``keep`` a ``[num_blocks]`` bool
array (blocks counted over all stages in order) makes block ``i`` add
``where(keep[i], a, stop_gradient(a))`` for its attention branch ``a``:
forward values unchanged bit for bit, gradient through a dropped block's
attention branch cut; the MLP branch is never gated.

**Stochastic depth** (``drop_path_rate``, default 0): as Mo et al.'s Swin
(``swin.py:440, 470``: rates ``linspace(0, rate, num_blocks)``, the official
Imagenette run keeps the default 0.1) on the attention branch only
(``swin.py:305``), per sample, scaled by ``1 / (1 - rate)``; applied only in
the train view with a key (``model(x, train=True, key=k)``); the eval view
and the attack (eval mode) are deterministic.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.models.layers import Normalize, classifier_head
from jaxrobust.models.vit import PatchEmbedding, _normal, _pair, attention_gate, token_grid

MASK_VALUE = -100.0  # timm / the official Swin: the logit offset between shifted regions.
LN_EPS = 1e-5  # torch.nn.LayerNorm's default (timm's Swin).


def window_and_shift(resolution, window_size: int, shift_size: int) -> tuple[int, int]:
  """The window and shift a stage of token grid ``resolution`` uses.

  timm's ``SwinTransformerBlock._calc_window_shift`` (not ``always_partition``)
  and the official ``swin.py:231-234``: a grid not larger than the window is
  one window without shift.

  Args:
    resolution: ``(H, W)`` tokens (square windows need ``min(H, W)``).
    window_size, shift_size: the configured ones.

  Returns:
    ``(window, shift)``.
  """
  side = min(_pair(resolution))
  if side <= window_size:
    return side, 0
  return window_size, shift_size


def relative_position_index(window: int) -> np.ndarray:
  """int32 ``[w*w, w*w]`` index into ``relative_position_bias_table`` (timm's formula).

  ``index[i, j] = (dh + w - 1) * (2w - 1) + (dw + w - 1)`` for the offset
  ``(dh, dw) = pos(i) - pos(j)`` of tokens ``i, j`` in row-major window order.
  """
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int32)


def shifted_window_mask(resolution, window: int, shift: int) -> np.ndarray | None:
  """The additive attention mask of a shifted block: float32 ``[nW, w*w, w*w]`` or None.

  After ``roll(x, -shift)`` the last ``shift`` rows / columns hold tokens
  from the other side of the image; timm labels the 3 x 3 regions
  ``[0, H - w), [H - w, H - shift), [H - shift, H)`` (and the same for
  columns) and adds ``-100`` where query and key regions differ.
  Windows are in row-major order (``window_partition``).
  """
  if shift == 0:
    return None
  h, w = _pair(resolution)
  label = np.zeros((h, w), np.int32)
  cuts = lambda n: (slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n))
  cnt = 0
  for hs in cuts(h):
    for ws in cuts(w):
      label[hs, ws] = cnt
      cnt += 1
  win = label.reshape(h // window, window, w // window, window).transpose(0, 2, 1, 3)
  win = win.reshape(-1, window * window)
  return np.where(win[:, None, :] != win[:, :, None], MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x, window: int):
  """``[B, H, W, C] -> [B, nW, w*w, C]`` (windows row-major, tokens row-major)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(x, window: int, h: int, w: int):
  """Inverse of :func:`window_partition`: ``[B, nW, w*w, C] -> [B, H, W, C]``."""
  b, c = x.shape[0], x.shape[-1]
  x = x.reshape(b, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


class WindowAttention(nnx.Module):
  """W-MSA with relative position bias: ``qkv`` ``[D, 3D]``, ``proj``, the bias table."""

  def __init__(self, dim: int, num_heads: int, window: int, *, qkv_bias: bool = True,
               dtype=None, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ConfigError(f"Swin stage width {dim} is not divisible by its {num_heads} heads")
    self.num_heads = num_heads
    self.window = window
    self.scale = (dim // num_heads) ** -0.5
    self.relative_position_bias_table = nnx.Param(
        _normal()(rngs.params(), ((2 * window - 1) ** 2, num_heads), jnp.float32))
    dense = functools.partial(nnx.Linear, dtype=dtype, kernel_init=_normal(), rngs=rngs)
    self.qkv = dense(dim, 3 * dim, use_bias=qkv_bias)
    self.proj = dense(dim, dim)

  def __call__(self, x, mask=None):
    """``x`` ``[B, nW, N, D]`` windows; ``mask`` None or ``[nW, N, N]`` (0 / -100)."""
    b, nw, n, d = x.shape
    qkv = self.qkv(x).reshape(b, nw, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    q = q * jnp.asarray(self.scale, q.dtype)
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k).astype(jnp.float32)
    index = relative_position_index(self.window).reshape(-1)
    bias = self.relative_position_bias_table[...][index].reshape(n, n, -1).transpose(2, 0, 1)
    logits = logits + bias[None, None]
    if mask is not None:
      logits = logits + jnp.asarray(mask)[None, :, None]
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", weights, v).reshape(b, nw, n, d)
    return self.proj(out)


class Mlp(nnx.Module):
  """``fc2(GELU(fc1(x)))`` (timm names)."""

  def __init__(self, dim: int, hidden: int, *, dtype=None, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, kernel_init=_normal(), rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, dtype=dtype, kernel_init=_normal(), rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def _drop_path(x, rate: float, key):
  """Per-sample stochastic depth of ``x`` ``[B, ...]`` (timm's ``drop_path``)."""
  if rate <= 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class SwinTransformerBlock(nnx.Module):
  """(Shifted-)window attention block on a ``[B, H, W, D]`` token map; the attention
  residual branch carries the ARD gate (and the drop path)."""

  def __init__(self, dim: int, resolution, num_heads: int, window_size: int, shift_size: int,
               mlp_ratio: float, *, qkv_bias: bool, drop_path: float = 0.0, dtype=None,
               rngs: nnx.Rngs):
    self.resolution = _pair(resolution)
    self.window, self.shift = window_and_shift(resolution, window_size, shift_size)
    h, w = self.resolution
    if h % self.window or w % self.window:
      raise ConfigError(f"a Swin stage of {h}x{w} tokens is not a multiple of window "
                        f"{self.window}; choose image_size / patch_size / window_size so that "
                        f"every stage's grid divides by the window (e.g. 224 / 4 / 7, 32 / 2 "
                        f"/ 4)")
    self.drop_path = float(drop_path)
    self.norm1 = nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.attn = WindowAttention(dim, num_heads, self.window, qkv_bias=qkv_bias, dtype=dtype,
                                rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def attention_branch(self, x):
    """The attention residual branch of ``x`` ``[B, H, W, D]`` (before the gate)."""
    h, w = self.resolution
    y = self.norm1(x)
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
    y = self.attn(window_partition(y, self.window),
                  shifted_window_mask(self.resolution, self.window, self.shift))
    y = window_reverse(y, self.window, h, w)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    return y

  def __call__(self, x, attention_keep=None, drop_key=None):
    a = _drop_path(self.attention_branch(x), self.drop_path, drop_key)
    x = x + attention_gate(a, attention_keep)
    return x + self.mlp(self.norm2(x))


class PatchMerging(nnx.Module):
  """``[B, H, W, C] -> [B, H/2, W/2, 2C]``: 2 x 2 neighbours concatenated, ``norm``,
  bias-free ``reduction``."""

  def __init__(self, dim: int, *, dtype=None, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(4 * dim, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype,
                                kernel_init=_normal(), rngs=rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    # timm: reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5): column-offset major.
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    return self.reduction(self.norm(x.reshape(b, h // 2, w // 2, 4 * c)))


class PatchEmbed(nnx.Module):
  """``proj`` (the stride-p patch convolution, HWIO kernel) then ``norm``: ``[B, N, D]``."""

  def __init__(self, in_channels: int, dim: int, patch_size, *, dtype=None, rngs: nnx.Rngs):
    self.proj = PatchEmbedding(in_channels, dim, patch_size, dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.proj(x))


class SwinTransformerStage(nnx.Module):
  """``downsample`` (PatchMerging, stages > 0; else None) then ``blocks``."""

  def __init__(self, dim: int, out_dim: int, resolution, depth: int, num_heads: int,
               window_size: int, mlp_ratio: float, *, downsample: bool, qkv_bias: bool,
               drop_path: Sequence[float], dtype=None, rngs: nnx.Rngs):
    self.downsample = PatchMerging(dim, dtype=dtype, rngs=rngs) if downsample else None
    blocks = [SwinTransformerBlock(out_dim, resolution, num_heads, window_size,
                                   0 if j % 2 == 0 else window_size // 2, mlp_ratio,
                                   qkv_bias=qkv_bias, drop_path=drop_path[j], dtype=dtype,
                                   rngs=rngs) for j in range(depth)]
    self.blocks = nnx.List(blocks)


class SwinTransformer(nnx.Module):
  """Swin Transformer classifier (see the module docstring).

  Args:
    num_classes: K.
    in_channels: C of the NHWC input.
    image_size: int or ``(H, W)``: the input size (inputs of another size
      raise ConfigError).
    patch_size: the patch embedding's patch (4 for the published models).
    embed_dim: width of stage 0; stage ``i`` has ``embed_dim * 2**i``.
    depths: blocks per stage.
    num_heads: heads per stage.
    window_size: attention window (7 at 224 px; 4 on 32 px CIFAR).
    mlp_ratio: MLP hidden size / width.
    qkv_bias: biases on the fused qkv projection.
    drop_path_rate: stochastic depth of the last block (linear from 0), on
      the attention branch, train view only; 0 = off.
    mean, std: normalisation inside the model.
    dtype: compute dtype; parameters and logits stay float32.
    rngs: initialisation.

  Raises:
    ConfigError: a patch that does not divide the image or leaves fewer than
      4 x 4 tokens, a stage grid that cannot be halved or split into windows,
      ``depths`` / ``num_heads`` of different lengths, a width not divisible
      by the heads.
  """

  stochastic = False  # drop path acts in the train view only; eval is deterministic.

  def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size=224,
               patch_size=4, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
               num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7,
               mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
               mean=None, std=None, dtype=None, *, rngs: nnx.Rngs):
    depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
    if len(depths) != len(num_heads) or not depths:
      raise ConfigError(f"Swin depths {depths} and num_heads {num_heads} need one entry per "
                        f"stage")
    if not 0.0 <= drop_path_rate < 1.0:
      raise ConfigError(f"Swin drop_path_rate must be in [0, 1), got {drop_path_rate}")
    gh, gw = token_grid(image_size, patch_size)
    for i in range(1, len(depths)):
      if (gh >> (i - 1)) % 2 or (gw >> (i - 1)) % 2:
        raise ConfigError(f"Swin stage {i} halves a {gh >> (i - 1)}x{gw >> (i - 1)} token "
                          f"grid: image_size / patch_size must be divisible by "
                          f"2**{len(depths) - 1}")
    self.image_size = _pair(image_size)
    self.patch_size = _pair(patch_size)
    self.grid = (gh, gw)
    self.depths = depths
    self.num_attention_blocks = sum(depths)
    # PRM masks on the token grid of any stage (Mo et al.'s Imagenette runs: patch 16,
    # the 14 x 14 grid of stage 2 of a 224 px Swin).
    self.prm_patch_sizes = tuple((self.patch_size[0] << i, self.patch_size[1] << i)
                                 for i in range(len(depths)))
    self.dtype = dtype
    self.normalize = Normalize(mean, std)
    self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size, dtype=dtype, rngs=rngs)
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    stages, start = [], 0
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
      dim = embed_dim * 2 ** max(i - 1, 0)
      stages.append(SwinTransformerStage(
          dim, embed_dim * 2 ** i, (gh >> i, gw >> i), depth, heads, window_size, mlp_ratio,
          downsample=i > 0, qkv_bias=qkv_bias, drop_path=rates[start:start + depth],
          dtype=dtype, rngs=rngs))
      start += depth
    self.layers = nnx.List(stages)
    self.num_features = embed_dim * 2 ** (len(depths) - 1)
    self.norm = nnx.LayerNorm(self.num_features, epsilon=LN_EPS, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(self.num_features, num_classes, dtype=dtype, kernel_init=_normal(),
                           rngs=rngs)

  def blocks(self) -> list[SwinTransformerBlock]:
    """Every block over all stages, in order (the order of ``attention_grad_keep``)."""
    return [blk for stage in self.layers for blk in stage.blocks]

  def __call__(self, x, *, train: bool = False, key=None, return_features: bool = False,
               attention_grad_keep=None):
    """Logits float32 ``[B, K]`` of ``x`` float32 ``[B, H, W, C]`` in [0, 1].

    Args:
      x: images of ``image_size``.
      train, key: the train view applies the drop path (``drop_path_rate >
        0``) with ``key``; without a key, or in the eval view, none.
      return_features: also return the float32 ``[B, D]`` mean token after
        the final LayerNorm (the head's input).
      attention_grad_keep: None, or a ``[num_attention_blocks]`` bool / 0-1
        array: block ``i``'s attention branch passes gradient only if
        ``keep[i]`` (ARD; forward values unchanged).

    Raises:
      ConfigError: ``x`` is not of ``image_size``.
      ValueError: ``attention_grad_keep`` of the wrong shape.
    """
    if tuple(x.shape[1:3]) != self.image_size:
      raise ConfigError(f"this Swin was built for {self.image_size[0]}x{self.image_size[1]} "
                        f"images, got {x.shape[1]}x{x.shape[2]}; build it with "
                        f"image_size={tuple(x.shape[1:3])}")
    n = self.num_attention_blocks
    if attention_grad_keep is not None and jnp.shape(attention_grad_keep) != (n,):
      raise ValueError(f"attention_grad_keep must have shape ({n},), got "
                       f"{jnp.shape(attention_grad_keep)}")
    out = self.normalize(x)
    if self.dtype is not None:
      out = out.astype(self.dtype)
    b = out.shape[0]
    out = self.patch_embed(out).reshape(b, *self.grid, -1)
    i = 0
    for stage in self.layers:
      if stage.downsample is not None:
        out = stage.downsample(out)
      for blk in stage.blocks:
        keep = None if attention_grad_keep is None else attention_grad_keep[i]
        drop_key = jax.random.fold_in(key, i) if train and key is not None else None
        out = blk(out, keep, drop_key)
        i += 1
    feats = self.norm(out).mean(axis=(1, 2))
    return classifier_head(self.head, feats, return_features)


def _swin(embed_dim: int, depths, num_heads, window_size: int = 7, patch_size: int = 4,
          image_size=224, **fixed):
  """A constructor with these defaults; any of them can be overridden by keyword."""
  return functools.partial(SwinTransformer, embed_dim=embed_dim, depths=tuple(depths),
                           num_heads=tuple(num_heads), window_size=window_size,
                           patch_size=patch_size, image_size=image_size, **fixed)


# name -> constructor; timm's configurations (swin_transformer.py) and a CPU-sized CIFAR one.
SWIN_MODELS = {
    "swin_t": _swin(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": _swin(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": _swin(128, (2, 2, 18, 2), (4, 8, 16, 32)),
    # 32 x 32, patch 2 (16 x 16 tokens), window 4, three stages 16 -> 8 -> 4.
    "swin_cifar_tiny": _swin(48, (2, 2, 2), (3, 6, 12), window_size=4, patch_size=2,
                             image_size=32, mlp_ratio=2.0),
}
SWIN_MODELS.update(swin_tiny_patch4_window7_224=SWIN_MODELS["swin_t"],
                   swin_small_patch4_window7_224=SWIN_MODELS["swin_s"],
                   swin_base_patch4_window7_224=SWIN_MODELS["swin_b"])


def swin_blocks(model: SwinTransformer) -> Sequence[SwinTransformerBlock]:
  """The blocks of ``model`` over all stages, in order."""
  return model.blocks()
