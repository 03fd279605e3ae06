"""WideResNet-depth-width as used by TRADES/MART/AWP (``yaodongyu/TRADES:
models/wideresnet.py``): pre-activation blocks, widths 16, 16k, 32k, 64k,
``(depth - 4) / 6`` blocks per group. Inputs float32 NHWC in [0, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrobust.models.layers import Normalize, batch_norm, classifier_head, conv, linear


class WideBlock(nnx.Module):
  """BN-ReLU-conv-BN-ReLU-conv; the shortcut takes the activated input."""

  def __init__(self, cin, cout, stride, *, rngs, dtype=None):
    self.bn1 = batch_norm(cin, rngs=rngs, dtype=dtype)
    self.conv1 = conv(cin, cout, 3, stride, rngs=rngs, dtype=dtype)
    self.bn2 = batch_norm(cout, rngs=rngs, dtype=dtype)
    self.conv2 = conv(cout, cout, 3, 1, rngs=rngs, dtype=dtype)
    self.shortcut = (conv(cin, cout, 1, stride, rngs=rngs, padding="VALID", dtype=dtype)
                     if cin != cout or stride != 1 else None)

  def __call__(self, x, train):
    o = jax.nn.relu(self.bn1(x, use_running_average=not train))
    sc = x if self.shortcut is None else self.shortcut(o)
    out = self.conv1(o)
    out = self.conv2(jax.nn.relu(self.bn2(out, use_running_average=not train)))
    return out + sc


class WideResNet(nnx.Module):
  """WRN-depth-width. ``WideResNet(34, 10)`` is the TRADES WRN-34-10."""

  def __init__(self, depth: int = 34, width: int = 10, num_classes: int = 10,
               in_channels: int = 3, mean=None, std=None, dtype=None, *, rngs: nnx.Rngs):
    if (depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    widths = (16, 16 * width, 32 * width, 64 * width)
    self.normalize = Normalize(mean, std)
    self.dtype = dtype
    self.conv1 = conv(in_channels, widths[0], 3, 1, rngs=rngs, dtype=dtype)
    blocks, cin = [], widths[0]
    for g, w in enumerate(widths[1:]):
      for j in range(n):
        blocks.append(WideBlock(cin, w, (1 if g == 0 else 2) if j == 0 else 1,
                                rngs=rngs, dtype=dtype))
        cin = w
    self.blocks = nnx.List(blocks)
    self.bn = batch_norm(cin, rngs=rngs, dtype=dtype)
    self.linear = linear(cin, num_classes, rngs=rngs, dtype=dtype)

  def __call__(self, x, *, train: bool = False, key=None, return_features: bool = False):
    del key
    out = self.normalize(x)
    if self.dtype is not None:
      out = out.astype(self.dtype)
    out = self.conv1(out)
    for blk in self.blocks:
      out = blk(out, train)
    out = jax.nn.relu(self.bn(out, use_running_average=not train))
    return classifier_head(self.linear, jnp.mean(out, axis=(1, 2)), return_features)
