"""Attacks as pure functions ``attack(logits_fn, rng, x, y, **settings) -> x_adv``.

Sign convention: attack objectives are MAXIMISED (see ``_losses``). Images are
float32 NHWC in [0, 1]; eps and step sizes are in pixel units.

The model: ``logits_fn(x) -> logits`` for a deterministic model; a model with
random parts active at evaluation time is ``logits_fn(x, key)`` marked with
:func:`stochastic`, and every attack calls it through :func:`call_logits` with
a fresh key per forward pass (:func:`model_key`, derived from the attack's
``rng``). See :mod:`jaxrobust.types`.

Attacks are looked up by name in one registry (:mod:`jaxrobust.attacks.registry`):
:func:`attack_from_config` builds one from plain data, :func:`register_attack`
adds one (from anywhere, one :class:`AttackSpec`), :data:`ATTACKS` maps the
canonical names to the functions. Built-in names: ``pgd``, ``fgsm``, ``apgd``,
``apgd_ce``, ``apgd_dlr``, ``apgd_t``, ``fab``, ``fab_t``, ``square``,
``trades_l2``, ``pgd_prm`` (PGD with the ViT recipe's perturbation random
masking); AutoAttack's spellings (``apgd-ce``, ``fab-t``, ...) are aliases.
"""
from __future__ import annotations

from jaxrobust.attacks._apgd import (apgd, apgd_pass, apgd_single_run, apgd_targeted,
                                     apgd_targeted_pass, checkpoint_schedule, oscillation_flags,
                                     step_size_flags, top_k_target)
from jaxrobust.attacks._fab import fab, fab_pass, fab_targeted, fab_targeted_pass
from jaxrobust.attacks._fab_projections import FAB_NORMS, fab_projection
from jaxrobust.attacks._losses import (LOSSES, ce_loss, cw_loss, dlr_loss, dlr_targeted_loss,
                                       kl_loss, margin_floor_loss, margin_loss)
from jaxrobust.attacks._model import (StochasticLogitsFn, bind_key, call_logits,
                                      is_stochastic, model_key, stochastic)
from jaxrobust.attacks._norms import l2_norm
from jaxrobust.attacks._pgd import CPU_UNROLL, default_unroll, fgsm, pgd
from jaxrobust.attacks._projections import (NORMS, RANDOM_STARTS, ascent_direction,
                                            l2_project, linf_project, project, random_init)
from jaxrobust.attacks._square import SQUARE_NORMS, square, square_pass
from jaxrobust.attacks._trades_l2 import trades_l2_inner_max
from jaxrobust.attacks.registry import (ATTACKS, AttackSpec, AutoAttackHook, attack_from_config,
                                        attack_names, get_attack, register_attack,
                                        resolve_attack_name, unregister_attack)
from jaxrobust.attacks import _builtins  # noqa: E402,F401  registers the built-in attacks
from jaxrobust.attacks._prm import (PRM_MODES, num_masked_patches, patch_keep_mask,  # noqa: E402
                                    pgd_prm)  # registers pgd_prm (perturbation random masking)

__all__ = ["ATTACKS", "AttackSpec", "AutoAttackHook", "CPU_UNROLL", "FAB_NORMS", "LOSSES", "NORMS",
           "PRM_MODES", "RANDOM_STARTS", "SQUARE_NORMS", "StochasticLogitsFn", "apgd", "apgd_pass",
           "apgd_single_run", "apgd_targeted", "apgd_targeted_pass", "ascent_direction",
           "attack_from_config", "attack_names", "bind_key", "call_logits", "ce_loss",
           "checkpoint_schedule", "cw_loss", "default_unroll", "dlr_loss", "dlr_targeted_loss",
           "fab", "fab_pass", "fab_projection", "fab_targeted", "fab_targeted_pass", "fgsm",
           "get_attack", "is_stochastic",
           "kl_loss", "l2_norm", "l2_project", "linf_project", "margin_floor_loss", "margin_loss",
           "model_key",
           "num_masked_patches", "oscillation_flags", "patch_keep_mask", "pgd", "pgd_prm",
           "project", "random_init", "register_attack", "resolve_attack_name", "square",
           "square_pass",
           "step_size_flags", "stochastic", "top_k_target", "trades_l2_inner_max",
           "unregister_attack"]
