"""Training methods: name -> constructor from plain config data."""
from __future__ import annotations

from jaxrobust.attacks import attack_from_config
from jaxrobust.errors import ConfigError
from jaxrobust.losses import REDUCTIONS
from jaxrobust.methods.adversarial import AdversarialTraining
from jaxrobust.methods.awp import AWP, relative_weight_perturbation
from jaxrobust.methods.base import (ModelFns, accuracy_sum, cross_entropy, replay_bn_updates,
                                    train_passes)
from jaxrobust.methods.distill import DISTILL_METHODS, IAD, RSLAD, ARDDistill
from jaxrobust.methods.mart import MART
from jaxrobust.methods.standard import Standard
from jaxrobust.methods.trades import TRADES, trades_l2_inner_max

METHODS = ("standard", "pgd_at", "fgsm_at", "trades", "mart", "awp", "ard_distill", "iad",
           "rslad")
AWP_BASES = ("pgd_at", "trades")
BN_UPDATES = ("official", "once")
_KL_INNER_MAX = ("trades", "trades_awp", "rslad")

# The official defaults each method uses when its config key is left unset
# (None, '' or negative: the schema's "method default" marker).
OFFICIAL = {
    "trades": dict(beta=6.0, kl_reduction="batchmean", attack_bn="eval"),
    "mart": dict(beta=6.0, attack_bn="eval"),
    "awp": {"pgd_at": dict(awp_gamma=0.01, awp_warmup_epochs=0.0, proxy_lr=0.01),
            "trades": dict(awp_gamma=0.005, awp_warmup_epochs=9.0, proxy_lr=0.1)},
    "ard_distill": dict(alpha=1.0, temperature=30.0, kl_reduction="mean", attack_bn="train"),
    "iad": dict(beta=0.1, alpha=1.0, temperature=1.0, attack_bn="train", iad_alpha1=0.5,
                iad_alpha2=0.25),
    "rslad": dict(alpha=5.0 / 6.0, kl_reduction="mean", attack_bn="eval"),
}


def _get(cfg, key, official=None):
  """``cfg[key]`` unless unset (missing, None, '' or < 0), else ``official``."""
  v = cfg.get(key, None) if hasattr(cfg, "get") else None
  if v is None or (isinstance(v, str) and not v) or (
      isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0):
    return official
  return v


def num_teachers(cfg) -> int:
  """How many teacher workdirs the method of ``cfg`` loads (0, 1, or 2 for IAD-II)."""
  name = cfg.get("name")
  if name not in DISTILL_METHODS:
    return 0
  return 2 if name == "iad" and _get(cfg, "teacher2_workdir", "") else 1


def _attack(cfg, method, allowed=("pgd", "fgsm")):
  attack_cfg = dict(cfg.get("attack") or {})
  if attack_cfg.get("name") == "trades_l2" and method in ("trades", "trades_awp"):
    keys = set(attack_cfg) - {"name"}
    if keys != {"eps", "step_size", "num_steps"}:
      raise ConfigError(f"attack 'trades_l2' takes exactly eps, step_size, num_steps; got "
                        f"{sorted(keys)}")
    if not (attack_cfg["eps"] > 0 and attack_cfg["step_size"] > 0
            and int(attack_cfg["num_steps"]) >= 1):
      raise ConfigError("attack 'trades_l2': eps, step_size > 0 and num_steps >= 1 needed")
    eps, step, n = attack_cfg["eps"], attack_cfg["step_size"], int(attack_cfg["num_steps"])

    def attack(logits_fn, rng, x, y, **extra):
      return trades_l2_inner_max(logits_fn, rng, x, y, eps=eps, step_size=step,
                                 num_steps=n, **extra)
    return attack
  if method in _KL_INNER_MAX and attack_cfg.get("loss", "ce") != "kl":
    raise ConfigError(f"method {method!r} maximises a KL divergence in its inner max: set "
                      f"config.method.attack.loss='kl' (got {attack_cfg.get('loss', 'ce')!r}); "
                      f"the official settings are in the configs/cifar10_*.py of the method")
  if attack_cfg.get("name") not in allowed:
    raise ConfigError(f"method {method!r} needs config.method.attack.name in {allowed}"
                      f"{' or trades_l2' if method in ('trades', 'trades_awp') else ''}, "
                      f"got {attack_cfg.get('name')!r}")
  return attack_from_config(attack_cfg)


def _choice(value, options, key):
  if value not in options:
    raise ConfigError(f"config.method.{key} must be one of {options}, got {value!r}")
  return value


def _positive(value, key, allow_zero=False):
  if not (value > 0 or (allow_zero and value == 0)):
    raise ConfigError(f"config.method.{key} must be {'>=' if allow_zero else '>'} 0, "
                      f"got {value}")
  return float(value)


def _epochs_to_steps(epochs, steps_per_epoch):
  if not epochs:
    return 0
  if steps_per_epoch is None:
    return None
  return int(round(epochs * steps_per_epoch))


def method_from_config(cfg, *, steps_per_epoch: int | None = None, teachers=(),
                       weight_decay: float = 0.0):
  """Builds the training method named ``cfg.name``.

  ``cfg`` fields (``config.method``): ``name`` in :data:`METHODS`; ``attack``
  (see :func:`jaxrobust.attacks.attack_from_config`; TRADES/AWP also accept
  ``dict(name='trades_l2', eps, step_size, num_steps)``) and ``attack_bn``
  (``'train'``/``'eval'``); ``beta``, ``alpha``, ``temperature``,
  ``kl_reduction``, ``bn_updates``, ``awp_base``, ``awp_gamma``,
  ``awp_warmup_epochs``, ``iad_begin_epochs``, ``iad_alpha1``, ``iad_alpha2``
  (see :func:`jaxrobust.train.default_config`). Numeric keys left negative and
  string keys left empty take the method's official default
  (:data:`OFFICIAL`).

  Args:
    cfg: the method config (ConfigDict or dict).
    steps_per_epoch: converts epoch settings (IAD's begin, AWP's warm-up) to
      optimiser steps; None (e.g. for validation) leaves them unresolved.
    teachers: the distillation teachers' :class:`ModelFns` (IAD-II: the
      adversarially then the naturally trained one); empty builds a method
      that raises when used (for validation).
    weight_decay: the trainer's coupled weight decay (AWP applies it at the
      perturbed point, as PyTorch does).

  Raises:
    ConfigError: unknown method or invalid settings.
  """
  name = cfg.get("name")
  if name not in METHODS:
    raise ConfigError(f"unknown method {name!r}; choose one of {METHODS}")
  if name == "standard":
    return Standard(bn=_choice(_get(cfg, "clean_bn", "train"), ("train", "eval"), "clean_bn"))
  off = OFFICIAL.get(name, {})
  bn_updates = _choice(_get(cfg, "bn_updates", "official"), BN_UPDATES, "bn_updates")
  base_name = _choice(_get(cfg, "awp_base", "pgd_at"), AWP_BASES, "awp_base")
  if name in ("pgd_at", "fgsm_at") or (name == "awp" and base_name == "pgd_at"):
    default_bn = "train"
  else:
    default_bn = OFFICIAL["trades" if name == "awp" else name]["attack_bn"]
  attack_bn = _choice(_get(cfg, "attack_bn", default_bn), ("train", "eval"), "attack_bn")
  if name in ("pgd_at", "fgsm_at"):
    expected = "pgd" if name == "pgd_at" else "fgsm"
    return AdversarialTraining(_attack(cfg, name, (expected,)), attack_bn, name)
  if name == "trades":
    return TRADES(_attack(cfg, name), beta=_positive(_get(cfg, "beta", off["beta"]), "beta",
                                                     True),
                  attack_bn=attack_bn, bn_updates=bn_updates,
                  kl_reduction=_choice(_get(cfg, "kl_reduction", off["kl_reduction"]),
                                       REDUCTIONS[:3], "kl_reduction"))
  if name == "mart":
    return MART(_attack(cfg, name), beta=_positive(_get(cfg, "beta", off["beta"]), "beta",
                                                   True), attack_bn=attack_bn)
  if name == "awp":
    off = OFFICIAL["awp"][base_name]
    if base_name == "pgd_at":
      base = AdversarialTraining(_attack(cfg, "pgd_at", ("pgd", "fgsm")), attack_bn, "pgd_at")
    else:
      t_off = OFFICIAL["trades"]
      base = TRADES(_attack(cfg, "trades_awp"),
                    beta=_positive(_get(cfg, "beta", t_off["beta"]), "beta", True),
                    attack_bn=attack_bn, bn_updates=bn_updates,
                    kl_reduction=_choice(_get(cfg, "kl_reduction", t_off["kl_reduction"]),
                                         REDUCTIONS[:3], "kl_reduction"),
                    bn_sequence=("adv", "clean", "clean"))
    gamma = _positive(_get(cfg, "awp_gamma", off["awp_gamma"]), "awp_gamma", True)
    warmup = _get(cfg, "awp_warmup_epochs", off["awp_warmup_epochs"])
    return AWP(base, gamma=gamma, proxy_lr=off["proxy_lr"],
               warmup_steps=_epochs_to_steps(warmup, steps_per_epoch),
               coupled_weight_decay=float(weight_decay))
  # Distillation.
  teachers = tuple(teachers)
  teacher = teachers[0] if teachers else None
  attack = _attack(cfg, name)
  if name == "ard_distill":
    alpha = float(_get(cfg, "alpha", off["alpha"]))
    if not 0 <= alpha <= 1:
      raise ConfigError(f"config.method.alpha must be in [0, 1] for ard_distill, got {alpha}")
    return ARDDistill(attack, teacher, alpha=alpha,
                      temperature=_positive(_get(cfg, "temperature", off["temperature"]),
                                            "temperature"),
                      kl_reduction=_choice(_get(cfg, "kl_reduction", off["kl_reduction"]),
                                           REDUCTIONS[:3], "kl_reduction"),
                      attack_bn=attack_bn, bn_updates=bn_updates)
  if name == "iad":
    two = bool(_get(cfg, "teacher2_workdir", ""))
    begin = _get(cfg, "iad_begin_epochs", 40.0 if two else 60.0)
    return IAD(attack, teacher, teachers[1] if len(teachers) > 1 else None,
               beta=_positive(_get(cfg, "beta", off["beta"]), "beta", True),
               alpha=float(_get(cfg, "alpha", off["alpha"])),
               temperature=_positive(_get(cfg, "temperature", off["temperature"]),
                                     "temperature"),
               alpha1=float(_get(cfg, "iad_alpha1", off["iad_alpha1"])),
               alpha2=float(_get(cfg, "iad_alpha2", off["iad_alpha2"])),
               begin_step=_epochs_to_steps(begin, steps_per_epoch),
               attack_bn=attack_bn, bn_updates=bn_updates)
  alpha = float(_get(cfg, "alpha", off["alpha"]))
  if not 0 <= alpha <= 1:
    raise ConfigError(f"config.method.alpha must be in [0, 1] for rslad, got {alpha}")
  return RSLAD(attack, teacher, alpha=alpha,
               kl_reduction=_choice(_get(cfg, "kl_reduction", off["kl_reduction"]),
                                    REDUCTIONS[:3], "kl_reduction"),
               attack_bn=attack_bn, bn_updates=bn_updates)


__all__ = ["ARDDistill", "AWP", "AdversarialTraining", "DISTILL_METHODS", "IAD", "MART",
           "METHODS", "ModelFns", "OFFICIAL", "RSLAD", "Standard", "TRADES", "accuracy_sum",
           "cross_entropy", "method_from_config", "num_teachers",
           "relative_weight_perturbation", "replay_bn_updates", "train_passes",
           "trades_l2_inner_max"]
