"""Training methods, each registered by its own module (:mod:`jaxrobust.methods.registry`).

``config.method`` is :func:`method_config` of the method's name; the trainer
builds it with :func:`method_from_config`. Registered here: ``standard``
(:mod:`.standard`), ``pgd_at`` and ``fgsm_at`` (:mod:`.adversarial`),
``trades`` (:mod:`.trades`), ``mart`` (:mod:`.mart`), ``awp`` (:mod:`.awp`),
``ard_distill``, ``iad`` and ``rslad`` (:mod:`.distill`), ``vit_pgd_at``,
``vit_trades`` and ``vit_mart`` (:mod:`.vit_recipe`, Mo et al.'s ViT recipe),
``regmixup`` and our adversarial ``regmixup_at`` (:mod:`.regmixup`),
``rotation_ssl`` (:mod:`.rotation`), the semi-supervised ``rst``, ``uat_ot`` and
``uat_ft`` (:mod:`.semisup`). A new objective is a module calling
:func:`register_method`.
"""
from __future__ import annotations

from jaxrobust.methods.registry import (ATTACK_BN_UPDATES, PAD_MODES, BuildContext, MethodSpec, get_method,
                                        method_config, method_from_config, method_settings,
                                        num_teachers, official_pad_mode, register_method,
                                        registered_methods)
from jaxrobust.methods.base import (AttackBNUpdates, ModelFns, accuracy_sum, attack_bn_updates,
                                    attack_in_view, cross_entropy, replay_bn_updates,
                                    train_passes)
from jaxrobust.methods.standard import Standard
from jaxrobust.methods.adversarial import AdversarialTraining
from jaxrobust.methods.trades import TRADES, trades_l2_inner_max
from jaxrobust.methods.mart import MART
from jaxrobust.methods.awp import AWP, relative_weight_perturbation
from jaxrobust.methods.distill import DISTILL_METHODS, IAD, RSLAD, ARDDistill
from jaxrobust.methods.vit_recipe import ViTAdversarialTraining
from jaxrobust.methods.regmixup import RegMixup
from jaxrobust.methods.rotation import RotationSSL
from jaxrobust.methods.semisup import RST, SEMISUP_METHODS, UAT

# The built-in methods (registration order); registered_methods() includes user ones.
METHODS = registered_methods()

__all__ = ["ARDDistill", "ATTACK_BN_UPDATES", "AWP", "AdversarialTraining", "AttackBNUpdates",
           "BuildContext", "DISTILL_METHODS", "IAD", "MART", "METHODS", "MethodSpec", "ModelFns",
           "PAD_MODES", "RSLAD", "RST", "RegMixup", "RotationSSL", "SEMISUP_METHODS", "Standard",
           "TRADES", "UAT",
           "accuracy_sum", "attack_bn_updates", "attack_in_view", "cross_entropy", "get_method",
           "method_config", "method_from_config", "method_settings", "num_teachers",
           "official_pad_mode", "register_method",
           "registered_methods", "relative_weight_perturbation", "replay_bn_updates",
           "train_passes", "trades_l2_inner_max", "ViTAdversarialTraining"]
