"""Standard (clean) training: mean cross-entropy on the clean batch.

BatchNorm ``bn='train'`` (default): batch statistics, running averages updated
(``model.train()`` in PyTorch). ``bn='eval'``: running averages used and kept
(e.g. to fine-tune part of a network without moving its statistics).
"""
from __future__ import annotations

import dataclasses

import jax

from jaxrobust.methods.base import accuracy_sum, cross_entropy
from jaxrobust.methods.registry import BN_VIEWS, choice, register_method


@dataclasses.dataclass(frozen=True)
class Standard:
  """Clean empirical risk minimisation.

  Attributes:
    name: ``'standard'``.
    bn: ``'train'`` (batch statistics, running averages updated) or
      ``'eval'`` (running averages used and kept).
  """
  name: str = "standard"
  bn: str = "train"

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """The clean batch ``x`` unchanged."""
    del model, params, batch_stats, y, rng, frozen, step
    return x

  def loss(self, params, batch_stats, model, x, y, x_train, rng, frozen=None, step=None):
    """Mean CE of ``x_train``'s logits in the ``bn`` view; ``(loss, (batch_stats, sums))``."""
    del x, frozen, step
    logits, new_bs = model.apply(params, batch_stats, x_train, train=self.bn == "train",
                                 key=jax.random.fold_in(rng, 1))
    loss = cross_entropy(logits, y)
    return loss, (new_bs, {"loss": loss * y.shape[0], "accuracy": accuracy_sum(logits, y)})


register_method("standard", settings=dict(clean_bn="train"),
                build=lambda s, ctx: Standard(bn=choice(s, "clean_bn", BN_VIEWS)),
                doc="clean training (mean cross-entropy)")
