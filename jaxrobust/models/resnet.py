"""PreAct-ResNet and ResNet with the CIFAR stem (3x3 conv, no max-pool).

Sources: He et al. 2016 (identity mappings, pre-activation); the CIFAR variants
follow ``kuangliu/pytorch-cifar`` as used by Rice et al. 2020 / AWP
(``AT_AWP/preactresnet.py``) and RSLAD/IAD (``models/resnet.py``).
All models map float32 ``[B, H, W, C]`` in [0, 1] to float32 logits ``[B, K]``;
``train=True`` uses batch statistics and updates BatchNorm running averages,
``train=False`` uses the running averages (the eval view).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrobust.models.layers import Normalize, batch_norm, classifier_head, conv, linear


class PreActBlock(nnx.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a 1x1 projection shortcut when needed."""

  def __init__(self, cin, cout, stride, *, rngs, dtype=None):
    self.bn1 = batch_norm(cin, rngs=rngs, dtype=dtype)
    self.conv1 = conv(cin, cout, 3, stride, rngs=rngs, dtype=dtype)
    self.bn2 = batch_norm(cout, rngs=rngs, dtype=dtype)
    self.conv2 = conv(cout, cout, 3, 1, rngs=rngs, dtype=dtype)
    self.shortcut = (conv(cin, cout, 1, stride, rngs=rngs, padding="VALID", dtype=dtype)
                     if stride != 1 or cin != cout else None)

  def __call__(self, x, train):
    out = jax.nn.relu(self.bn1(x, use_running_average=not train))
    sc = self.shortcut(out) if self.shortcut is not None else x
    out = self.conv1(out)
    out = self.conv2(jax.nn.relu(self.bn2(out, use_running_average=not train)))
    return out + sc


class BasicBlock(nnx.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN when needed), ReLU."""

  def __init__(self, cin, cout, stride, *, rngs, dtype=None):
    self.conv1 = conv(cin, cout, 3, stride, rngs=rngs, dtype=dtype)
    self.bn1 = batch_norm(cout, rngs=rngs, dtype=dtype)
    self.conv2 = conv(cout, cout, 3, 1, rngs=rngs, dtype=dtype)
    self.bn2 = batch_norm(cout, rngs=rngs, dtype=dtype)
    if stride != 1 or cin != cout:
      self.sc_conv = conv(cin, cout, 1, stride, rngs=rngs, padding="VALID", dtype=dtype)
      self.sc_bn = batch_norm(cout, rngs=rngs, dtype=dtype)
    else:
      self.sc_conv = self.sc_bn = None

  def __call__(self, x, train):
    ura = not train
    out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    out = self.bn2(self.conv2(out), use_running_average=ura)
    sc = x if self.sc_conv is None else self.sc_bn(self.sc_conv(x), use_running_average=ura)
    return jax.nn.relu(out + sc)


class _CifarResNetBase(nnx.Module):
  preact: bool = False

  def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2),
               widths: Sequence[int] = (64, 128, 256, 512), num_classes: int = 10,
               in_channels: int = 3, mean=None, std=None, dtype=None, *, rngs: nnx.Rngs):
    self.normalize = Normalize(mean, std)
    self.dtype = dtype
    self.conv1 = conv(in_channels, widths[0], 3, 1, rngs=rngs, dtype=dtype)
    if not self.preact:
      self.bn1 = batch_norm(widths[0], rngs=rngs, dtype=dtype)
    block = PreActBlock if self.preact else BasicBlock
    blocks, cin = [], widths[0]
    for i, (n, w) in enumerate(zip(num_blocks, widths)):
      for j in range(n):
        blocks.append(block(cin, w, 2 if (i > 0 and j == 0) else 1, rngs=rngs, dtype=dtype))
        cin = w
    self.blocks = nnx.List(blocks)
    if self.preact:
      self.bn_final = batch_norm(cin, rngs=rngs, dtype=dtype)
    self.linear = linear(cin, num_classes, rngs=rngs, dtype=dtype)

  def __call__(self, x, *, train: bool = False, key=None, return_features: bool = False):
    del key
    out = self.normalize(x)
    if self.dtype is not None:
      out = out.astype(self.dtype)
    out = self.conv1(out)
    if not self.preact:
      out = jax.nn.relu(self.bn1(out, use_running_average=not train))
    for blk in self.blocks:
      out = blk(out, train)
    if self.preact:
      out = jax.nn.relu(self.bn_final(out, use_running_average=not train))
    return classifier_head(self.linear, jnp.mean(out, axis=(1, 2)), return_features)


class PreActResNet(_CifarResNetBase):
  """Pre-activation ResNet (CIFAR stem). ``PreActResNet()`` is PreAct-ResNet-18."""
  preact = True


class ResNet(_CifarResNetBase):
  """ResNet with basic blocks and the CIFAR stem. ``ResNet()`` is ResNet-18."""
  preact = False
