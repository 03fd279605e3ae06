"""Adversarial training on attacked inputs: PGD-AT (Madry) and FGSM-AT (Wong).

Loss: mean CE(f_train(x_adv), y), x_adv crafted by the configured attack
against the current weights (no gradient through x_adv).

BatchNorm of the attack (``attack_bn``): ``'train'`` (batch statistics, the
official Madry and Rice et al. / AWP code) or ``'eval'`` (running averages).
Deliberate difference from the PyTorch code: attack passes never update the
running averages (PyTorch's train-mode attack updates them on every attack
step); only the final training forward pass on ``x_adv`` does.

Sources: Madry et al. 2018 (``MadryLab/cifar10_challenge:train.py``); Rice et
al. 2020 / ``csdongxian/AWP:AT_AWP/train_cifar10.py`` (METHODS 2.1); Wong et
al. 2020 "Fast is better than free", Alg. 3 (FGSM with uniform init, step
1.25 eps).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from jaxrobust.methods.base import accuracy_sum, cross_entropy


@dataclasses.dataclass(frozen=True)
class AdversarialTraining:
  """Madry-style adversarial training with an arbitrary attack."""
  attack: Callable
  attack_bn: str = "train"
  name: str = "pgd_at"

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    del frozen, step
    logits_fn = model.logits_fn(params, batch_stats, bn=self.attack_bn)
    return self.attack(logits_fn, jax.random.fold_in(rng, 0), x, y)

  def loss(self, params, batch_stats, model, x, y, x_adv, rng, frozen=None, step=None):
    del x, frozen, step
    logits, new_bs = model.apply(params, batch_stats, x_adv, train=True,
                                 key=jax.random.fold_in(rng, 1))
    loss = cross_entropy(logits, y)
    return loss, (new_bs, {"loss": loss * y.shape[0],
                           "adv_accuracy": accuracy_sum(logits, y)})
