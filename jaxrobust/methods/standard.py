"""Standard (clean) training: mean cross-entropy on the clean batch.

BatchNorm ``bn='train'`` (default): batch statistics, running averages updated
(``model.train()`` in PyTorch). ``bn='eval'``: running averages used and kept
(e.g. to fine-tune part of a network without moving its statistics).
"""
from __future__ import annotations

import dataclasses

import jax

from jaxrobust.methods.base import accuracy_sum, cross_entropy


@dataclasses.dataclass(frozen=True)
class Standard:
  """Clean empirical risk minimisation."""
  name: str = "standard"
  bn: str = "train"

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    del model, params, batch_stats, y, rng, frozen, step
    return x

  def loss(self, params, batch_stats, model, x, y, x_train, rng, frozen=None, step=None):
    del x, frozen, step
    logits, new_bs = model.apply(params, batch_stats, x_train, train=self.bn == "train",
                                 key=jax.random.fold_in(rng, 1))
    loss = cross_entropy(logits, y)
    return loss, (new_bs, {"loss": loss * y.shape[0], "accuracy": accuracy_sum(logits, y)})
