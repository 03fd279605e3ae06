"""Adversarial training of Vision Transformers (Mo et al., NeurIPS 2022): ARD and PRM.

Official code: ``mo666666/When-Adversarial-Training-Meets-Vision-Transformers:
train_cifar.py`` (METHODS 2.9 / 2.12).

**Keep probability r(t)** (:func:`mo_keep_prob`): ``r = min(t / n_w, 1) *
keep_final`` from the fractional epoch ``t``; the official loop computes it
from ``epoch_now = epoch - 1 + (step + 1) / len(train_loader)``, i.e. for
the 0-based optimiser step ``s`` (the trainer's ``step``) ``t = (s + 1) /
steps_per_epoch``. ``n_w = 10`` epochs on CIFAR (2 on ImageNet);
``keep_final`` is the official ``--drop-rate`` 1.0 (the FINAL KEEP
probability, despite its name). One r drives both ARD and PRM.

**Attention random dropping** (``attention_random_drop``; not ARD
distillation, which is ``ard_distill``): while the perturbation is crafted,
and only then, each attack step draws one Bernoulli(r) per encoder block,
shared by the batch; a dropped block's attention residual branch keeps its
forward value but passes no gradient (the official backward hook on the
block's ``drop_path``, removed before the weight update). Here: the attack
gets the keyed logits function of :func:`attention_random_drop_logits_fn`,
which draws the ``[depth]`` keep mask from the key the attack passes to each
forward pass (:func:`jaxrobust.attacks.model_key`: fresh per attack step) and
calls the ViT with ``attention_grad_keep=mask``
(:class:`jaxrobust.models.vit.VisionTransformer`). The training forward pass
(:meth:`ModelFns.apply`) never passes a mask, so the weight gradient is that
of the plain model.

**Perturbation random masking**: the ``pgd_prm`` attack
(:mod:`jaxrobust.attacks._prm`); the method passes ``keep_prob=r`` to it at
every training step. With ``name='pgd'`` the method runs without PRM.

The loss is the mean CE of the adversarial batch in train mode (PGD-AT, as
:class:`jaxrobust.methods.adversarial.AdversarialTraining`); the attack runs
in the eval view (``attack_bn='eval'``, the official ``model.eval()``).

**Mixup / CutMix** (``mixup_*``, ``cutmix_alpha``; the official defaults:
alpha 0.8 / 1.0, probability 0.3, switch probability 0.5, timm's batch mode,
:func:`jaxrobust.data.mixup.mixup_cutmix`): applied to the clean batch BEFORE
the attack, in the AT objective only (the official TRADES / MART branches use
the plain labels). The labels become soft targets ``lam onehot(y) + (1 -
lam) onehot(y_rev)``; as ``train_cifar.py`` (``criterion =
SoftTargetCrossEntropy()`` whenever Mixup is configured) the attack ascends
the soft-target CE of the mixed batch and the loss is the soft-target CE of
the train-mode logits of its adversarial version; the logged
``adv_accuracy`` compares with the soft targets' argmax (the official
``y.max(1)[1]``). ``perturb`` then returns ``{'x_adv', 'targets'}``.
``mixup_prob=0`` is plain AT (hard labels). The batch size must be even.

**TRADES and MART with ViTs** (``vit_trades``, ``vit_mart``; the official
``--method TRADES`` / ``--method MART`` branches of ``train_cifar.py``): the
same inner maximisation machinery (ARD hooks, PRM masks, r(t), eval mode)
around TRADES's KL inner max / MART's CE attack, both from ``x + 0.001
N(0, 1)`` with 10 steps of 2/255; the outer losses are
:class:`jaxrobust.methods.trades.TRADES`'s (CE + 6 batchmean KL, clean branch
not detached) and :class:`jaxrobust.methods.mart.MART`'s (beta 6), on plain
labels (no Mixup, as the official code).

**Eps warm-up** (``eps_warmup_epochs``, :func:`eps_warmup`; off by default):
NOT part of Mo et al.'s recipe (their code keeps eps fixed from the first
step) but of Debenedetti et al.'s "light recipe" for ViTs
(``dedeswim/vits-robustness-torch:src/attacks.py``, ``make_linear_schedule``
with ``zero_eps_epochs=0``): the training attack's eps is ``eps * e / n`` in
0-based epoch ``e < n`` and ``eps`` afterwards, constant within an epoch
(epoch 0 trains on clean inputs); the step size stays fixed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrobust.attacks import get_attack, stochastic
from jaxrobust.data.mixup import MixupSettings, mixup_cutmix
from jaxrobust.errors import ConfigError
from jaxrobust.losses import REDUCTIONS, soft_target_cross_entropy
from jaxrobust.methods.adversarial import AdversarialTraining
from jaxrobust.methods.base import ModelFns, accuracy_sum
from jaxrobust.methods.mart import MART
from jaxrobust.methods.registry import (BN_UPDATES, BN_VIEWS, choice, positive, register_method,
                                        unit_interval)
from jaxrobust.methods.trades import TRADES


def mo_keep_prob(step, steps_per_epoch: int, warmup_epochs: float = 10.0,
                 keep_final: float = 1.0):
  """r(t) = min(t / n_w, 1) * keep_final with t = (step + 1) / steps_per_epoch.

  Args:
    step: 0-based optimiser step (int or traced int32).
    steps_per_epoch: optimiser steps per epoch, >= 1.
    warmup_epochs: n_w (10 on CIFAR, 2 on ImageNet); 0 means r = keep_final
      from the first step.
    keep_final: final keep probability in [0, 1] (official ``--drop-rate``).

  Returns:
    float32 scalar r in [0, keep_final].

  Source: ``train_cifar.py`` (``epoch_now``; ``drop_rate = t / n_w *
  args.drop_rate`` while ``t < n_w``).
  """
  t = (jnp.asarray(step, jnp.float32) + 1.0) / jnp.float32(steps_per_epoch)
  if warmup_epochs <= 0:
    return jnp.float32(keep_final) + 0.0 * t
  return jnp.minimum(t / jnp.float32(warmup_epochs), 1.0) * jnp.float32(keep_final)


def eps_warmup(step, steps_per_epoch: int, eps: float, warmup_epochs: float):
  """The training attack's eps at optimiser ``step``: ``eps * min(e / n, 1)``, ``e`` the epoch.

  Debenedetti et al.'s linear eps schedule (``dedeswim/vits-robustness-
  torch:src/attacks.py``, ``make_linear_schedule``, ``zero_eps_epochs=0``):
  the 0-based epoch ``e = step // steps_per_epoch``, so eps is constant
  within an epoch, 0 in the first one, and ``eps`` from epoch ``n`` on. Not
  Mo et al.'s recipe (which has no eps warm-up).

  Args:
    step: 0-based optimiser step (int or traced int32).
    steps_per_epoch: optimiser steps per epoch, >= 1.
    eps: the final budget (pixel units).
    warmup_epochs: n > 0.

  Returns:
    float32 scalar in [0, eps].
  """
  epoch = (jnp.asarray(step, jnp.int32) // steps_per_epoch).astype(jnp.float32)
  return jnp.minimum(epoch / jnp.float32(warmup_epochs), 1.0) * jnp.float32(eps)


def attention_random_drop_logits_fn(model: ModelFns, params, batch_stats, keep_prob, *,
                                    bn: str = "eval"):
  """The keyed ``(x, key) -> logits`` a ViT attack uses under attention random dropping.

  Each call draws ``keep = bernoulli(key, keep_prob, [depth])`` and runs the
  model with ``attention_grad_keep=keep``: logits are those of the plain
  model (bit for bit); the input gradient flows through block ``i``'s
  attention branch only if ``keep[i]``. Attacks call it with a fresh key per
  forward pass, hence one draw per attack step and block, shared by the
  batch. It is marked stochastic (:func:`jaxrobust.attacks.stochastic`) only
  so that attacks pass those keys; its VALUES are deterministic. Meant for
  crafting training perturbations, never for evaluation.

  Args:
    model: :class:`ModelFns` of a model whose ``__call__`` takes
      ``attention_grad_keep`` (a :class:`jaxrobust.models.vit.VisionTransformer`).
    params, batch_stats: its state.
    keep_prob: r in [0, 1] (float or traced scalar).
    bn: ``'eval'`` or ``'train'`` view (the ViT has no BatchNorm: the same).

  Returns:
    A :class:`jaxrobust.attacks.StochasticLogitsFn`.

  Raises:
    ConfigError: the model has no attention gate.
    ValueError: unknown ``bn``.
  """
  if bn not in BN_VIEWS:
    raise ValueError(f"unknown BatchNorm mode {bn!r}; use 'eval' or 'train'")
  probe = nnx.merge(model.graphdef, params, batch_stats, copy=True)
  depth = getattr(probe, "num_attention_blocks", None)  # Swin: blocks over all stages.
  if depth is None:
    depth = getattr(getattr(probe, "Transformer", None), "depth", None)
  if depth is None:
    raise ConfigError(f"attention_random_drop needs a Vision Transformer (a model with "
                      f"attention blocks), got {type(probe).__name__}; set "
                      f"config.method.attention_random_drop=False or a ViT model")
  inner_stochastic = getattr(probe, "stochastic", False)

  def fn(x, key):
    mask_key, inner_key = jax.random.split(key)
    keep = jax.random.bernoulli(mask_key, keep_prob, (depth,))
    m = nnx.merge(model.graphdef, params, batch_stats, copy=True)
    return m(x, train=bn == "train", key=inner_key if inner_stochastic else None,
             attention_grad_keep=keep)

  return stochastic(fn)


@dataclasses.dataclass(frozen=True)
class ViTAdversarialTraining:
  """PGD-AT of a ViT with attention random dropping and/or perturbation random masking.

  Attributes:
    attack: ``attack(logits_fn, rng, x, y, eps=..., **extra) -> x_adv``
      (``pgd`` or ``pgd_prm`` with every setting but ``eps`` bound).
    prm: the attack is ``pgd_prm`` (it then gets ``keep_prob=r``).
    eps: the training attack's budget (pixel units).
    attention_random_drop: gate the attention gradients while attacking.
    steps_per_epoch: for r(t) and the eps warm-up; None: both fully active
      (r = keep_final, eps).
    warmup_epochs: n_w.
    keep_final: final keep probability.
    attack_bn: the attack's view (``'eval'``, official).
    eps_warmup_epochs: > 0: eps grows over that many epochs
      (:func:`eps_warmup`; not Mo et al.'s recipe); 0: off (official).
    mixup: :class:`jaxrobust.data.mixup.MixupSettings` of the batch before the
      attack, or None (hard labels). PGD-AT only.
    objective: None (PGD-AT's loss) or a method whose ``loss`` is the outer
      objective (:class:`jaxrobust.methods.trades.TRADES` for ``vit_trades``,
      :class:`jaxrobust.methods.mart.MART` for ``vit_mart``; their own
      ``attack`` is not used).
  """
  attack: Callable
  prm: bool
  eps: float
  attention_random_drop: bool = True
  steps_per_epoch: int | None = None
  warmup_epochs: float = 10.0
  keep_final: float = 1.0
  attack_bn: str = "eval"
  eps_warmup_epochs: float = 0.0
  mixup: MixupSettings | None = None
  objective: Any = None
  name: str = "vit_pgd_at"

  def __post_init__(self):
    if self.mixup is not None and self.objective is not None:
      raise ConfigError(f"{self.name}: Mixup/CutMix is part of the AT objective only (the "
                        f"official TRADES / MART branches use plain labels)")

  def keep_prob(self, step):
    """r at optimiser ``step`` (:func:`mo_keep_prob`); ``keep_final`` when unresolved."""
    if step is None or self.steps_per_epoch is None:
      return jnp.float32(self.keep_final)
    return mo_keep_prob(step, self.steps_per_epoch, self.warmup_epochs, self.keep_final)

  def attack_eps(self, step):
    """The training attack's eps at ``step``: :func:`eps_warmup`, or ``eps`` (a Python float)
    when the warm-up is off or the step / epoch length is unknown."""
    if not self.eps_warmup_epochs or step is None or self.steps_per_epoch is None:
      return self.eps
    return eps_warmup(step, self.steps_per_epoch, self.eps, self.eps_warmup_epochs)

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """The perturbation crafted with ARD / PRM at r(step), eps(step).

    Returns:
      float32 ``x_adv`` ``[B, H, W, C]``; with Mixup/CutMix ``{'x_adv':
      [B, H, W, C], 'targets': float32 [B, K]}`` (the adversarial version of
      the mixed batch and its soft targets; mixing key ``fold_in(rng, 2)``).
    """
    del frozen
    if self.prm:
      _check_prm_patch(model, params, batch_stats, self.attack.keywords.get("patch_size", 4))
    r = self.keep_prob(step)
    if self.attention_random_drop:
      logits_fn = attention_random_drop_logits_fn(model, params, batch_stats, r,
                                                  bn=self.attack_bn)
    else:
      logits_fn = model.logits_fn(params, batch_stats, bn=self.attack_bn)
    extra = {"keep_prob": r} if self.prm else {}
    targets = None
    if self.mixup is not None:
      num_classes = jax.eval_shape(model.logits_fn(params, batch_stats, bn="eval"),
                                   x).shape[-1]
      x, targets, _ = mixup_cutmix(jax.random.fold_in(rng, 2), x, y, num_classes,
                                   self.mixup)
    x_adv = self.attack(logits_fn, jax.random.fold_in(rng, 0), x,
                        y if targets is None else targets, eps=self.attack_eps(step), **extra)
    return x_adv if targets is None else {"x_adv": x_adv, "targets": targets}

  def loss(self, params, batch_stats, model, x, y, aux, rng, frozen=None, step=None):
    """The outer loss; ``(loss, (batch_stats, sums))``.

    ``objective`` set (TRADES / MART): its loss of ``x`` and ``x_adv = aux``.
    Else PGD-AT's, the mean (soft-target) CE of the train-mode logits of
    ``x_adv``: ``aux`` is ``x_adv`` (hard labels ``y``:
    :meth:`AdversarialTraining.loss`) or ``perturb``'s Mixup dict (soft
    targets: timm's ``SoftTargetCrossEntropy``).
    """
    if self.objective is not None:
      return self.objective.loss(params, batch_stats, model, x, y, aux, rng, frozen=frozen,
                                 step=step)
    if not isinstance(aux, dict):
      return AdversarialTraining.loss(self, params, batch_stats, model, x, y, aux, rng,
                                      frozen=frozen, step=step)
    targets = aux["targets"]
    logits, new_bs = model.apply(params, batch_stats, aux["x_adv"], train=True,
                                 key=jax.random.fold_in(rng, 1))
    loss = soft_target_cross_entropy(logits, targets)
    return loss, (new_bs, {"loss": loss * targets.shape[0],
                           "adv_accuracy": accuracy_sum(logits, jnp.argmax(targets, -1))})


def _check_prm_patch(model: ModelFns, params, batch_stats, patch_size) -> None:
  """PRM's mask grid must be the ViT's patch grid (a ConfigError at trace time otherwise)."""
  probe = nnx.merge(model.graphdef, params, batch_stats, copy=True)
  own = getattr(probe, "patch_size", None)
  # A Swin accepts the token grid of any of its stages (Mo et al.: patch 16 on a patch-4 Swin).
  allowed = getattr(probe, "prm_patch_sizes", None) or ([tuple(own)] if own is not None else [])
  pair = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
  if allowed and tuple(int(p) for p in pair) not in [tuple(a) for a in allowed]:
    raise ConfigError(f"config.method.attack.patch_size={patch_size} masks another grid than "
                      f"the model's patches {[tuple(a) for a in allowed]}; set it to the "
                      f"model's patch size")


def scheduled_attack(settings, ctx, **kw) -> tuple[Callable, float]:
  """The training attack with every setting bound but ``eps``, and that ``eps``.

  Validates ``settings['attack']`` as :meth:`BuildContext.attack` does
  (names ``pgd`` / ``pgd_prm``, ``**kw`` e.g. ``kl=True``); the method passes
  eps at each step (the warm-up schedule).

  Raises:
    ConfigError: an invalid attack config, or ``keep_prob`` set for
      ``pgd_prm`` (the method's schedule sets it).
  """
  cfg = {k: v for k, v in dict(settings.get("attack") or {}).items() if v is not None}
  if cfg.get("name") == "pgd_prm" and "keep_prob" in cfg:
    raise ConfigError("config.method.attack.keep_prob is set by the method's schedule "
                      "(warmup_epochs, keep_final): remove it from the attack config")
  ctx.attack(settings, ("pgd", "pgd_prm"), **kw)  # the checks (and their messages).
  spec = get_attack(cfg.pop("name"))
  cfg = {**spec.check(cfg), **spec.fixed}
  eps = float(cfg.pop("eps"))
  return functools.partial(spec.fn, **cfg), eps


def _schedule_settings(s, ctx, method: str) -> dict:
  """The ARD / PRM / eps-warm-up keyword arguments shared by the ViT methods."""
  return dict(attention_random_drop=bool(s["attention_random_drop"]),
              steps_per_epoch=ctx.steps_per_epoch,
              warmup_epochs=positive(s, "warmup_epochs", allow_zero=True),
              keep_final=unit_interval(s, "keep_final", method),
              attack_bn=choice(s, "attack_bn", BN_VIEWS),
              eps_warmup_epochs=positive(s, "eps_warmup_epochs", allow_zero=True))


def mixup_settings(s) -> MixupSettings | None:
  """:class:`MixupSettings` from ``mixup_alpha``, ``cutmix_alpha``, ``mixup_prob``,
  ``mixup_switch_prob``, ``label_smoothing``; None when no batch would be mixed.

  Raises:
    ConfigError: a value out of range (the message names the key).
  """
  for key in ("mixup_alpha", "cutmix_alpha"):
    positive(s, key, allow_zero=True)
  for key in ("mixup_prob", "mixup_switch_prob", "label_smoothing"):
    unit_interval(s, key, "Mixup/CutMix")
  mix = MixupSettings(float(s["mixup_alpha"]), float(s["cutmix_alpha"]), float(s["mixup_prob"]),
                      float(s["mixup_switch_prob"]), float(s["label_smoothing"]))
  return mix if mix.active else None


def _build(s, ctx):
  attack, eps = scheduled_attack(s, ctx)
  return ViTAdversarialTraining(attack, prm=s["attack"]["name"] == "pgd_prm", eps=eps,
                                mixup=mixup_settings(s),
                                **_schedule_settings(s, ctx, "vit_pgd_at"))


def _build_trades(s, ctx):
  attack, eps = scheduled_attack(s, ctx, kl=True)
  objective = TRADES(None, beta=positive(s, "beta", allow_zero=True),
                     attack_bn=choice(s, "attack_bn", BN_VIEWS),
                     kl_reduction=choice(s, "kl_reduction", REDUCTIONS[:3]),
                     bn_updates=choice(s, "bn_updates", BN_UPDATES))
  return ViTAdversarialTraining(attack, prm=s["attack"]["name"] == "pgd_prm", eps=eps,
                                objective=objective, name="vit_trades",
                                **_schedule_settings(s, ctx, "vit_trades"))


def _build_mart(s, ctx):
  attack, eps = scheduled_attack(s, ctx)
  objective = MART(None, beta=positive(s, "beta", allow_zero=True),
                   attack_bn=choice(s, "attack_bn", BN_VIEWS))
  return ViTAdversarialTraining(attack, prm=s["attack"]["name"] == "pgd_prm", eps=eps,
                                objective=objective, name="vit_mart",
                                **_schedule_settings(s, ctx, "vit_mart"))


# The schedule settings shared by the ViT methods (official: ARD + PRM, n_w 10, keep 1.0).
_SCHEDULE = dict(attack_bn="eval", attention_random_drop=True, warmup_epochs=10.0,
                 keep_final=1.0, eps_warmup_epochs=0.0)

# Official CIFAR-10 settings (train_cifar.py / parser_cifar.py): PGD-10, step 2/255, uniform
# start, eval-mode attack, ARD + PRM with n_w = 10 and final keep probability 1.0, patch 4;
# Mixup 0.8 / CutMix 1.0, probability 0.3, switch 0.5, no label smoothing; no eps warm-up.
register_method(
    "vit_pgd_at",
    settings=dict(_SCHEDULE, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=0.3,
                  mixup_switch_prob=0.5, label_smoothing=0.0),
    attack=dict(name="pgd_prm", step_size=2 / 255, num_steps=10, loss="ce",
                random_start="uniform", patch_size=4, prm_mode="faithful"),
    build=_build,
    doc="PGD-AT of ViTs with attention random dropping and perturbation random masking "
        "(Mo et al. 2022)")

# --method TRADES / MART of train_cifar.py: 10 steps of 2/255 from x + 0.001 N(0, 1) (KL to the
# clean output / CE), PRM masks, ARD hooks, eval mode; beta 6; plain labels.
register_method(
    "vit_trades",
    settings=dict(_SCHEDULE, beta=6.0, kl_reduction="batchmean", bn_updates="official"),
    attack=dict(name="pgd_prm", step_size=2 / 255, num_steps=10, loss="kl",
                random_start="normal", patch_size=4, prm_mode="faithful"),
    build=_build_trades,
    doc="TRADES of ViTs with attention random dropping and perturbation random masking "
        "(Mo et al. 2022)")
register_method(
    "vit_mart",
    settings=dict(_SCHEDULE, beta=6.0),
    attack=dict(name="pgd_prm", step_size=2 / 255, num_steps=10, loss="ce",
                random_start="normal", patch_size=4, prm_mode="faithful"),
    build=_build_mart,
    doc="MART of ViTs with attention random dropping and perturbation random masking "
        "(Mo et al. 2022)")
