"""Semi-supervised adversarial training: robust self-training (RST), UAT-OT and UAT-FT.

Each batch holds ``B_l`` labeled rows first, then ``B_u = int(B *
unsup_fraction)`` unlabeled rows (:class:`jaxrobust.data.unlabeled.
SemiSupervisedIterator`); an unlabeled row carries a pseudo-label (RST,
UAT-FT: a standard teacher's prediction, :mod:`jaxrobust.train.semisup`) or
-1 (UAT-OT), never its true label. The settings shared by the three methods
(:data:`SEMISUP_SETTINGS`):

* ``unlabeled``: ``'rest'`` (the training examples outside
  ``config.data.train_size``, labels dropped: CIFAR-10 with 4,000 labels and
  the rest unlabeled is the papers' controlled setting) or the path of an
  ``.npz`` of images (:func:`jaxrobust.data.unlabeled.load_unlabeled_npz`);
* ``unlabeled_size``: keep a seeded random subset of that many (0: all;
  ``aux_take_amount`` of ``yaircarmon/semisup-adv:robust_self_training.py``
  l. 136-138);
* ``unsup_fraction``: the unlabeled share of every batch (0.5,
  ``robust_self_training.py`` l. 131-135);
* ``teacher_workdir`` / ``teacher_which`` (RST, UAT-FT): the standard model
  whose eval-mode argmax labels the unlabeled set
  (``generate_pseudolabels.py`` l. 77-97), a ``python -m jaxrobust.train`` run
  (e.g. ``configs/cifar10_rst.py:teacher``).

**rst** (Carmon et al. NeurIPS 2019, "Unlabeled data improves adversarial
robustness"; ``yaircarmon/semisup-adv``): TRADES on the pseudo-labeled batch,
every row alike (``robust_self_training.py`` l. 278-293 calls ``losses.py``
``trades_loss``, l. 23-98): the inner max is TRADES's (eval-mode BatchNorm,
``x + 0.001 N(0, 1)`` start, 10 steps of 0.007 on the summed KL, l. 46-63),
the loss ``CE(f(x), y~) + beta KL(p(x) || p(x_adv))`` with ``beta = 6``, the
KL summed and divided by B (l. 83-88). The official train-mode passes run
``model(x_adv)`` then ``model(x)`` (l. 80-81), so the BatchNorm running
averages are updated with the adversarial then the clean batch
(``bn_sequence=('adv', 'clean')``; TRADES's own code runs clean, adversarial,
clean). Official schedule: WRN-28-10, batch 256, 200 "epochs" of 50K points,
SGD lr 0.1 Nesterov, weight decay 5e-4, cosine (l. 72-125). The paper and the
code agree on these; the code's options ``entropy_weight`` (0) and
``remove_pseudo_labels`` (rVAT) are not built.

**uat_ot** (Alayrac et al. NeurIPS 2019, "Are labels required for improving
adversarial robustness?", Sec. 3.2, "unsupervised adversarial training with
online targets"): on an unlabeled row the loss is ``KL(p_theta_hat(x) ||
p_theta(x_adv))`` with ``p_theta_hat(x)`` the model's own clean prediction at
the current weights held fixed (``stop_gradient``), and ``x_adv`` maximises
that KL; on a labeled row the adversarial cross-entropy (Madry et al.), both
in one PGD: the labeled rows' reference is the one-hot label, and
``KL(onehot(y) || q) = CE(q, y)``. Loss ``mean_labeled CE(f(x_adv), y) +
unsup_weight * mean_unlabeled KL``.

**uat_ft** (same paper, "fixed targets"): the unlabeled rows take a standard
teacher's pseudo-labels (as RST's), then adversarial training (Madry et al.:
PGD on the CE, CE on ``x_adv``) on all rows, ``mean_labeled +
unsup_weight * mean_pseudo-labeled``.

No official code of UAT was released; its attack settings here are PGD-AT's
(10 steps of 2/255, uniform start), in eval-mode BatchNorm for the KL of
UAT-OT (as TRADES / VAT) and train-mode for UAT-FT (as PGD-AT): our choices,
both settings.

PRNG: the attack uses ``fold_in(rng, 0)`` (its forward passes inside), the
loss pass ``fold_in(rng, 1)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrobust.attacks import call_logits, model_key
from jaxrobust.data.unlabeled import split_sizes
from jaxrobust.errors import ConfigError
from jaxrobust.losses import REDUCTIONS, kl_divergence
from jaxrobust.methods.base import accuracy_sum, attack_in_view, cross_entropy
from jaxrobust.methods.registry import BN_UPDATES, BN_VIEWS, choice, positive, register_method
from jaxrobust.methods.trades import TRADES, TRADES_ATTACK, TRADES_ATTACKS, TRADES_SETTINGS

# The unlabeled data of every semi-supervised method (the trainer builds its batches from them).
SEMISUP_SETTINGS = dict(unlabeled="rest", unlabeled_size=0, unsup_fraction=0.5)
# The standard model that pseudo-labels the unlabeled set (RST, UAT-FT); loaded once, before
# training, by jaxrobust.train.semisup (not a distillation teacher of the train step).
PSEUDO_LABEL_SETTINGS = dict(teacher_workdir="", teacher_which="best")
SEMISUP_METHODS = ("rst", "uat_ot", "uat_ft")
_ONEHOT_LOGIT = -1e4  # other classes' logit of a one-hot reference (softmax exactly one-hot).


def labeled_rows(batch_size: int, unsup_fraction: float) -> jax.Array:
  """bool ``[B]``: True on the labeled rows (the first ``B - int(B * unsup_fraction)``)."""
  n_l, _ = split_sizes(batch_size, unsup_fraction)
  return jnp.arange(batch_size) < n_l


def _masked_mean(values, mask):
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _check_semisup(s) -> dict:
  """Validated :data:`SEMISUP_SETTINGS` (ConfigError naming the key)."""
  if not isinstance(s["unlabeled"], str) or not s["unlabeled"]:
    raise ConfigError("config.method.unlabeled must be 'rest' or the path of an .npz of images")
  if int(s["unlabeled_size"]) != s["unlabeled_size"] or s["unlabeled_size"] < 0:
    raise ConfigError(f"config.method.unlabeled_size must be a whole number >= 0 (0: all), got "
                      f"{s['unlabeled_size']}")
  frac = float(s["unsup_fraction"])
  if not 0 <= frac < 1:
    raise ConfigError(f"config.method.unsup_fraction must be in [0, 1), got {frac}")
  return dict(unlabeled=s["unlabeled"], unlabeled_size=int(s["unlabeled_size"]),
              unsup_fraction=frac)


@dataclasses.dataclass(frozen=True)
class RST(TRADES):
  """Robust self-training: :class:`TRADES` on labeled + pseudo-labeled rows; see the module doc.

  The loss treats every row alike (the labels of the unlabeled rows are the
  teacher's pseudo-labels); the extra attributes describe the batch.
  """
  unlabeled: str = "rest"
  unlabeled_size: int = 0
  unsup_fraction: float = 0.5
  name: str = "rst"

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """TRADES's ``x_adv``; ``x`` itself with ``beta = 0`` (no attack, ``losses.py`` l. 37-42)."""
    if self.beta == 0:
      return x
    return super().perturb(model, params, batch_stats, x, y, rng, frozen=frozen, step=step)

  def loss(self, params, batch_stats, model, x, y, x_adv, rng, frozen=None, step=None):
    """TRADES's loss; with ``beta = 0`` the clean CE of one train-mode pass.

    ``beta = 0`` is the official standard training (``losses.py`` l. 37-42,
    the pseudo-labelling teacher of the README: ``--beta 0 --unsup_fraction 0``).
    """
    if self.beta != 0:
      return super().loss(params, batch_stats, model, x, y, x_adv, rng, frozen=frozen,
                          step=step)
    logits, new_bs = model.apply(params, batch_stats, x, train=True,
                                 key=jax.random.fold_in(rng, 1))
    loss = cross_entropy(logits, y)
    n = y.shape[0]
    return loss, (new_bs, {"loss": loss * n, "accuracy": accuracy_sum(logits, y)})


def build_rst(s, ctx) -> RST:
  """:class:`RST` from resolved settings (TRADES's checks plus :func:`_check_semisup`)."""
  return RST(ctx.attack(s, **TRADES_ATTACKS), beta=positive(s, "beta", allow_zero=True),
             attack_bn=choice(s, "attack_bn", BN_VIEWS),
             kl_reduction=choice(s, "kl_reduction", REDUCTIONS[:3]),
             bn_updates=choice(s, "bn_updates", BN_UPDATES), bn_sequence=("adv", "clean"),
             **_check_semisup(s))


def onehot_logits(y, num_classes: int) -> jax.Array:
  """float32 ``[B, K]`` logits whose softmax is exactly ``onehot(y)`` (0 and -1e4)."""
  return jnp.where(jax.nn.one_hot(y, num_classes) > 0, 0.0, _ONEHOT_LOGIT).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class UAT:
  """UAT-OT (``online_targets=True``) or UAT-FT; see the module docstring.

  Attributes:
    attack: ``attack(logits_fn, rng, x, y, **extra) -> x_adv`` (UAT-OT: a
      ``loss='kl'`` PGD that takes ``ref_logits``).
    online_targets: UAT-OT (KL to the model's own clean prediction on the
      unlabeled rows) or UAT-FT (pseudo-labels, cross-entropy).
    unsup_weight: weight of the unlabeled rows' mean loss (lambda, 1).
    attack_bn: BatchNorm view of the attack and of UAT-OT's clean targets.
    unlabeled, unlabeled_size, unsup_fraction: the batch (see the module doc).
  """
  attack: Callable
  online_targets: bool
  unsup_weight: float = 1.0
  attack_bn: str = "eval"
  unlabeled: str = "rest"
  unlabeled_size: int = 0
  unsup_fraction: float = 0.5
  name: str = "uat_ot"

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """UAT-FT: float32 ``x_adv``. UAT-OT: ``(x_adv, clean logits [B, K])``.

    UAT-OT's clean logits (the attack's view, no gradient) are the targets of
    the unlabeled rows; the labeled rows' targets are their one-hot labels.
    """
    del frozen, step
    if not self.online_targets:
      return attack_in_view(self.attack, model, params, batch_stats, x, y, rng,
                            bn=self.attack_bn)
    logits_fn = model.logits_fn(params, batch_stats, bn=self.attack_bn)
    key = jax.random.fold_in(rng, 0)
    clean = jax.lax.stop_gradient(call_logits(logits_fn, x, model_key(key, 0)))
    lab = labeled_rows(y.shape[0], self.unsup_fraction)
    ref = jnp.where(lab[:, None], onehot_logits(jnp.maximum(y, 0), clean.shape[-1]), clean)
    x_adv = attack_in_view(self.attack, model, params, batch_stats, x, y, rng,
                           bn=self.attack_bn, ref_logits=ref)
    return x_adv, clean

  def loss(self, params, batch_stats, model, x, y, aux, rng, frozen=None, step=None):
    """``mean_labeled + unsup_weight * mean_unlabeled`` of the per-row losses at ``x_adv``.

    One train-mode pass on ``x_adv``. Per row: CE with the label (labeled
    rows; UAT-FT's pseudo-labeled rows too) or ``KL(stop_gradient(p(x)) ||
    p(x_adv))`` (UAT-OT's unlabeled rows). Returns ``(loss, (batch_stats,
    sums))``; ``sums``: the loss, the labeled rows' adversarial accuracy
    (``adv_accuracy``) and mean unlabeled-row loss (``unsup_loss``), each
    times B.
    """
    del x, frozen, step
    x_adv, clean = aux if self.online_targets else (aux, None)
    logits, new_bs = model.apply(params, batch_stats, x_adv, train=True,
                                 key=jax.random.fold_in(rng, 1))
    lab = labeled_rows(y.shape[0], self.unsup_fraction)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    ce = -jnp.take_along_axis(logp, jnp.maximum(y, 0)[:, None], -1)[:, 0]
    if self.online_targets:
      kl = jnp.sum(kl_divergence(jax.lax.stop_gradient(clean), logits, reduction="none"), -1)
      unsup = jnp.where(lab, 0.0, kl)
    else:
      unsup = ce
    sup_loss, unsup_loss = _masked_mean(ce, lab), _masked_mean(unsup, ~lab)
    loss = sup_loss + self.unsup_weight * unsup_loss
    n = y.shape[0]
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return loss, (new_bs, {"loss": loss * n, "adv_accuracy": _masked_mean(correct, lab) * n,
                           "unsup_loss": unsup_loss * n})


def build_uat(s, ctx, online_targets: bool) -> UAT:
  """:class:`UAT` from resolved settings.

  Raises:
    ConfigError: UAT-OT with an attack other than a KL PGD, a negative
      ``unsup_weight``, a bad ``attack_bn`` or semi-supervised setting.
  """
  if online_targets:
    attack = ctx.attack(s, ("pgd",), kl=True)
  else:
    attack = ctx.attack(s, ("pgd", "fgsm"))
  return UAT(attack, online_targets, unsup_weight=positive(s, "unsup_weight", allow_zero=True),
             attack_bn=choice(s, "attack_bn", BN_VIEWS), **_check_semisup(s),
             name="uat_ot" if online_targets else "uat_ft")


# yaircarmon/semisup-adv:robust_self_training.py defaults (TRADES's attack and beta 6).
register_method(
    "rst", settings=dict(**TRADES_SETTINGS, **SEMISUP_SETTINGS, **PSEUDO_LABEL_SETTINGS),
    attack=TRADES_ATTACK, build=build_rst,
    doc="robust self-training (Carmon et al. 2019): TRADES on labeled + pseudo-labeled data")
UAT_ATTACK = dict(name="pgd", step_size=2 / 255, num_steps=10, random_start="uniform")
register_method(
    "uat_ot", settings=dict(unsup_weight=1.0, attack_bn="eval", **SEMISUP_SETTINGS),
    attack=dict(UAT_ATTACK, loss="kl"), build=lambda s, ctx: build_uat(s, ctx, True),
    doc="UAT-OT (Alayrac et al. 2019): KL to the model's own clean prediction on unlabeled data")
register_method(
    "uat_ft", settings=dict(unsup_weight=1.0, attack_bn="train", **SEMISUP_SETTINGS,
                            **PSEUDO_LABEL_SETTINGS),
    attack=dict(UAT_ATTACK, loss="ce"), build=lambda s, ctx: build_uat(s, ctx, False),
    doc="UAT-FT (Alayrac et al. 2019): adversarial training on pseudo-labeled unlabeled data")

__all__ = ["PSEUDO_LABEL_SETTINGS", "RST", "SEMISUP_METHODS", "SEMISUP_SETTINGS", "UAT",
           "build_rst", "build_uat", "labeled_rows", "onehot_logits"]
