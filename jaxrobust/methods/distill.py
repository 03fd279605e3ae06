"""Robust distillation: ARD (``ard_distill``), IAD-I/II (``iad``) and RSLAD (``rslad``).

The teacher's weights come from ``frozen = {'params': ..., 'batch_stats':
...}`` (``TrainState.frozen``: passed into the jitted step, never updated or
checkpointed; IAD-II's naturally trained teacher under ``frozen['natural']``
with the same two keys), its graph from the :class:`ModelFns` the method
holds. Teachers always run in **eval mode** (running averages, no updates;
``teacher.eval()`` in every official script) and their logits are
``stop_gradient``-ed. With ``model.dtype='bfloat16'`` in the teacher's graph
(``config.method.teacher_dtype``) the teacher forward runs in bf16; logits
are float32 either way.

Which BatchNorm updates happen (``bn_updates='official'``): the official
scripts run these train-mode student passes after the attack (the passes
inside the attack loop update nothing here, as everywhere in jaxrobust;
PyTorch's train-mode attack updates the averages on every step):

* ARD ``main.py``: ``basic_net(x_adv)`` (inside ``AttackPGD``), then
  ``basic_net(x)`` for the ``(1 - alpha) CE`` term, run even when alpha = 1.
* IAD-I: ``basic_net(x_adv)`` twice (``AttackPGD``'s output and the unused
  ``basicop``), ``basic_net(x)`` for the CE term and, from epoch ``begin``
  on, once more for the introspection target.
* IAD-II: ``basic_net(x_adv)``; from ``begin`` on also ``basic_net(x)``.
* RSLAD: ``student(x_adv)`` then ``student(x)``.

Repeated batches are replayed exactly (:func:`jaxrobust.methods.base.
replay_bn_updates`); ``bn_updates='once'`` updates once per batch that the
loss needs (ARD with alpha = 1 then skips the clean pass entirely).

Deliberate difference (all three): the random start is clipped to [0, 1]
before the first gradient (``jaxrobust.attacks.pgd``); ARD/IAD evaluate the
first gradient at the unclipped ``x + U(-eps, eps)``, RSLAD at ``x + 0.001
N(0, 1)``.

The official ARD and IAD scripts decay the learning rate with a local copy
(``adjust_learning_rate(optimizer, epoch, lr)`` multiplies the caller's
never-updated ``lr``), so their second decay (epoch 150) sets 0.01 again:
effectively one decay, x0.1 at epoch 100. The configs reproduce that
schedule and say so.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrobust.losses import REDUCTIONS, ard_loss, iad_loss, rslad_loss
from jaxrobust.methods.base import (ModelFns, accuracy_sum, attack_in_view, replay_bn_updates,
                                    train_passes)
from jaxrobust.methods.registry import (BN_UPDATES, BN_VIEWS, TEACHER_SETTINGS, choice,
                                        positive, register_method, unit_interval)


def teacher_logits(teacher: ModelFns | None, weights, x, name: str = "teacher") -> jax.Array:
  """Eval-mode teacher logits, float32 and ``stop_gradient``-ed.

  Raises:
    ValueError: no teacher graph or weights (the method was built without
      one, e.g. by ``validate_config``).
  """
  if teacher is None or weights is None:
    raise ValueError(f"this distillation method has no {name}: build it with "
                     f"method_from_config(..., teachers=...) and pass the weights as "
                     f"frozen={{'params': ..., 'batch_stats': ...}} (the trainer does both "
                     f"from config.method.teacher_workdir)")
  logits, _ = teacher.apply(weights["params"], weights["batch_stats"], x, train=False)
  return jax.lax.stop_gradient(logits.astype(jnp.float32))


def _check(bn_updates, reduction=None):
  if bn_updates not in BN_UPDATES:
    raise ValueError(f"bn_updates must be one of {BN_UPDATES}, got {bn_updates!r}")
  if reduction is not None and reduction not in REDUCTIONS[:3]:
    raise ValueError(f"kl_reduction must be one of {REDUCTIONS[:3]}, got {reduction!r}")


def _metrics(loss, y, logits):
  out = {"loss": loss * y.shape[0], "adv_accuracy": accuracy_sum(logits["adv"], y)}
  if "clean" in logits:
    out["accuracy"] = accuracy_sum(logits["clean"], y)
  return out


@dataclasses.dataclass(frozen=True)
class ARDDistill:
  """Adversarially Robust Distillation (Goldblum et al. 2020).

  ``perturb``: PGD on the STUDENT's CE w.r.t. the true labels (uniform start,
  eps 8/255, 10 x 2/255), student BatchNorm in train view (the official
  ``net.train()``). ``loss``: :func:`jaxrobust.losses.ard_loss` with the
  teacher on the clean batch.

  Attributes:
    attack: ``attack(logits_fn, rng, x, y) -> x_adv``.
    teacher: the teacher's graph.
    alpha, temperature: ARD's alpha (1.0) and T (30).
    kl_reduction: ``'mean'`` (official, over B*C) or ``'batchmean'``.
    attack_bn: the student's BatchNorm view during the attack.
    bn_updates: ``'official'`` (adv, clean) or ``'once'``.
  """
  attack: Callable
  teacher: ModelFns | None = None
  alpha: float = 1.0
  temperature: float = 30.0
  kl_reduction: str = "mean"
  attack_bn: str = "train"
  bn_updates: str = "official"
  name: str = "ard_distill"

  def __post_init__(self):
    _check(self.bn_updates, self.kl_reduction)

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """float32 ``x_adv`` ``[B, H, W, C]``: the student attack in the ``attack_bn`` view."""
    del frozen, step
    return attack_in_view(self.attack, model, params, batch_stats, x, y, rng, bn=self.attack_bn)

  def loss(self, params, batch_stats, model, x, y, x_adv, rng, frozen=None, step=None):
    """The ARD loss (teacher on ``x``); ``(loss, (batch_stats, sums))``.

    Raises:
      ValueError: no teacher (graph or ``frozen`` weights).
    """
    del step
    t_clean = teacher_logits(self.teacher, frozen, x)
    need_clean = self.alpha != 1.0 or self.bn_updates == "official"
    inputs = {"adv": x_adv, "clean": x} if need_clean else {"adv": x_adv}
    logits, stats = train_passes(model, params, batch_stats, inputs, rng)
    loss = ard_loss(logits["adv"], t_clean, alpha=self.alpha, temperature=self.temperature,
                    reduction=self.kl_reduction, student_logits=logits.get("clean"),
                    labels=y)
    new_bs = replay_bn_updates(batch_stats, stats, tuple(inputs),
                               model.bn_momentum(params, batch_stats))
    return loss, (new_bs, _metrics(loss, y, logits))


@dataclasses.dataclass(frozen=True)
class IAD:
  """Introspective Adversarial Distillation (Zhu et al. 2022), IAD-I or IAD-II.

  ``perturb``: as :class:`ARDDistill` (student CE PGD, train view, uniform
  start). ``loss``: :func:`jaxrobust.losses.iad_loss`; IAD-I distils the
  teacher on the clean batch, IAD-II (a ``natural_teacher`` given) both
  teachers on the adversarial batch, as the official scripts. Introspection
  (the trust weights) starts at ``begin_step`` = epoch ``begin`` (60 for
  IAD-I, 40 for IAD-II) x steps per epoch; before it the loss is plain ARD
  (T = 1, per-sample-sum / B KL).

  Attributes:
    attack: student CE PGD.
    teacher: the adversarially trained teacher's graph.
    natural_teacher: IAD-II's naturally trained teacher's graph, or None.
    beta, alpha, temperature: IAD's beta (0.1), alpha (1.0), T (1.0).
    alpha1, alpha2: IAD-II weights (0.5, 0.25).
    begin_step: first optimiser step with introspection (0: from the start;
      None: given in epochs but not resolved, an error once ``step`` is
      passed). Without ``step`` (direct calls) introspection is on.
    attack_bn, bn_updates: as :class:`ARDDistill`.
  """
  attack: Callable
  teacher: ModelFns | None = None
  natural_teacher: ModelFns | None = None
  beta: float = 0.1
  alpha: float = 1.0
  temperature: float = 1.0
  alpha1: float = 0.5
  alpha2: float = 0.25
  begin_step: int | None = 0
  attack_bn: str = "train"
  bn_updates: str = "official"
  name: str = "iad"

  def __post_init__(self):
    _check(self.bn_updates)

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """float32 ``x_adv`` ``[B, H, W, C]``: the student attack in the ``attack_bn`` view."""
    del frozen, step
    return attack_in_view(self.attack, model, params, batch_stats, x, y, rng, bn=self.attack_bn)

  def loss(self, params, batch_stats, model, x, y, x_adv, rng, frozen=None, step=None):
    """The IAD loss, introspection from ``begin_step``; ``(loss, (batch_stats, sums))``.

    Raises:
      ValueError: no teacher, or ``begin_step`` unresolved while ``step`` is given.
    """
    two = self.natural_teacher is not None
    if step is None or self.begin_step == 0:
      introspect = True
    elif self.begin_step is None:
      raise ValueError("IAD's begin is given in epochs but the method was built without "
                       "steps_per_epoch: use method_from_config(..., steps_per_epoch=...)")
    else:
      introspect = step >= self.begin_step
    t_adv = teacher_logits(self.teacher, frozen, x_adv)
    logits, stats = train_passes(model, params, batch_stats, {"adv": x_adv, "clean": x}, rng)
    if two:
      t_nat = teacher_logits(self.natural_teacher, (frozen or {}).get("natural"), x_adv,
                             "natural teacher (IAD-II)")
      loss = iad_loss(logits["adv"], logits["clean"], t_adv, t_adv, y, beta=self.beta,
                      temperature=self.temperature, introspect=introspect,
                      natural_teacher_logits=t_nat, alpha1=self.alpha1, alpha2=self.alpha2)
      before, after = ("adv",), ("adv", "clean")
    else:
      t_clean = teacher_logits(self.teacher, frozen, x)
      loss = iad_loss(logits["adv"], logits["clean"], t_clean, t_adv, y, beta=self.beta,
                      alpha=self.alpha, temperature=self.temperature, introspect=introspect)
      before, after = ("adv", "adv", "clean"), ("adv", "adv", "clean", "clean")
    if self.bn_updates == "once":
      before = after = ("adv", "clean")
    m = model.bn_momentum(params, batch_stats)
    new_bs = replay_bn_updates(batch_stats, stats, after, m)
    if before != after:
      old = replay_bn_updates(batch_stats, stats, before, m)
      new_bs = jax.tree.map(lambda a, b: jnp.where(introspect, a, b), new_bs, old)
    return loss, (new_bs, _metrics(loss, y, logits))


@dataclasses.dataclass(frozen=True)
class RSLAD:
  """Robust Soft Label Adversarial Distillation (Zi et al. 2021).

  ``perturb``: returns ``(x_adv, T(x))``: the teacher's clean logits, then
  PGD on ``sum KL(p_T(x) || p_S(x'))`` (``attack=dict(name='pgd',
  loss='kl', random_start='normal', eps=8/255, step_size=2/255,
  num_steps=10)`` with ``ref_logits = T(x)``), the student in the eval view
  (``model.eval()`` in ``rslad_inner_loss``). ``loss``:
  :func:`jaxrobust.losses.rslad_loss` (alpha 5/6, mean over B*C).

  Attributes:
    attack: the inner max; receives ``ref_logits=T(x)``.
    teacher: the teacher's graph.
    alpha: weight of the adversarial term (5/6).
    kl_reduction: ``'mean'`` (official) or ``'batchmean'`` (true KL).
    attack_bn: the student's view during the attack (``'eval'``).
    bn_updates: ``'official'`` (adv, clean) or ``'once'`` (the same).
  """
  attack: Callable
  teacher: ModelFns | None = None
  alpha: float = 5.0 / 6.0
  kl_reduction: str = "mean"
  attack_bn: str = "eval"
  bn_updates: str = "official"
  name: str = "rslad"

  def __post_init__(self):
    _check(self.bn_updates, self.kl_reduction)

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """``(x_adv, T(x))``: float32 ``[B, H, W, C]`` and the teacher's ``[B, K]`` logits."""
    del step
    t_clean = teacher_logits(self.teacher, frozen, x)
    x_adv = attack_in_view(self.attack, model, params, batch_stats, x, y, rng,
                           bn=self.attack_bn, ref_logits=t_clean)
    return x_adv, t_clean

  def loss(self, params, batch_stats, model, x, y, aux, rng, frozen=None, step=None):
    """The RSLAD loss with ``aux = (x_adv, T(x))``; ``(loss, (batch_stats, sums))``."""
    del frozen, step
    x_adv, t_clean = aux
    logits, stats = train_passes(model, params, batch_stats, {"adv": x_adv, "clean": x}, rng)
    loss = rslad_loss(logits["adv"], logits["clean"], jax.lax.stop_gradient(t_clean),
                      alpha=self.alpha, reduction=self.kl_reduction)
    new_bs = replay_bn_updates(batch_stats, stats, ("adv", "clean"),
                               model.bn_momentum(params, batch_stats))
    return loss, (new_bs, _metrics(loss, y, logits))


# Official settings. ARD (``goldblum/AdversariallyRobustDistillation:main.py``): student CE
# PGD-10, 2/255, uniform start, train-mode BN; alpha 1, T 30, KL mean over B*C. IAD
# (``ZFancy/IAD:IAD-I.py, IAD-II.py``): the same attack; beta 0.1, alpha 1, T 1,
# introspection from epoch 60 (IAD-I) or 40 (IAD-II), alpha1 0.5, alpha2 0.25. RSLAD
# (``zibojia/RSLAD``): 10 x 2/255 on KL(T(x) || S(x')) from x + 0.001 N(0, 1), eval-mode BN;
# alpha 5/6, KL mean over B*C. eps 8/255: config.eps.
_STUDENT_CE_PGD = dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce",
                       random_start="uniform")


def _build_ard(s, ctx):
  """:class:`ARDDistill` (wrapped when its attack passes update BatchNorm, as AttackPGD)."""
  return ctx.attack_passes_update_bn(ARDDistill(
      ctx.attack(s, ("pgd", "fgsm")), ctx.teacher(0),
      alpha=unit_interval(s, "alpha", "ard_distill"), temperature=positive(s, "temperature"),
      kl_reduction=choice(s, "kl_reduction", REDUCTIONS[:3]),
      attack_bn=choice(s, "attack_bn", BN_VIEWS), bn_updates=choice(s, "bn_updates", BN_UPDATES)))


def _iad_settings(given):
  two = bool(given.get("teacher2_workdir", ""))
  return dict(beta=0.1, alpha=1.0, temperature=1.0, iad_begin_epochs=40.0 if two else 60.0,
              iad_alpha1=0.5, iad_alpha2=0.25, attack_bn="train", bn_updates="official",
              **TEACHER_SETTINGS,
              teacher2_workdir="")  # IAD-II: the naturally trained teacher ('' -> IAD-I).


def _build_iad(s, ctx):
  """:class:`IAD` (wrapped when its attack passes update BatchNorm, as IAD-I.py's AttackPGD)."""
  return ctx.attack_passes_update_bn(IAD(
      ctx.attack(s, ("pgd", "fgsm")), ctx.teacher(0), ctx.teacher(1),
      beta=positive(s, "beta", allow_zero=True), alpha=float(s["alpha"]),
      temperature=positive(s, "temperature"), alpha1=float(s["iad_alpha1"]),
      alpha2=float(s["iad_alpha2"]), begin_step=ctx.epochs_to_steps(s["iad_begin_epochs"]),
      attack_bn=choice(s, "attack_bn", BN_VIEWS), bn_updates=choice(s, "bn_updates", BN_UPDATES)))


def _build_rslad(s, ctx) -> RSLAD:
  return RSLAD(ctx.attack(s, ("pgd", "fgsm"), kl=True), ctx.teacher(0),
               alpha=unit_interval(s, "alpha", "rslad"),
               kl_reduction=choice(s, "kl_reduction", REDUCTIONS[:3]),
               attack_bn=choice(s, "attack_bn", BN_VIEWS),
               bn_updates=choice(s, "bn_updates", BN_UPDATES))


register_method(
    "ard_distill", attack=_STUDENT_CE_PGD, teachers=1, build=_build_ard,
    settings=dict(alpha=1.0, temperature=30.0, kl_reduction="mean", attack_bn="train",
                  bn_updates="official", **TEACHER_SETTINGS),
    doc="adversarially robust distillation (Goldblum et al. 2020)")
register_method(
    "iad", attack=_STUDENT_CE_PGD, settings=_iad_settings, build=_build_iad,
    teachers=lambda s: 2 if s["teacher2_workdir"] else 1,
    doc="introspective adversarial distillation, IAD-I / IAD-II (Zhu et al. 2022)")
register_method(
    "rslad", teachers=1, build=_build_rslad,
    attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="kl", random_start="normal"),
    settings=dict(alpha=5.0 / 6.0, kl_reduction="mean", attack_bn="eval",
                  bn_updates="official", **TEACHER_SETTINGS),
    doc="robust soft label adversarial distillation (Zi et al. 2021)")

DISTILL_METHODS = ("ard_distill", "iad", "rslad")
__all__ = ["ARDDistill", "DISTILL_METHODS", "IAD", "RSLAD", "teacher_logits"]
