"""Shared layers: in-model normalisation and PyTorch-equivalent defaults."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

# PyTorch BatchNorm2d(momentum=0.1) keeps 0.9 of the running average.
BN_MOMENTUM = 0.9
BN_EPS = 1e-5


class Normalize(nnx.Module):
  """``(x - mean) / std`` per channel; constants, not parameters.

  Inputs are float32 NHWC in [0, 1], so attack budgets stay in pixel units.
  """

  def __init__(self, mean=None, std=None):
    self.mean = tuple(mean) if mean is not None else None
    self.std = tuple(std) if std is not None else None

  def __call__(self, x):
    if self.mean is None:
      return x
    return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


def conv(cin, cout, k, stride=1, *, rngs, padding=None, bias=False, dtype=None, groups=1):
  """Conv with PyTorch's ``padding=k//2`` default and He-normal (fan_out) init."""
  pad = [(k // 2, k // 2)] * 2 if padding is None else padding
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=pad, use_bias=bias,
                  feature_group_count=groups, dtype=dtype,
                  kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
                  rngs=rngs)


def batch_norm(c, *, rngs, dtype=None):
  return nnx.BatchNorm(c, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype, rngs=rngs)


def linear(cin, cout, *, rngs, dtype=None):
  return nnx.Linear(cin, cout, dtype=dtype, rngs=rngs)
