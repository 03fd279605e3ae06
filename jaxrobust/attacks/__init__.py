"""Attacks as pure functions ``attack(logits_fn, rng, x, y, **settings) -> x_adv``.

Sign convention: attack objectives are MAXIMISED (see ``_losses``). Images are
float32 NHWC in [0, 1]; eps and step sizes are in pixel units.
"""
from __future__ import annotations

from typing import Callable

from jaxrobust.attacks._fab import fab, fab_projection, fab_targeted
from jaxrobust.attacks._losses import (LOSSES, ce_loss, cw_loss, dlr_loss,
                                       dlr_targeted_loss, kl_loss, margin_loss)
from jaxrobust.attacks._apgd import (apgd, apgd_single_run, apgd_targeted, oscillation_flags,
                                     step_size_flags,
                                     checkpoint_schedule, top_k_target)
from jaxrobust.attacks._pgd import CPU_UNROLL, default_unroll, fgsm, pgd
from jaxrobust.attacks._projections import (NORMS, RANDOM_STARTS, ascent_direction,
                                            l2_project, linf_project, project,
                                            random_init)
from jaxrobust.attacks._square import square
from jaxrobust.errors import ConfigError

ATTACKS = {"pgd": pgd, "fgsm": fgsm, "apgd": apgd, "apgd_t": apgd_targeted,
           "fab": fab, "fab_t": fab_targeted, "square": square}

_KEYS = {"pgd": {"eps", "step_size", "num_steps", "norm", "loss", "random_start", "targeted",
                 "num_restarts", "early_stop", "kappa", "unroll"},
         "fgsm": {"eps", "step_size", "norm", "loss", "random_start", "targeted", "kappa"},
         "apgd": {"eps", "norm", "num_steps", "loss", "num_restarts", "rho", "unroll"},
         "apgd_t": {"eps", "norm", "num_steps", "n_target_classes", "num_restarts", "rho",
                    "unroll"},
         "fab": {"eps", "norm", "num_steps", "num_restarts", "alpha_max", "eta", "beta"},
         "fab_t": {"eps", "norm", "num_steps", "num_restarts", "n_target_classes", "alpha_max",
                   "eta", "beta"},
         "square": {"eps", "norm", "n_queries", "p_init", "num_restarts"}}


def attack_from_config(cfg) -> Callable:
  """Returns ``attack(logits_fn, rng, x, y, **extra) -> x_adv`` from plain data.

  Args:
    cfg: mapping with ``name`` (``'pgd'`` or ``'fgsm'``) and that attack's
      keyword settings, e.g. ``dict(name='pgd', eps=8/255, step_size=2/255,
      num_steps=10)``.

  Raises:
    ConfigError: unknown attack name or setting, or an invalid value.
  """
  cfg = dict(cfg)
  name = cfg.pop("name", None)
  if name not in ATTACKS:
    raise ConfigError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
  unknown = set(cfg) - _KEYS[name]
  if unknown:
    raise ConfigError(f"unknown setting(s) {sorted(unknown)} for attack {name!r}; "
                      f"valid: {sorted(_KEYS[name])}")
  eps = cfg.get("eps")
  if eps is None or not eps > 0:
    raise ConfigError(f"attack {name!r}: eps must be > 0 (pixel units), got {eps}")
  if cfg.get("norm", "linf") == "linf" and eps > 1:
    raise ConfigError(f"attack {name!r}: L-inf eps {eps} > 1 is outside the [0, 1] pixel "
                      f"scale; write e.g. 8/255")
  if (name == "pgd" or cfg.get("step_size") is not None) and not (
      cfg.get("step_size") is not None and cfg["step_size"] > 0):
    raise ConfigError(f"attack {name!r}: step_size must be > 0, got {cfg.get('step_size')}")
  if name == "pgd":
    if int(cfg.get("num_steps", 0)) < 1:
      raise ConfigError(f"attack 'pgd': num_steps must be >= 1, got {cfg.get('num_steps')}")
  if cfg.get("loss", "ce") not in LOSSES:
    raise ConfigError(f"unknown attack loss {cfg['loss']!r}; use one of {sorted(LOSSES)}")
  if cfg.get("norm", "linf") not in NORMS:
    raise ConfigError(f"unknown norm {cfg['norm']!r}; use one of {NORMS}")
  if cfg.get("random_start", "uniform") not in RANDOM_STARTS:
    raise ConfigError(f"unknown random_start {cfg['random_start']!r}; use {RANDOM_STARTS}")
  fn = ATTACKS[name]

  def attack(logits_fn, rng, x, y, **extra):
    return fn(logits_fn, rng, x, y, **cfg, **extra)

  return attack


__all__ = ["apgd", "apgd_single_run", "apgd_targeted", "checkpoint_schedule", "top_k_target",
           "oscillation_flags", "step_size_flags",
           "ATTACKS", "CPU_UNROLL", "LOSSES", "NORMS", "RANDOM_STARTS", "ascent_direction",
           "attack_from_config", "ce_loss", "cw_loss", "default_unroll", "dlr_loss",
           "dlr_targeted_loss", "fab", "fab_projection", "fab_targeted", "fgsm", "kl_loss",
           "l2_project", "linf_project",
           "margin_loss", "pgd", "project", "random_init", "square"]
