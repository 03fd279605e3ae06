"""Small CNNs without BatchNorm.

* :class:`SmallCNN`: the TRADES MNIST model (``yaodongyu/TRADES:models/
  small_cnn.py``): 4 VALID 3x3 convs (32, 32, 64, 64) with two 2x2 max-pools,
  then 200-200 fully connected with dropout 0.5 before the second FC layer.
* :class:`SimpleCNN`: a fast CIFAR network for CPU-scale runs (conv-BN-ReLU
  stacks of widths ``widths`` with max-pools, global average pool, linear).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrobust.models.layers import Normalize, batch_norm, classifier_head, conv, linear


def _max_pool(x):
  """2x2/2 max-pool as reshape + max (floor on odd sizes).

  Same values as ``nnx.max_pool(x, (2, 2), (2, 2))``; its gradient avoids
  XLA's select-and-scatter, about 5x faster on CPU (BENCHMARKS.md).
  """
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class SmallCNN(nnx.Module):
  """TRADES SmallCNN for 28x28x1 inputs. Dropout needs ``key`` when training."""

  def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
               channels: Sequence[int] = (32, 32, 64, 64), hidden: int = 200,
               drop_rate: float = 0.5, mean=None, std=None, dtype=None, *, rngs: nnx.Rngs):
    c1, c2, c3, c4 = channels
    self.normalize = Normalize(mean, std)
    self.dtype = dtype
    self.drop_rate = drop_rate
    v = "VALID"
    self.conv1 = conv(in_channels, c1, 3, rngs=rngs, padding=v, bias=True, dtype=dtype)
    self.conv2 = conv(c1, c2, 3, rngs=rngs, padding=v, bias=True, dtype=dtype)
    self.conv3 = conv(c2, c3, 3, rngs=rngs, padding=v, bias=True, dtype=dtype)
    self.conv4 = conv(c3, c4, 3, rngs=rngs, padding=v, bias=True, dtype=dtype)
    s = ((image_size - 4) // 2 - 4) // 2
    self.fc1 = linear(c4 * s * s, hidden, rngs=rngs, dtype=dtype)
    self.fc2 = linear(hidden, hidden, rngs=rngs, dtype=dtype)
    self.fc3 = linear(hidden, num_classes, rngs=rngs, dtype=dtype)

  def __call__(self, x, *, train: bool = False, key=None, return_features: bool = False):
    out = self.normalize(x)
    if self.dtype is not None:
      out = out.astype(self.dtype)
    out = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(out))))
    out = _max_pool(out)
    out = jax.nn.relu(self.conv4(jax.nn.relu(self.conv3(out))))
    out = _max_pool(out)
    out = out.reshape(out.shape[0], -1)
    out = jax.nn.relu(self.fc1(out))
    if train and key is not None and self.drop_rate > 0:
      keep = jax.random.bernoulli(key, 1.0 - self.drop_rate, out.shape)
      out = jnp.where(keep, out / (1.0 - self.drop_rate), 0.0)
    out = jax.nn.relu(self.fc2(out))
    return classifier_head(self.fc3, out, return_features)


class SimpleCNN(nnx.Module):
  """conv-BN-ReLU blocks; a max-pool after each group of ``convs_per_stage``."""

  def __init__(self, num_classes: int = 10, in_channels: int = 3,
               widths: Sequence[int] = (32, 64, 128), convs_per_stage: int = 1,
               mean=None, std=None, dtype=None, *, rngs: nnx.Rngs):
    self.normalize = Normalize(mean, std)
    self.dtype = dtype
    convs, bns, cin = [], [], in_channels
    for w in widths:
      for _ in range(convs_per_stage):
        convs.append(conv(cin, w, 3, rngs=rngs, dtype=dtype))
        bns.append(batch_norm(w, rngs=rngs, dtype=dtype))
        cin = w
    self.convs, self.bns = nnx.List(convs), nnx.List(bns)
    self.convs_per_stage = convs_per_stage
    self.linear = linear(cin, num_classes, rngs=rngs, dtype=dtype)

  def __call__(self, x, *, train: bool = False, key=None, return_features: bool = False):
    del key
    out = self.normalize(x)
    if self.dtype is not None:
      out = out.astype(self.dtype)
    for i, (c, bn) in enumerate(zip(self.convs, self.bns)):
      out = jax.nn.relu(bn(c(out), use_running_average=not train))
      if (i + 1) % self.convs_per_stage == 0:
        out = _max_pool(out)
    return classifier_head(self.linear, jnp.mean(out, axis=(1, 2)), return_features)
