"""MART outer loss as a pure function of logits (``YisenWang/MART:mart.py``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.losses._kl import cross_entropy, kl_divergence


def mart_misclassified_class(probs_adv: jax.Array, labels: jax.Array) -> jax.Array:
  """``argmax_{k != y} p_k(x')``: the top class unless it is ``y``, else the second.

  Source: ``YisenWang/MART:mart.py`` (``argsort(adv_probs)[:, -2:]``, then
  ``where(top == y, second, top)``). int32 ``[B]``; ties broken by
  ``lax.top_k``'s lower-index-first rule (torch's ``argsort`` order on ties
  is unspecified).
  """
  _, top2 = jax.lax.top_k(probs_adv, 2)
  labels = labels.astype(top2.dtype)
  return jnp.where(top2[:, 0] == labels, top2[:, 1], top2[:, 0])


def mart_loss(logits: jax.Array, logits_adv: jax.Array, labels: jax.Array, *,
              beta: float = 6.0, detach_clean: bool = False) -> jax.Array:
  """MART: boosted CE on ``x'`` plus ``beta`` x a misclassification-weighted KL.

  With ``p = softmax(f(x))``, ``p' = softmax(f(x'))`` and ``y^`` the most likely
  wrong class under ``p'`` (:func:`mart_misclassified_class`)::

    BCE = mean_i [ -log p'_{i,y_i} - log(1.0001 - p'_{i,y^_i} + 1e-12) ]
    KL  = (1/B) sum_i [ sum_c p_ic (log p_ic - log(p'_ic + 1e-12)) ]
                      * (1.0000001 - p_{i,y_i})
    loss = BCE + beta * KL

  Source: Wang et al. 2020, eq. (7); ``YisenWang/MART:mart.py`` (constants
  1.0001, 1e-12 and 1.0000001 as there).

  Gradients: into ``logits_adv`` through both terms; into ``logits`` through
  the KL target ``p`` AND the weight ``1 - p_y`` (neither is detached in the
  official code). ``detach_clean=True`` stops both (a variant).

  Args:
    logits: float ``[B, C]`` on the clean batch.
    logits_adv: float ``[B, C]`` on the adversarial batch.
    labels: int ``[B]``.
    beta: KL weight (6 for WRN-34-10, 5 for the ResNet-18 script).
    detach_clean: ``stop_gradient`` on the clean logits.

  Returns:
    float32 scalar.
  """
  if detach_clean:
    logits = jax.lax.stop_gradient(logits)
  logits_adv = logits_adv.astype(jnp.float32)
  probs_adv = jax.nn.softmax(logits_adv, axis=-1)
  wrong = mart_misclassified_class(probs_adv, labels)
  p_wrong = jnp.take_along_axis(probs_adv, wrong[:, None], axis=-1)[:, 0]
  bce = cross_entropy(logits_adv, labels) - jnp.mean(jnp.log(1.0001 - p_wrong + 1e-12))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  p_true = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  kl = jnp.sum(kl_divergence(logits, logits_adv, reduction="none", q_eps=1e-12), axis=-1)
  return bce + beta * jnp.sum(kl * (1.0000001 - p_true)) / logits.shape[0]
