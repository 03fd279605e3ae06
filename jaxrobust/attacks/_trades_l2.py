"""TRADES's L2 inner maximisation (``yaodongyu/TRADES:trades.py``, ``distance='l_2'``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.attacks._model import call_logits, model_key
from jaxrobust.attacks._norms import l2_norm
from jaxrobust.attacks._pgd import default_unroll
from jaxrobust.losses import kl_divergence
from jaxrobust.types import AnyLogitsFn


def trades_l2_inner_max(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array,
                        y: jax.Array | None = None, *, eps: float, step_size: float,
                        num_steps: int, ref_logits: jax.Array | None = None,
                        unroll: int | None = None) -> jax.Array:
  """TRADES's L2 inner maximisation (``distance='l_2'`` in ``trades.py``), attack ``trades_l2``.

  ``delta0 = 0.001 N(0, 1)``; each step: ``g = grad_delta sum_i KL(p(x_i) ||
  p(x_i + delta_i))``, ``g_i <- g_i / ||g_i||_2`` (an un-normalised N(0, 1)
  draw where ``||g_i|| = 0``, as the official code), ``delta <- delta +
  step_size * g`` (SGD on ``-KL``; official ``lr = 2 eps / num_steps``), then
  ``delta <- clip(x + delta, 0, 1) - x`` and ``delta_i <- delta_i * eps /
  (||delta_i|| + 1e-7)`` where ``||delta_i|| > eps`` (``torch.renorm_``).
  Result ``clip(x + delta, 0, 1)``. Unlike :func:`jaxrobust.attacks.pgd`
  (norm ``'l2'``) the clip comes before the renorm and the start is not
  projected.

  Args:
    logits_fn: pure ``x -> logits`` (the eval view for TRADES), or a
      stochastic ``(x, key) -> logits`` (:func:`jaxrobust.attacks.stochastic`)
      that gets a fresh key, derived from ``rng``, in every forward pass.
    rng: PRNG key (start, zero-gradient replacements, model keys).
    x: float32 ``[B, H, W, C]`` in [0, 1].
    y: ignored (KL objective).
    eps: L2 radius (pixel units), > 0.
    step_size: SGD learning rate on delta, > 0.
    num_steps: >= 1.
    ref_logits: float32 ``[B, K]``, the KL reference; default ``logits_fn(x)``
      (a constant).
    unroll: loop unroll (None: :func:`jaxrobust.attacks.default_unroll`).

  Returns:
    float32 ``x_adv`` like ``x``, ``stop_gradient``-ed, within ``eps`` (L2) of
    ``x`` and inside [0, 1].
  """
  del y
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  ref = jax.lax.stop_gradient(call_logits(logits_fn, x, model_key(rng, 0))
                              if ref_logits is None else ref_logits)
  k0, kloop = jax.random.split(rng)
  delta = 0.001 * jax.random.normal(k0, x.shape, x.dtype)
  grad_fn = jax.grad(lambda d, key: kl_divergence(ref, call_logits(logits_fn, x + d, key),
                                                  reduction="sum"))

  def step(i, delta):
    g = grad_fn(delta, model_key(rng, 1, i))
    n = l2_norm(g)
    noise = jax.random.normal(jax.random.fold_in(kloop, i), x.shape, x.dtype)
    g = jnp.where(n == 0, noise, g / jnp.where(n == 0, 1.0, n))
    delta = delta + step_size * g
    delta = jnp.clip(x + delta, 0.0, 1.0) - x
    dn = l2_norm(delta)
    return jnp.where(dn > eps, delta * (eps / (dn + 1e-7)), delta)

  unroll = default_unroll(num_steps) if unroll is None else unroll
  delta = jax.lax.fori_loop(0, num_steps, step, delta, unroll=unroll)
  return jax.lax.stop_gradient(jnp.clip(x + delta, 0.0, 1.0))
