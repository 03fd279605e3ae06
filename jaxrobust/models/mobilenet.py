"""MobileNetV2, CIFAR variant (``kuangliu/pytorch-cifar:models/mobilenetv2.py``,
the student of ARD/RSLAD): stride-1 stem and second stage, 1280-d head.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrobust.models.layers import Normalize, batch_norm, classifier_head, conv, linear

# (expansion, out_planes, num_blocks, stride)
CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nnx.Module):
  """1x1 expand - 3x3 depthwise - 1x1 project, with BN; shortcut at stride 1."""

  def __init__(self, cin, cout, expansion, stride, *, rngs, dtype=None):
    hidden = expansion * cin
    self.stride = stride
    self.conv1 = conv(cin, hidden, 1, rngs=rngs, padding="VALID", dtype=dtype)
    self.bn1 = batch_norm(hidden, rngs=rngs, dtype=dtype)
    self.conv2 = conv(hidden, hidden, 3, stride, rngs=rngs, groups=hidden, dtype=dtype)
    self.bn2 = batch_norm(hidden, rngs=rngs, dtype=dtype)
    self.conv3 = conv(hidden, cout, 1, rngs=rngs, padding="VALID", dtype=dtype)
    self.bn3 = batch_norm(cout, rngs=rngs, dtype=dtype)
    if stride == 1 and cin != cout:
      self.sc_conv = conv(cin, cout, 1, rngs=rngs, padding="VALID", dtype=dtype)
      self.sc_bn = batch_norm(cout, rngs=rngs, dtype=dtype)
    else:
      self.sc_conv = self.sc_bn = None

  def __call__(self, x, train):
    ura = not train
    out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    out = jax.nn.relu(self.bn2(self.conv2(out), use_running_average=ura))
    out = self.bn3(self.conv3(out), use_running_average=ura)
    if self.stride == 1:
      sc = x if self.sc_conv is None else self.sc_bn(self.sc_conv(x), use_running_average=ura)
      out = out + sc
    return out


class MobileNetV2(nnx.Module):
  """MobileNetV2 for 32x32 inputs. ``cfg`` and ``head`` shrink it for tests."""

  def __init__(self, num_classes: int = 10, in_channels: int = 3, cfg=CIFAR_CFG,
               stem: int = 32, head: int = 1280, mean=None, std=None, dtype=None, *,
               rngs: nnx.Rngs):
    self.normalize = Normalize(mean, std)
    self.dtype = dtype
    self.conv1 = conv(in_channels, stem, 3, 1, rngs=rngs, dtype=dtype)
    self.bn1 = batch_norm(stem, rngs=rngs, dtype=dtype)
    blocks, cin = [], stem
    for expansion, cout, n, stride in cfg:
      for j in range(n):
        blocks.append(InvertedResidual(cin, cout, expansion, stride if j == 0 else 1,
                                       rngs=rngs, dtype=dtype))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.conv2 = conv(cin, head, 1, rngs=rngs, padding="VALID", dtype=dtype)
    self.bn2 = batch_norm(head, rngs=rngs, dtype=dtype)
    self.linear = linear(head, num_classes, rngs=rngs, dtype=dtype)

  def __call__(self, x, *, train: bool = False, key=None, return_features: bool = False):
    del key
    ura = not train
    out = self.normalize(x)
    if self.dtype is not None:
      out = out.astype(self.dtype)
    out = jax.nn.relu(self.bn1(self.conv1(out), use_running_average=ura))
    for blk in self.blocks:
      out = blk(out, train)
    out = jax.nn.relu(self.bn2(self.conv2(out), use_running_average=ura))
    return classifier_head(self.linear, jnp.mean(out, axis=(1, 2)), return_features)
