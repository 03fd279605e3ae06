"""Vision Transformers (ViT, DeiT) in Flax NNX, with the attention-gradient gate of ARD.

Architecture (Dosovitskiy et al. 2021; DeiT, Touvron et al. 2021; the timm
``VisionTransformer`` that ``mo666666/When-Adversarial-Training-Meets-Vision-
Transformers:model_for_cifar/{vit,deit}.py`` builds on): non-overlapping
``patch_size`` patches linearly embedded, a learned class token prepended, a
learned position embedding added, ``depth`` pre-LayerNorm blocks::

    x = x + gate_i(Attention(LayerNorm_0(x)))     # the ARD gate, see below
    x = x + Mlp(LayerNorm_2(x))                    # Dense -> GELU -> Dense

then a final LayerNorm, the class token as the feature (DeiT / ViT "token"
pooling) and a linear head. No dropout / drop-path: Mo et al. train with both
at 0 (METHODS 2.12), so the model is deterministic in both BatchNorm views
(``stochastic = False``; it has no BatchNorm either). GELU is the exact (erf)
GELU of ``torch.nn.GELU`` (timm weights); ``gelu_approximate=True`` gives the
tanh form of the Flax / big_vision code.

Parameter names follow the Google ViT / augreg checkpoints
(``google-research/vision_transformer`` ``.npz``, e.g.
``Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel``
``[D, heads, D/heads]``), so a checkpoint maps onto :func:`nnx.state` by name
(``/`` -> ``.``): ``embedding`` (HWIO kernel ``[p, p, C, D]``), ``cls``,
``Transformer.posembed_input.pos_embedding`` ``[1, 1 + N, D]``,
``Transformer.encoderblock_{i}.{LayerNorm_0, MultiHeadDotProductAttention_1.
{query,key,value,out}, LayerNorm_2, MlpBlock_3.{Dense_0,Dense_1}}``,
``Transformer.encoder_norm``, ``head``. (big_vision checkpoints use the
indices ``MultiHeadDotProductAttention_0`` / ``LayerNorm_1`` / ``MlpBlock_0``
and a top-level ``pos_embedding``: a rename.)

**ARD gate** (attention random dropping, Mo et al. 2022; official code: a
backward hook on each block's ``drop_path``, which wraps only the attention
residual branch, ``train_cifar.py``): ``model(x, attention_grad_keep=keep)``
with ``keep`` a ``[depth]`` boolean (or 0/1) array makes block ``i`` add
``where(keep[i], a, stop_gradient(a))`` for its attention branch ``a``: the
forward value is the same bit for bit, only the gradient through a dropped
block's attention branch is cut (the MLP branch is never gated).
``attention_grad_keep=None`` (the default, every training / evaluation pass)
is the plain model. The mask is drawn per attack step by
:func:`jaxrobust.methods.vit_recipe.attention_random_drop_logits_fn`.

Sizes: ``image_size`` must be a multiple of ``patch_size`` and give at least
4 x 4 tokens (16 x 16 patches on 32 x 32 CIFAR images leave 2 x 2 tokens and
robust accuracy collapses, official repo issue #6): else ConfigError.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.models.layers import Normalize, classifier_head

MIN_TOKENS_PER_SIDE = 4
_INIT_STD = 0.02  # timm: trunc_normal_(std=.02) (bounds +-2, i.e. +-100 std: a normal).


def _normal():
  return nnx.initializers.normal(_INIT_STD)


def _pair(v) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(s) for s in v)
  if len(v) != 2:
    raise ConfigError(f"image_size / patch_size must be an int or (H, W), got {v}")
  return v


def token_grid(image_size, patch_size) -> tuple[int, int]:
  """The ``(rows, cols)`` patch grid of ``image_size`` cut into ``patch_size`` patches.

  Args:
    image_size: int or ``(H, W)``, pixels.
    patch_size: int or ``(ph, pw)``, pixels.

  Returns:
    ``(H // ph, W // pw)``.

  Raises:
    ConfigError: a size not divisible by the patch, or fewer than 4 x 4 tokens.
  """
  (h, w), (ph, pw) = _pair(image_size), _pair(patch_size)
  if ph < 1 or pw < 1 or h % ph or w % pw:
    raise ConfigError(f"image size {h}x{w} is not a multiple of patch size {ph}x{pw}; "
                      f"pick a patch size that divides the image (e.g. 4 for 32x32 CIFAR)")
  gh, gw = h // ph, w // pw
  if gh < MIN_TOKENS_PER_SIDE or gw < MIN_TOKENS_PER_SIDE:
    raise ConfigError(f"image size {h}x{w} with patch size {ph}x{pw} gives a {gh}x{gw} token "
                      f"grid; a ViT needs at least {MIN_TOKENS_PER_SIDE}x{MIN_TOKENS_PER_SIDE} "
                      f"tokens: use a smaller patch (patch 4 on 32x32 images, as Mo et al.)")
  return gh, gw


class PatchEmbedding(nnx.Module):
  """Non-overlapping patch embedding, the stride-``p`` ``p x p`` convolution as a matmul.

  ``kernel`` float32 ``[ph, pw, C, D]`` (HWIO, the Google checkpoint layout)
  and ``bias`` ``[D]``; ``[B, H, W, C] -> [B, (H/ph)(W/pw), D]`` in row-major
  patch order (the ``flatten(2).transpose(1, 2)`` order of timm).
  Initialised as PyTorch's ``Conv2d`` (uniform +-1/sqrt(fan_in)).
  """

  def __init__(self, in_channels: int, width: int, patch_size, *, dtype=None,
               rngs: nnx.Rngs):
    ph, pw = _pair(patch_size)
    fan_in = ph * pw * in_channels
    self.patch_size = (ph, pw)
    self.dtype = dtype
    self.kernel = nnx.Param(nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")(
        rngs.params(), (ph, pw, in_channels, width), jnp.float32))
    bound = 1.0 / math.sqrt(fan_in)
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (width,), jnp.float32,
                                             -bound, bound))

  def __call__(self, x):
    b, h, w, c = x.shape
    ph, pw = self.patch_size
    x = x.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // ph) * (w // pw), ph * pw * c)
    kernel, bias = self.kernel[...], self.bias[...]
    if self.dtype is not None:
      kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    return x @ kernel.reshape(ph * pw * c, -1) + bias


class MultiHeadDotProductAttention(nnx.Module):
  """Softmax self-attention with per-head ``query/key/value/out`` projections.

  ``query/key/value.kernel`` ``[D, heads, D/heads]`` (bias ``[heads,
  D/heads]`` when ``qkv_bias``), ``out.kernel`` ``[heads, D/heads, D]`` with
  bias ``[D]`` (timm: ``qkv`` split in three, ``proj``). Logits are scaled by
  ``qk_scale`` (default ``(D/heads) ** -0.5``).
  """

  def __init__(self, width: int, num_heads: int, *, qkv_bias: bool = True,
               qk_scale: float | None = None, dtype=None, rngs: nnx.Rngs):
    if width % num_heads:
      raise ConfigError(f"ViT width {width} is not divisible by num_heads {num_heads}")
    head_dim = width // num_heads
    self.num_heads = num_heads
    self.scale = float(qk_scale) if qk_scale else head_dim ** -0.5
    dense = functools.partial(nnx.LinearGeneral, dtype=dtype, kernel_init=_normal(),
                              rngs=rngs)
    self.query = dense(width, (num_heads, head_dim), use_bias=qkv_bias)
    self.key = dense(width, (num_heads, head_dim), use_bias=qkv_bias)
    self.value = dense(width, (num_heads, head_dim), use_bias=qkv_bias)
    self.out = dense((num_heads, head_dim), width, axis=(-2, -1))

  def __call__(self, x):
    q, k, v = self.query(x), self.key(x), self.value(x)  # [B, N, heads, head_dim]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(self.scale, q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v))


class MlpBlock(nnx.Module):
  """``Dense_1(GELU(Dense_0(x)))``: ``D -> hidden -> D``."""

  def __init__(self, width: int, hidden: int, *, gelu_approximate: bool = False, dtype=None,
               rngs: nnx.Rngs):
    self.gelu_approximate = gelu_approximate
    self.Dense_0 = nnx.Linear(width, hidden, dtype=dtype, kernel_init=_normal(), rngs=rngs)
    self.Dense_1 = nnx.Linear(hidden, width, dtype=dtype, kernel_init=_normal(), rngs=rngs)

  def __call__(self, x):
    return self.Dense_1(jax.nn.gelu(self.Dense_0(x), approximate=self.gelu_approximate))


def attention_gate(a, keep):
  """The ARD gradient gate: ``a`` in the forward pass; gradient only where ``keep``.

  Args:
    a: the attention residual branch, ``[B, N, D]``.
    keep: None (no gate) or a scalar bool / 0-1 number (traced or not),
      shared by the whole batch.

  Returns:
    ``where(keep, a, stop_gradient(a))``: the same values as ``a`` (bit for
    bit); its gradient is ``a``'s when ``keep`` else zero.
  """
  if keep is None:
    return a
  return jnp.where(jnp.asarray(keep).astype(bool), a, jax.lax.stop_gradient(a))


class EncoderBlock(nnx.Module):
  """Pre-LN transformer block; the attention branch carries the ARD gate."""

  def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, qkv_bias: bool,
               qk_scale: float | None, ln_eps: float, gelu_approximate: bool, dtype=None,
               rngs: nnx.Rngs):
    self.LayerNorm_0 = nnx.LayerNorm(width, epsilon=ln_eps, dtype=dtype, rngs=rngs)
    self.MultiHeadDotProductAttention_1 = MultiHeadDotProductAttention(
        width, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, dtype=dtype, rngs=rngs)
    self.LayerNorm_2 = nnx.LayerNorm(width, epsilon=ln_eps, dtype=dtype, rngs=rngs)
    self.MlpBlock_3 = MlpBlock(width, int(width * mlp_ratio), gelu_approximate=gelu_approximate,
                               dtype=dtype, rngs=rngs)

  def __call__(self, x, attention_keep=None):
    a = self.MultiHeadDotProductAttention_1(self.LayerNorm_0(x))
    x = x + attention_gate(a, attention_keep)
    return x + self.MlpBlock_3(self.LayerNorm_2(x))


class PositionEmbedding(nnx.Module):
  """Learned position embedding ``pos_embedding`` ``[1, 1 + N, D]`` (class token first)."""

  def __init__(self, num_tokens: int, width: int, *, rngs: nnx.Rngs):
    self.pos_embedding = nnx.Param(_normal()(rngs.params(), (1, num_tokens, width), jnp.float32))

  def __call__(self, x):
    return x + self.pos_embedding[...].astype(x.dtype)


class Encoder(nnx.Module):
  """``posembed_input``, ``encoderblock_0 .. encoderblock_{depth-1}``, ``encoder_norm``."""

  def __init__(self, num_tokens: int, width: int, depth: int, num_heads: int,
               mlp_ratio: float, *, qkv_bias: bool, qk_scale: float | None, ln_eps: float,
               gelu_approximate: bool, dtype=None, rngs: nnx.Rngs):
    self.depth = depth
    self.posembed_input = PositionEmbedding(num_tokens, width, rngs=rngs)
    for i in range(depth):
      setattr(self, f"encoderblock_{i}", EncoderBlock(
          width, num_heads, mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, ln_eps=ln_eps,
          gelu_approximate=gelu_approximate, dtype=dtype, rngs=rngs))
    self.encoder_norm = nnx.LayerNorm(width, epsilon=ln_eps, dtype=dtype, rngs=rngs)

  def blocks(self) -> list[EncoderBlock]:
    """The encoder blocks in order."""
    return [getattr(self, f"encoderblock_{i}") for i in range(self.depth)]

  def __call__(self, x, attention_grad_keep=None):
    x = self.posembed_input(x)
    for i, block in enumerate(self.blocks()):
      x = block(x, None if attention_grad_keep is None else attention_grad_keep[i])
    return self.encoder_norm(x)


class VisionTransformer(nnx.Module):
  """ViT / DeiT classifier with class-token pooling (see the module docstring).

  Args:
    num_classes: K.
    in_channels: C of the NHWC input.
    image_size: int or ``(H, W)``: the input size the position embedding is
      built for (inputs of another size raise ConfigError).
    patch_size: int or ``(ph, pw)``; must divide ``image_size`` and leave at
      least 4 x 4 tokens.
    width: token dimension D.
    depth: number of encoder blocks.
    num_heads: attention heads (``width % num_heads == 0``).
    mlp_ratio: MLP hidden size / D (``int(D * mlp_ratio)``).
    qkv_bias: biases on query/key/value.
    qk_scale: attention logit scale; None -> ``(D / heads) ** -0.5``.
    ln_eps: LayerNorm epsilon (1e-6 for ViT/DeiT, 1e-5 for timm's old ViT-S).
    gelu_approximate: tanh GELU instead of the exact erf GELU.
    mean, std: normalisation inside the model.
    dtype: compute dtype; parameters and logits stay float32.
    rngs: initialisation.

  Raises:
    ConfigError: bad sizes (see :func:`token_grid`) or ``width % num_heads``.
  """

  stochastic = False  # no dropout / drop-path: deterministic in both views.

  def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size=32,
               patch_size=4, width: int = 192, depth: int = 12, num_heads: int = 3,
               mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
               ln_eps: float = 1e-6, gelu_approximate: bool = False, mean=None, std=None,
               dtype=None, *, rngs: nnx.Rngs):
    gh, gw = token_grid(image_size, patch_size)
    self.image_size = _pair(image_size)
    self.patch_size = _pair(patch_size)
    self.grid = (gh, gw)
    self.depth = int(depth)
    self.width = int(width)
    self.dtype = dtype
    self.normalize = Normalize(mean, std)
    self.embedding = PatchEmbedding(in_channels, width, patch_size, dtype=dtype, rngs=rngs)
    self.cls = nnx.Param(_normal()(rngs.params(), (1, 1, width), jnp.float32))
    self.Transformer = Encoder(1 + gh * gw, width, depth, num_heads, mlp_ratio,
                               qkv_bias=qkv_bias, qk_scale=qk_scale, ln_eps=ln_eps,
                               gelu_approximate=gelu_approximate, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, dtype=dtype, kernel_init=_normal(), rngs=rngs)

  def __call__(self, x, *, train: bool = False, key=None, return_features: bool = False,
               attention_grad_keep=None):
    """Logits float32 ``[B, K]`` of ``x`` float32 ``[B, H, W, C]`` in [0, 1].

    Args:
      x: images of ``image_size``.
      train, key: accepted for the model convention; the ViT has no
        BatchNorm, dropout or other randomness, so both views are the same.
      return_features: also return the float32 ``[B, D]`` class token after
        the final LayerNorm (the head's input).
      attention_grad_keep: None, or a ``[depth]`` bool / 0-1 array: block
        ``i``'s attention branch passes gradient only if ``keep[i]`` (ARD;
        forward values unchanged).

    Raises:
      ConfigError: ``x`` is not of ``image_size``.
    """
    del train, key
    if tuple(x.shape[1:3]) != self.image_size:
      raise ConfigError(f"this ViT was built for {self.image_size[0]}x{self.image_size[1]} "
                        f"images, got {x.shape[1]}x{x.shape[2]}; build it with "
                        f"image_size={tuple(x.shape[1:3])}")
    if attention_grad_keep is not None and jnp.shape(attention_grad_keep) != (self.depth,):
      raise ValueError(f"attention_grad_keep must have shape ({self.depth},), got "
                       f"{jnp.shape(attention_grad_keep)}")
    out = self.normalize(x)
    if self.dtype is not None:
      out = out.astype(self.dtype)
    out = self.embedding(out)
    cls = jnp.broadcast_to(self.cls[...].astype(out.dtype), (out.shape[0], 1, out.shape[-1]))
    out = self.Transformer(jnp.concatenate([cls, out], axis=1), attention_grad_keep)
    return classifier_head(self.head, out[:, 0], return_features)


def _vit(width: int, depth: int, num_heads: int, patch_size: int = 16, image_size=224,
         **fixed):
  """A constructor with these defaults; any of them can be overridden by keyword."""
  defaults = dict(width=width, depth=depth, num_heads=num_heads, patch_size=patch_size,
                  image_size=image_size, **fixed)
  return functools.partial(VisionTransformer, **defaults)


# name -> constructor(num_classes=, in_channels=, mean=, std=, dtype=, rngs=, image_size=,
# patch_size=, ...). image_size defaults to 224 (ImageNet) except for the CIFAR-sized model;
# the trainer passes the data's image size (jaxrobust.train.builders.model_kwargs).
VIT_MODELS = {
    # Google ViT / augreg (Dosovitskiy et al.; Steiner et al. "How to train your ViT").
    "vit_ti": _vit(192, 12, 3),
    "vit_s": _vit(384, 12, 6),
    "vit_b": _vit(768, 12, 12),
    # DeiT (Touvron et al. 2021): the same network, class-token head, timm names.
    "deit_ti": _vit(192, 12, 3),
    "deit_s": _vit(384, 12, 6),
    # timm's OLD vit_small_patch16_224 used by Mo et al. (model_for_cifar/vit.py:537-545):
    # width 768, depth 8, 8 heads, MLP 3, no qkv bias, torch LayerNorm (eps 1e-5) and, with
    # pretrained weights, qk_scale 768 ** -0.5 (from scratch the official code uses
    # head_dim ** -0.5: pass qk_scale=None).
    "vit_small_patch16_224": _vit(768, 8, 8, mlp_ratio=3.0, qkv_bias=False,
                                  qk_scale=768 ** -0.5, ln_eps=1e-5),
    # CPU-sized CIFAR ViT for :local runs: 32x32, patch 4 (8x8 tokens), width 128, depth 4.
    "vit_cifar_tiny": _vit(128, 4, 4, patch_size=4, image_size=32, mlp_ratio=2.0),
}
# The official code's model names (timm's), same constructors.
VIT_MODELS.update(deit_tiny_patch16_224=VIT_MODELS["deit_ti"],
                  deit_small_patch16_224=VIT_MODELS["deit_s"],
                  vit_base_patch16_224=VIT_MODELS["vit_b"])


def vit_blocks(model: VisionTransformer) -> Sequence[EncoderBlock]:
  """The encoder blocks of ``model`` in order."""
  return model.Transformer.blocks()
