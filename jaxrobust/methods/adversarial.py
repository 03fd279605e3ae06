"""Adversarial training on attacked inputs: PGD-AT (Madry) and FGSM-AT (Wong).

Loss: mean CE(f_train(x_adv), y), x_adv crafted by the configured attack
against the current weights (no gradient through x_adv).

BatchNorm of the attack (``attack_bn``): ``'train'`` (batch statistics, the
official Madry and Rice et al. / AWP code) or ``'eval'`` (running averages).
Running averages: PyTorch's train-mode attack updates them on every attack
pass, and ``config.train.attack_bn_updates='official'`` (the default) applies
that sequence from the attack's own passes (:class:`jaxrobust.methods.base.AttackBNUpdates`):
PGD-AT's ``num_steps`` attack passes, ``attack_pgd``'s final pass on ``x_adv``
and the training pass (Rice et al. / AT-AWP); FGSM-AT's one attack pass and
the training pass (``fast_adversarial:train_fgsm.py``). With ``'none'`` only
the final training forward pass on ``x_adv`` updates them.

Sources: Madry et al. 2018 (``MadryLab/cifar10_challenge:train.py``); Rice et
al. 2020 / ``csdongxian/AWP:AT_AWP/train_cifar10.py`` (METHODS 2.1); Wong et
al. 2020 "Fast is better than free", Alg. 3 (FGSM with uniform init, step
1.25 eps).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from jaxrobust.methods.base import accuracy_sum, attack_in_view, cross_entropy
from jaxrobust.methods.registry import BN_VIEWS, choice, register_method


@dataclasses.dataclass(frozen=True)
class AdversarialTraining:
  """Madry-style adversarial training with an arbitrary attack.

  Attributes:
    attack: ``attack(logits_fn, rng, x, y) -> x_adv``.
    attack_bn: BatchNorm view of the attack, ``'train'`` or ``'eval'``.
    name: ``'pgd_at'`` or ``'fgsm_at'`` (logging only).
  """
  attack: Callable
  attack_bn: str = "train"
  name: str = "pgd_at"

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """float32 ``x_adv`` ``[B, H, W, C]``: the attack in the ``attack_bn`` view."""
    del frozen, step
    return attack_in_view(self.attack, model, params, batch_stats, x, y, rng, bn=self.attack_bn)

  def loss(self, params, batch_stats, model, x, y, x_adv, rng, frozen=None, step=None):
    """Mean CE of the train-mode logits of ``x_adv``; ``(loss, (batch_stats, sums))``."""
    del x, frozen, step
    logits, new_bs = model.apply(params, batch_stats, x_adv, train=True,
                                 key=jax.random.fold_in(rng, 1))
    loss = cross_entropy(logits, y)
    return loss, (new_bs, {"loss": loss * y.shape[0],
                           "adv_accuracy": accuracy_sum(logits, y)})


# Official settings: Rice et al. / AT_AWP (PGD-10, 2/255, uniform start -- L2: uniform
# direction, radius U(0, 1) eps --, train-mode BN, random crop of the reflect-padded images)
# and Wong et al. (FGSM, step 1.25 eps = 10/255 at 8/255, uniform start, zero padding:
# fast_adversarial CIFAR10/utils.py). eps / norm: config.eps.
register_method(
    "pgd_at", settings=dict(attack_bn="train"), pad_mode="reflect",
    attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce",
                random_start="uniform_radius"),
    build=lambda s, ctx: ctx.attack_passes_update_bn(
        AdversarialTraining(ctx.attack(s, ("pgd",)), choice(s, "attack_bn", BN_VIEWS), "pgd_at"),
        extra_passes=1),  # attack_pgd's final all_loss pass on x_adv.
    doc="PGD adversarial training (Madry et al. 2018)")
register_method(
    "fgsm_at", settings=dict(attack_bn="train"),
    attack=dict(name="fgsm", step_size=10 / 255, random_start="uniform"),
    build=lambda s, ctx: ctx.attack_passes_update_bn(AdversarialTraining(
        ctx.attack(s, ("fgsm",)), choice(s, "attack_bn", BN_VIEWS), "fgsm_at")),
    doc="FGSM adversarial training with random init (Wong et al. 2020)")
