"""The built-in attacks, each registered once (:mod:`jaxrobust.attacks.registry`).

=============  ======================================  =========================
name           function                                aliases
=============  ======================================  =========================
``pgd``        :func:`~jaxrobust.attacks.pgd`
``fgsm``       :func:`~jaxrobust.attacks.fgsm`
``apgd``       :func:`~jaxrobust.attacks.apgd`
``apgd_ce``    ``apgd`` with ``loss='ce'``             ``apgd-ce``
``apgd_dlr``   ``apgd`` with ``loss='dlr'``            ``apgd-dlr``
``apgd_t``     :func:`~jaxrobust.attacks.apgd_targeted`  ``apgd-t``, ``apgd_targeted``
``fab``        :func:`~jaxrobust.attacks.fab`
``fab_t``      :func:`~jaxrobust.attacks.fab_targeted`   ``fab-t``, ``fab_targeted``
``square``     :func:`~jaxrobust.attacks.square`
``trades_l2``  :func:`~jaxrobust.attacks.trades_l2_inner_max`
=============  ======================================  =========================

The AutoAttack entries (``apgd_ce``, ``apgd_dlr``, ``apgd_t``, ``fab``,
``fab_t``, ``square``) carry an :class:`AutoAttackHook` naming which
``AutoAttackSettings`` fields set them (``fra31/auto-attack:autoattack/
autoattack.py``, ``set_version``).
"""
from __future__ import annotations

from jaxrobust.attacks._apgd import (apgd, apgd_pass, apgd_pass_segments, apgd_targeted,
                                     apgd_targeted_pass, apgd_targeted_pass_segments)
from jaxrobust.attacks._fab import FAB_NORMS, fab, fab_pass, fab_targeted, fab_targeted_pass
from jaxrobust.attacks._losses import LOSSES
from jaxrobust.attacks._pgd import fgsm, pgd
from jaxrobust.attacks._projections import NORMS, RANDOM_STARTS
from jaxrobust.attacks._square import SQUARE_NORMS, square, square_pass, square_pass_segments
from jaxrobust.attacks._trades_l2 import trades_l2_inner_max
from jaxrobust.attacks.registry import AttackSpec, AutoAttackHook, register_attack
from jaxrobust.errors import ConfigError


def _positive(name, cfg, key):
  v = cfg.get(key)
  if v is not None and not v > 0:
    raise ConfigError(f"attack {name!r}: {key} must be > 0, got {v}")


def _at_least_one(name, cfg, *keys):
  for key in keys:
    if key in cfg and int(cfg[key]) < 1:
      raise ConfigError(f"attack {name!r}: {key} must be >= 1, got {cfg[key]}")


def _validator(name, norms=NORMS, step_size_required=False, steps_required=False,
               default_norm="linf"):
  """The checks every built-in attack shares (eps, norm, step size, counts, loss, start)."""

  def validate(cfg):
    eps = cfg.get("eps")
    if eps is None or not eps > 0:
      raise ConfigError(f"attack {name!r}: eps must be > 0 (pixel units), got {eps}")
    norm = cfg.get("norm", default_norm)
    if norm not in norms:
      raise ConfigError(f"unknown norm {norm!r} for attack {name!r}; use one of {norms}")
    if norm == "linf" and eps > 1:
      raise ConfigError(f"attack {name!r}: L-inf eps {eps} > 1 is outside the [0, 1] pixel "
                        f"scale; write e.g. 8/255")
    if (step_size_required or cfg.get("step_size") is not None) and not (
        cfg.get("step_size") is not None and cfg["step_size"] > 0):
      raise ConfigError(f"attack {name!r}: step_size must be > 0, got {cfg.get('step_size')}")
    if steps_required and int(cfg.get("num_steps", 0)) < 1:
      raise ConfigError(f"attack {name!r}: num_steps must be >= 1, got {cfg.get('num_steps')}")
    _at_least_one(name, cfg, "num_steps", "num_restarts", "n_target_classes", "eot_iter")
    if cfg.get("loss", "ce") not in LOSSES:
      raise ConfigError(f"unknown attack loss {cfg['loss']!r}; use one of {sorted(LOSSES)}")
    if cfg.get("random_start", "uniform") not in RANDOM_STARTS:
      raise ConfigError(f"unknown random_start {cfg['random_start']!r}; use {RANDOM_STARTS}")
    for key in ("rho", "p_init", "eta"):
      _positive(name, cfg, key)

  return validate


def _apgd_loss(cfg):
  _validator("apgd")(cfg)
  if cfg.get("loss", "ce") not in ("ce", "dlr"):
    raise ConfigError(f"attack 'apgd': loss must be 'ce' or 'dlr', got {cfg['loss']!r}")


def _square_settings(cfg):
  _validator("square", norms=SQUARE_NORMS)(cfg)
  if not isinstance(cfg.get("rescale_schedule", True), bool):
    raise ConfigError(f"attack 'square': rescale_schedule must be true or false, got "
                      f"{cfg['rescale_schedule']!r}")


_APGD = {"eps", "norm", "num_steps", "num_restarts", "rho", "eot_iter", "unroll"}
_FAB = {"eps", "norm", "num_steps", "num_restarts", "alpha_max", "eta", "beta"}
_APGD_AA = AutoAttackHook(
    settings={"num_steps": "apgd_steps", "num_restarts": "apgd_restarts",
              "eot_iter": "eot_iter"},
    passes=lambda cfg: int(cfg.get("num_restarts", 1)), run=apgd_pass,
    segments=apgd_pass_segments)

BUILTIN = (
    AttackSpec(
        "pgd", pgd, settings={"eps", "step_size", "num_steps", "norm", "loss", "random_start",
                              "targeted", "num_restarts", "early_stop", "kappa", "unroll"},
        required={"eps", "step_size", "num_steps"},
        validate=_validator("pgd", step_size_required=True, steps_required=True),
        doc="PGD (Madry et al. 2018), L-inf / L2, CE / CW / margin / KL / DLR loss"),
    AttackSpec(
        "fgsm", fgsm, settings={"eps", "step_size", "norm", "loss", "random_start",
                                "targeted", "kappa"},
        validate=_validator("fgsm"), doc="FGSM / FGSM-RS: one projected step"),
    AttackSpec(
        "apgd", apgd, settings=_APGD | {"loss"}, validate=_apgd_loss,
        doc="Auto-PGD (Croce & Hein 2020) with restarts; loss 'ce' or 'dlr'"),
    AttackSpec(
        "apgd_ce", apgd, settings=_APGD, fixed={"loss": "ce"}, aliases=("apgd-ce",),
        validate=_validator("apgd_ce"), autoattack=_APGD_AA, doc="APGD on the cross-entropy"),
    AttackSpec(
        "apgd_dlr", apgd, settings=_APGD, fixed={"loss": "dlr"}, aliases=("apgd-dlr",),
        validate=_validator("apgd_dlr"),
        autoattack=AutoAttackHook(settings=_APGD_AA.settings, passes=_APGD_AA.passes,
                                  run=apgd_pass, segments=apgd_pass_segments),
        doc="APGD on the DLR loss"),
    AttackSpec(
        "apgd_t", apgd_targeted, settings=_APGD | {"n_target_classes"},
        aliases=("apgd-t", "apgd_targeted"), validate=_validator("apgd_t"),
        autoattack=AutoAttackHook(
            settings={"num_steps": "apgd_steps", "n_target_classes": "apgd_t_targets",
                      "eot_iter": "eot_iter"},
            passes=lambda cfg: int(cfg.get("n_target_classes", 9)) * int(
                cfg.get("num_restarts", 1)),
            run=apgd_targeted_pass, segments=apgd_targeted_pass_segments),
        doc="APGD-T: targeted DLR towards the top non-true classes"),
    AttackSpec(
        "fab", fab, settings=_FAB, validate=_validator("fab", norms=FAB_NORMS),
        autoattack=AutoAttackHook(settings={"num_steps": "fab_steps",
                                            "num_restarts": "fab_restarts"},
                                  passes=lambda cfg: int(cfg.get("num_restarts", 5)),
                                  run=fab_pass),
        doc="FAB (Croce & Hein 2020), untargeted, minimal-norm"),
    AttackSpec(
        "fab_t", fab_targeted, settings=_FAB | {"n_target_classes"},
        aliases=("fab-t", "fab_targeted"), validate=_validator("fab_t", norms=FAB_NORMS),
        autoattack=AutoAttackHook(settings={"num_steps": "fab_steps",
                                            "num_restarts": "fab_t_restarts",
                                            "n_target_classes": "fab_t_targets"},
                                  passes=lambda cfg: int(cfg.get("n_target_classes", 9)) * int(
                                      cfg.get("num_restarts", 1)),
                                  run=fab_targeted_pass),
        doc="FAB-T, targeted FAB"),
    AttackSpec(
        "square", square,
        settings={"eps", "norm", "n_queries", "p_init", "num_restarts", "rescale_schedule"},
        validate=_square_settings,
        autoattack=AutoAttackHook(settings={"n_queries": "square_queries",
                                            "num_restarts": "square_restarts",
                                            "rescale_schedule": "square_rescale_schedule"},
                                  passes=lambda cfg: int(cfg.get("num_restarts", 1)),
                                  run=square_pass, segments=square_pass_segments),
        doc="Square attack (Andriushchenko et al. 2020), score-based"),
    AttackSpec(
        "trades_l2", trades_l2_inner_max, settings={"eps", "step_size", "num_steps"},
        required={"eps", "step_size", "num_steps"},
        validate=_validator("trades_l2", norms=("l2",), step_size_required=True,
                            steps_required=True, default_norm="l2"),
        doc="TRADES's L2 inner maximisation (KL, SGD on delta)"),
)

for _spec in BUILTIN:
  register_attack(_spec)
