"""TRADES (Zhang et al. 2019): CE on clean inputs + beta * KL to the adversarial output.

Per step, as ``yaodongyu/TRADES:trades.py`` (METHODS 2.2):

* Inner max (``perturb``), **eval-mode BN** (``model.eval()``: running
  averages used, not updated): L-inf: start ``x +
  0.001 N(0, 1)``, ``num_steps`` signed-gradient steps of ``step_size`` on the
  summed ``KL(p(x) || p(x'))`` (``p(x)`` from the same eval view, a
  constant), projection onto the eps-ball then [0, 1]. Configured as
  ``attack=dict(name='pgd', loss='kl', random_start='normal', eps=0.031,
  step_size=0.007, num_steps=10)``, run by :func:`jaxrobust.attacks.pgd`.
  L2: ``attack=dict(name='trades_l2', eps, step_size, num_steps)`` runs
  :func:`jaxrobust.attacks.trades_l2_inner_max`, the official SGD-on-delta
  routine.
* Outer (``loss``): :func:`jaxrobust.losses.trades_loss` on train-mode
  logits, ``CE(f(x), y) + beta * KL_batchmean(p(x) || p(x'))`` with the
  clean distribution NOT detached, beta = 6.
* BatchNorm running averages (``bn_updates='official'``): the official code
  runs three train-mode passes, ``model(x)`` (CE), ``model(x_adv)`` and
  ``model(x)`` again (KL target), so the averages are updated with the clean,
  the adversarial, then again the clean batch statistics. We run two passes
  (the two clean passes give identical logits in train mode) and replay the
  third update exactly (:func:`jaxrobust.methods.base.replay_bn_updates`).
  ``bn_sequence`` holds the order; TRADES-AWP's script uses ``('adv',
  'clean', 'clean')``. ``bn_updates='once'``: one update per batch (clean,
  adversarial).

Deliberate differences from the official code (documented, all tiny):

* The L-inf start ``x + 0.001 N(0,1)`` is clipped to [0, 1] before the first
  gradient (``jaxrobust.attacks.pgd``); the official code evaluates the first
  gradient at the unclipped start and clips after the first step.
* Models with dropout: the official two clean passes draw independent
  dropout masks (CE and KL target differ); we use one pass for both.
"""
from __future__ import annotations

import dataclasses
from typing import Callable


from jaxrobust.attacks import trades_l2_inner_max  # noqa: F401  (re-exported)
from jaxrobust.losses import REDUCTIONS, trades_loss
from jaxrobust.methods.base import (accuracy_sum, attack_in_view, replay_bn_updates,
                                    train_passes)
from jaxrobust.methods.registry import (BN_UPDATES, BN_VIEWS, choice, positive,
                                        register_method)


@dataclasses.dataclass(frozen=True)
class TRADES:
  """TRADES adversarial training; see the module docstring.

  Attributes:
    attack: ``attack(logits_fn, rng, x, y) -> x_adv`` (the inner max).
    beta: weight of the KL term (6).
    attack_bn: BatchNorm view of the inner max (``'eval'`` officially).
    kl_reduction: outer KL reduction (``'batchmean'`` officially).
    bn_updates: ``'official'`` (replay ``bn_sequence``) or ``'once'``.
    bn_sequence: order of the official train-mode passes.
    detach_clean: stop the gradient through the KL's clean target (variant).
  """
  attack: Callable
  beta: float = 6.0
  attack_bn: str = "eval"
  kl_reduction: str = "batchmean"
  bn_updates: str = "official"
  bn_sequence: tuple = ("clean", "adv", "clean")
  detach_clean: bool = False
  name: str = "trades"

  def __post_init__(self):
    if self.bn_updates not in BN_UPDATES:
      raise ValueError(f"bn_updates must be one of {BN_UPDATES}, got {self.bn_updates!r}")
    if self.kl_reduction not in REDUCTIONS[:3]:
      raise ValueError(f"kl_reduction must be one of {REDUCTIONS[:3]}")

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """float32 ``x_adv`` ``[B, H, W, C]``: the inner max in the ``attack_bn`` view."""
    del frozen, step
    return attack_in_view(self.attack, model, params, batch_stats, x, y, rng, bn=self.attack_bn)

  def loss(self, params, batch_stats, model, x, y, x_adv, rng, frozen=None, step=None):
    """The TRADES loss on train-mode logits; ``(loss, (batch_stats, sums))``.

    ``x``, ``x_adv``: float32 ``[B, H, W, C]``; ``y``: int32 ``[B]``. The
    new running averages follow ``bn_sequence`` (``bn_updates='official'``).
    """
    del frozen, step
    logits, stats = train_passes(model, params, batch_stats, {"clean": x, "adv": x_adv}, rng)
    loss = trades_loss(logits["clean"], logits["adv"], y, beta=self.beta,
                       reduction=self.kl_reduction, detach_clean=self.detach_clean)
    seq = self.bn_sequence if self.bn_updates == "official" else ("clean", "adv")
    new_bs = replay_bn_updates(batch_stats, stats, seq,
                               model.bn_momentum(params, batch_stats))
    n = y.shape[0]
    return loss, (new_bs, {"loss": loss * n, "accuracy": accuracy_sum(logits["clean"], y),
                           "adv_accuracy": accuracy_sum(logits["adv"], y)})


# TRADES's inner max: L-inf PGD on the KL (or the L2 routine ``trades_l2``).
TRADES_ATTACKS = dict(names=("pgd", "fgsm"), kl=True, kl_attacks=("trades_l2",))
# Official settings (``yaodongyu/TRADES:train_trades_cifar10.py``): 10 x 0.007 on the summed
# KL from x + 0.001 N(0, 1), eval-mode BN, beta 6, batchmean KL; eps 0.031: config.eps.
TRADES_SETTINGS = dict(beta=6.0, kl_reduction="batchmean", attack_bn="eval",
                       bn_updates="official")
TRADES_ATTACK = dict(name="pgd", step_size=0.007, num_steps=10, loss="kl",
                     random_start="normal")


def build_trades(settings, ctx, bn_sequence=("clean", "adv", "clean")) -> TRADES:
  """:class:`TRADES` from resolved settings (also AWP's TRADES base).

  Raises:
    ConfigError: invalid beta, kl_reduction, attack_bn, bn_updates or attack.
  """
  return TRADES(ctx.attack(settings, **TRADES_ATTACKS),
                beta=positive(settings, "beta", allow_zero=True),
                attack_bn=choice(settings, "attack_bn", BN_VIEWS),
                kl_reduction=choice(settings, "kl_reduction", REDUCTIONS[:3]),
                bn_updates=choice(settings, "bn_updates", BN_UPDATES),
                bn_sequence=tuple(bn_sequence))


register_method("trades", settings=TRADES_SETTINGS, attack=TRADES_ATTACK, build=build_trades,
                doc="TRADES (Zhang et al. 2019)")
