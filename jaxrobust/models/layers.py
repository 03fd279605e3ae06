"""Shared layers: in-model normalisation and PyTorch-equivalent defaults."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
# timm's IMAGENET_DEFAULT_MEAN / STD (DeiT, Swin; Mo et al.'s Imagenette / ImageNet loaders).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


ENV_CPU_CONV_VJP = "JAXROBUST_CPU_CONV_VJP"
_NHWC_HWIO = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def _nhwc_conv(x, w, strides, padding, rhs_dilation, precision, kernel_spec="HWIO"):
  return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=rhs_dilation,
                                  dimension_numbers=("NHWC", kernel_spec, "NHWC"),
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _cpu_conv(x, w, strides, padding, rhs_dilation, precision):
  return _nhwc_conv(x, w, strides, padding, rhs_dilation, precision)


def _cpu_conv_fwd(x, w, strides, padding, rhs_dilation, precision):
  return _nhwc_conv(x, w, strides, padding, rhs_dilation, precision), (x, w)


def _cpu_conv_bwd(strides, padding, rhs_dilation, precision, res, g):
  x, w = res
  # The same convolution with the kernel stored as HWOI: JAX's transpose rule
  # swaps the kernel's I/O roles, so the input gradient gets a canonical HWIO
  # kernel instead of the I/O-swapped one it gets from the plain rule.
  w_oi = jnp.swapaxes(w, 2, 3)
  _, vjp_x = jax.vjp(
      lambda xx: _nhwc_conv(xx, w_oi, strides, padding, rhs_dilation, precision, "HWOI"), x)
  _, vjp_w = jax.vjp(lambda ww: _nhwc_conv(x, ww, strides, padding, rhs_dilation, precision), w)
  return vjp_x(g)[0], vjp_w(g)[0]


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """``lax.conv_general_dilated`` with an input gradient that stays fast on XLA:CPU.

  JAX's gradient of an NHWC/HWIO convolution w.r.t. its input is a convolution
  with an I/O-swapped (HWOI) kernel. XLA:CPU rewrites such a convolution into
  its fast (Eigen) form only in the entry computation (``ConvCanonicalization``
  visits nothing else); inside a ``while`` body -- a ``fori_loop``/``scan``
  attack loop such as PGD with ``unroll < num_steps``, restarts, APGD, FAB --
  it runs a naive loop-nest convolution instead, which made a PGD step there
  ~2.6x slower (BENCHMARKS.md). On the CPU backend, 2-D NHWC/HWIO
  convolutions without groups or input dilation therefore get a custom VJP
  whose input gradient uses a canonical HWIO kernel. Values and gradients are
  those of ``lax.conv_general_dilated``; other cases and backends call it
  unchanged. (A ``custom_vjp`` has no forward-mode derivative: ``jax.jvp``
  through such a convolution raises.) ``JAXROBUST_CPU_CONV_VJP=0`` (read when
  a function is traced) turns this off, for comparisons.
  """
  fast = (os.environ.get(ENV_CPU_CONV_VJP, "1") != "0"
          and jax.default_backend() == "cpu" and lhs.ndim == 4 and feature_group_count == 1
          and kwargs.get("batch_group_count", 1) == 1
          and kwargs.get("preferred_element_type") is None
          and kwargs.get("out_sharding") is None
          and (lhs_dilation is None or all(d == 1 for d in lhs_dilation))
          and dimension_numbers == _NHWC_HWIO)
  if not fast:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  pad = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  dil = (1, 1) if rhs_dilation is None else tuple(rhs_dilation)
  return _cpu_conv(lhs, rhs, tuple(window_strides), pad, dil, precision)


def conv(cin, cout, k, stride=1, *, rngs, padding=None, bias=False, dtype=None, groups=1):
  """Conv with PyTorch's ``padding=k//2`` default and He-normal (fan_out) init.

  Uses :func:`conv_general_dilated` (fast input gradients in XLA:CPU loops).
  """
  pad = [(k // 2, k // 2)] * 2 if padding is None else padding
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=pad, use_bias=bias,
                  feature_group_count=groups, dtype=dtype,
                  kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
                  conv_general_dilated=conv_general_dilated, rngs=rngs)


ENV_CPU_BN = "JAXROBUST_CPU_BN"


def _channel_sums(a2d):
  """float32 ``[C]``: ``a2d.sum(0)`` of ``[M, C]`` as a matrix-vector product.

  XLA:CPU runs a reduction over the leading axes of an NHWC activation (one
  sum per channel) far below memory speed; the same sum as ``ones @ a2d`` is a
  GEMV and runs 2-8x faster (BENCHMARKS.md, train-mode BatchNorm).
  """
  return jnp.ones((a2d.shape[0],), a2d.dtype) @ a2d


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_train(x, scale, bias, eps):
  return _bn_train_fwd(x, scale, bias, eps)[0]


def _bn_train_fwd(x, scale, bias, eps):
  c = x.shape[-1]
  x2d = x.reshape(-1, c)
  m = x2d.shape[0]
  mean = _channel_sums(x2d) / m
  var = jnp.maximum(0.0, _channel_sums(x2d * x2d) / m - mean * mean)  # flax's fast-variance form
  r = lax.rsqrt(var + eps)
  y = (x - mean) * (r * scale) + bias
  return (y, mean, var), (x, mean, r, scale)


def _bn_train_bwd(eps, res, g):
  del eps
  x, mean, r, scale = res
  gy, gmean, gvar = g
  c = x.shape[-1]
  m = x.size // c
  xhat = (x - mean) * r
  gbias = _channel_sums(gy.reshape(-1, c))
  gscale = _channel_sums((gy * xhat).reshape(-1, c))
  # d/dx of y = xhat * scale + bias with batch statistics, plus the (usually zero) cotangents
  # of the returned mean and biased variance.
  gx = (r * scale) * (gy - gbias / m - xhat * (gscale / m))
  gx = gx + gmean / m + (2.0 / m) * gvar * (x - mean)
  return gx, gscale, gbias


_bn_train.defvjp(lambda x, scale, bias, eps: _bn_train_fwd(x, scale, bias, eps), _bn_train_bwd)


def bn_train(x, scale, bias, eps=BN_EPS):
  """Train-mode batch normalisation of NHWC (or any ``[..., C]``) ``x`` over all but the last axis.

  Returns ``(y, mean, var)``: ``y = (x - mean) / sqrt(var + eps) * scale + bias``
  like ``x``, and float32 ``[C]`` batch mean and biased variance (flax's
  ``use_fast_variance`` form ``E[x^2] - E[x]^2``, floored at 0). The same values
  as ``nnx.BatchNorm`` in train mode up to float32 summation order; the
  per-channel sums of the forward and backward passes are matrix-vector
  products (:func:`_channel_sums`) and the backward pass is the closed-form
  BatchNorm gradient (Ioffe & Szegedy 2015, Sec. 3), which keeps XLA:CPU off
  its slow column reductions. The gradient flows through the batch statistics
  as in ``nnx.BatchNorm``. A ``custom_vjp``: no forward-mode derivative.
  """
  return _bn_train(x, scale, bias, eps)


class BatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` whose train mode uses :func:`bn_train` on the CPU backend.

  Same variables, names, defaults and running-average update as
  ``nnx.BatchNorm`` (checkpoints are interchangeable). On XLA:CPU with a
  single device, a train-mode call on float32 NHWC input (channels last, no
  mask, no ``axis_name``) computes its statistics and gradient with
  :func:`bn_train`; every other case runs ``nnx.BatchNorm`` unchanged: other
  backends, and several CPU devices or processes, where a sharded run must
  sum in the same order whatever the process layout (a 2-process run and a
  1-process run of the same 4 devices drifted apart with the product form). ``JAXROBUST_CPU_BN=0`` (read when a function is
  traced) turns this off, for comparisons.
  """

  def __call__(self, x, use_running_average=None, *, mask=None):
    ura = use_running_average if use_running_average is not None else self.use_running_average
    fast = (ura is False and mask is None and self.axis_name is None
            and os.environ.get(ENV_CPU_BN, "1") != "0" and jax.default_backend() == "cpu"
            and _one_device()
            and self.scale is not None and self.bias is not None
            and _canonical_axes(x.ndim, self.axis) == (x.ndim - 1,)
            and x.dtype == jnp.float32 and self.dtype in (None, jnp.float32)
            and self.scale[...].dtype == jnp.float32)
    if not fast:
      return super().__call__(x, use_running_average, mask=mask)
    y, mean, var = bn_train(x, self.scale[...], self.bias[...], self.epsilon)
    self.mean[...] = lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
    self.var[...] = lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)
    return y


def _one_device() -> bool:
  """Whether JAX has a single device (:class:`BatchNorm`'s fast path; tests patch it)."""
  return jax.device_count() == 1


def _canonical_axes(ndim, axis):
  axes = axis if isinstance(axis, (tuple, list)) else (axis,)
  return tuple(sorted(a % ndim for a in axes))


def batch_norm(c, *, rngs, dtype=None):
  """BatchNorm over ``c`` channels with PyTorch's defaults (momentum 0.1 -> ``BN_MOMENTUM``, eps 1e-5).

  A :class:`BatchNorm` (``nnx.BatchNorm`` with a faster train mode on XLA:CPU).
  """
  return BatchNorm(c, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype, rngs=rngs)


def linear(cin, cout, *, rngs, dtype=None):
  """Dense layer ``[B, cin] -> [B, cout]`` (kernel ``[cin, cout]``, bias ``[cout]``)."""
  return nnx.Linear(cin, cout, dtype=dtype, rngs=rngs)


def classifier_head(fc: nnx.Linear, features, return_features: bool = False):
  """The final classifier layer: ``fc(features)`` as float32 logits ``[B, K]``.

  With ``return_features`` returns ``(logits, features)``, ``features`` the
  float32 ``[B, D]`` input of ``fc`` (the penultimate representation), so that
  ``logits == features @ fc.kernel + fc.bias`` (up to the compute dtype's
  rounding). The features are cast to float32 after ``fc`` ran on them in the
  compute dtype, so the logits do not depend on ``return_features``.
  """
  logits = fc(features).astype(jnp.float32)
  if return_features:
    return logits, features.astype(jnp.float32)
  return logits
