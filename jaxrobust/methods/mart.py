"""MART (Wang et al. 2020): misclassification-aware adversarial training.

Per step, as ``YisenWang/MART:mart.py`` (METHODS 2.3):

* Inner max (``perturb``), **eval-mode BN** (``model.eval()``): CE PGD from
  ``x + 0.001 N(0, 1)``, 10 signed steps of 0.007, eps 0.031, projection onto
  the eps-ball then [0, 1]: ``attack=dict(name='pgd', loss='ce',
  random_start='normal', ...)`` run by :func:`jaxrobust.attacks.pgd`.
* Outer (``loss``): :func:`jaxrobust.losses.mart_loss` on train-mode logits
  ``f(x)`` and ``f(x')``; the clean branch (KL target and the ``1 - p_y(x)``
  weight) is NOT detached; beta = 6 (WRN-34-10) or 5 (ResNet-18 script).
* BatchNorm running averages: updated by the clean then the adversarial
  batch (the official ``model(x_natural)`` then ``model(x_adv)`` in train
  mode); ``bn_updates='once'`` is the same here.

Deliberate differences: the start is clipped to [0, 1] before the first
gradient (see :mod:`jaxrobust.methods.trades`). The official code has no L2
inner max (``distance != 'l_inf'`` just clips the random start); an L2
``attack`` here runs a real L2 PGD.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from jaxrobust.losses import mart_loss
from jaxrobust.methods.base import (accuracy_sum, attack_in_view, replay_bn_updates,
                                    train_passes)
from jaxrobust.methods.registry import BN_VIEWS, choice, positive, register_method


@dataclasses.dataclass(frozen=True)
class MART:
  """MART; see the module docstring.

  Attributes:
    attack: ``attack(logits_fn, rng, x, y) -> x_adv`` (CE PGD).
    beta: weight of the weighted KL term.
    attack_bn: BatchNorm view of the attack (``'eval'`` officially).
    detach_clean: stop gradients through the clean logits (variant).
  """
  attack: Callable
  beta: float = 6.0
  attack_bn: str = "eval"
  detach_clean: bool = False
  name: str = "mart"

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """float32 ``x_adv`` ``[B, H, W, C]``: CE PGD in the ``attack_bn`` view."""
    del frozen, step
    return attack_in_view(self.attack, model, params, batch_stats, x, y, rng, bn=self.attack_bn)

  def loss(self, params, batch_stats, model, x, y, x_adv, rng, frozen=None, step=None):
    """The MART loss on train-mode logits; ``(loss, (batch_stats, sums))``."""
    del frozen, step
    logits, stats = train_passes(model, params, batch_stats, {"clean": x, "adv": x_adv}, rng)
    loss = mart_loss(logits["clean"], logits["adv"], y, beta=self.beta,
                     detach_clean=self.detach_clean)
    new_bs = replay_bn_updates(batch_stats, stats, ("clean", "adv"),
                               model.bn_momentum(params, batch_stats))
    n = y.shape[0]
    return loss, (new_bs, {"loss": loss * n, "accuracy": accuracy_sum(logits["clean"], y),
                           "adv_accuracy": accuracy_sum(logits["adv"], y)})


# Official settings (``YisenWang/MART:train_wideresnet.py``): CE PGD-10, step 0.007, from
# x + 0.001 N(0, 1), eval-mode BN, beta 6; eps 0.031: config.eps.
register_method(
    "mart", settings=dict(beta=6.0, attack_bn="eval"),
    attack=dict(name="pgd", step_size=0.007, num_steps=10, loss="ce", random_start="normal"),
    build=lambda s, ctx: MART(ctx.attack(s, ("pgd", "fgsm")), beta=positive(s, "beta", True),
                              attack_bn=choice(s, "attack_bn", BN_VIEWS)),
    doc="MART (Wang et al. 2020)")
