"""Threat-model pieces: random starts, steepest-ascent directions, projections.

All work on float32 NHWC batches ``[B, ...]`` with per-example norms over the
non-batch axes; eps is in pixel units (images in [0, 1]).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.attacks._norms import l2_norm

NORMS = ("linf", "l2")
RANDOM_STARTS = ("uniform", "normal", "none", "uniform_radius")


def random_init(rng, x, eps, norm: str = "linf", kind: str = "uniform"):
  """A random starting perturbation ``delta`` (not yet clipped to [0, 1]).

  Args:
    rng: PRNG key.
    x: float32 ``[B, ...]`` clean images (only the shape is used).
    eps: budget (pixel units).
    norm: ``'linf'`` or ``'l2'``.
    kind: ``'uniform'`` (U(-eps, eps)^d for L-inf, Madry/Rice/ARD; uniform in
      the L2 ball for L2: radius ``eps * U(0, 1)^(1/d)``, mean ``d/(d+1) eps``),
      ``'uniform_radius'`` (L-inf: exactly ``'uniform'``; L2: a uniformly
      random direction with radius ``eps * U(0, 1)``, mean ``eps / 2``, as
      Rice et al. / ``csdongxian/AWP:AT_AWP/train_cifar10.py`` ``attack_pgd``
      draw it: normalised Gaussian times ``U(0, 1) * eps``), ``'normal'``
      (0.001 * N(0, 1), TRADES/MART/RSLAD), ``'none'`` (zeros).

  Returns:
    float32 ``delta`` shaped like ``x``.

  Raises:
    ValueError: unknown ``kind``.
  """
  if kind == "none":
    return jnp.zeros_like(x)
  if kind == "normal":
    return 0.001 * jax.random.normal(rng, x.shape, x.dtype)
  if kind not in ("uniform", "uniform_radius"):
    raise ValueError(f"unknown random start {kind!r}; use one of {RANDOM_STARTS}")
  if norm == "linf":
    return jax.random.uniform(rng, x.shape, x.dtype, -eps, eps)
  k1, k2 = jax.random.split(rng)
  d = jax.random.normal(k1, x.shape, x.dtype)
  d = d / jnp.maximum(l2_norm(d), 1e-12)
  r = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  if kind == "uniform":  # uniform in the ball: P(radius <= t eps) = t^d.
    r = r ** (1.0 / x[0].size)
  return eps * r * d


def ascent_direction(grad, norm: str = "linf"):
  """Steepest-ascent direction: ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2)."""
  if norm == "linf":
    return jnp.sign(grad)
  return grad / jnp.maximum(l2_norm(grad), 1e-12)


def linf_project(x_adv, x, eps):
  """Projects onto ``{x' : ||x' - x||_inf <= eps} ∩ [0, 1]^d``."""
  return jnp.clip(x + jnp.clip(x_adv - x, -eps, eps), 0.0, 1.0)


def l2_project(x_adv, x, eps):
  """Projects ``x_adv - x`` onto the L2 ball of radius eps, then clips to [0, 1]."""
  delta = x_adv - x
  delta = delta * jnp.minimum(1.0, eps / jnp.maximum(l2_norm(delta), 1e-12))
  return jnp.clip(x + delta, 0.0, 1.0)


def project(x_adv, x, eps, norm: str = "linf"):
  """Projection onto the ``norm`` ball of radius ``eps`` around ``x``, inside [0, 1]."""
  if norm == "linf":
    return linf_project(x_adv, x, eps)
  if norm == "l2":
    return l2_project(x_adv, x, eps)
  raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
