"""TRADES outer loss as a pure function of logits (``yaodongyu/TRADES:trades.py``)."""
from __future__ import annotations

import jax

from jaxrobust.losses._kl import cross_entropy, kl_divergence


def trades_loss(logits: jax.Array, logits_adv: jax.Array, labels: jax.Array, *,
                beta: float = 6.0, reduction: str = "batchmean",
                detach_clean: bool = False) -> jax.Array:
  """TRADES: ``CE(f(x), y) + beta * KL(p(x) || p(x'))``.

  Source: Zhang et al. 2019, eq. (5); ``yaodongyu/TRADES:trades.py``
  (``loss_natural + beta * (1/batch_size) * KLDivLoss(size_average=False)(
  log_softmax(model(x_adv)), softmax(model(x_natural)))``), i.e. the KL is
  summed over classes and batch and divided by B (``'batchmean'``).

  Gradients: into ``logits`` through the CE term AND through the KL target
  ``p(x)`` (the official code does not detach the clean distribution; nor does
  DeepMind's JAX TRADES), and into ``logits_adv`` through the KL.
  ``detach_clean=True`` stops the gradient through the KL target only (a
  documented variant, not the default).

  Args:
    logits: float ``[B, C]`` on the clean batch.
    logits_adv: float ``[B, C]`` on the adversarial batch.
    labels: int ``[B]``.
    beta: weight of the robust KL term (1/lambda in the paper; 6 on CIFAR-10).
    reduction: KL reduction (:data:`jaxrobust.losses.REDUCTIONS`); the
      official value is ``'batchmean'``.
    detach_clean: ``stop_gradient`` on the KL's clean target.

  Returns:
    float32 scalar.
  """
  target = jax.lax.stop_gradient(logits) if detach_clean else logits
  return cross_entropy(logits, labels) + beta * kl_divergence(target, logits_adv,
                                                             reduction=reduction)
