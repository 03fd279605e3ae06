"""RiFT (Zhu et al., ICCV 2023): robust critical fine-tuning.

Module robust criticality (:mod:`~jaxrobust.rift.mrc`), fine-tuning of the
least critical module (``jaxrobust.train`` with ``train.init_from`` and
``train.trainable``), weight interpolation (:mod:`~jaxrobust.rift.interpolate`),
layer re-initialisation analysis (:mod:`~jaxrobust.rift.reinit`), robust
accuracy over several attack runs (:mod:`~jaxrobust.rift.evaluation`), the
official CIFAR-10-C sets (:mod:`~jaxrobust.rift.ood`) and the end-to-end
pipeline (:mod:`~jaxrobust.rift.pipeline`, CLI ``python -m jaxrobust.rift``)
with its two protocols, ``'validation'`` (default) and ``'official'``
(:mod:`~jaxrobust.rift.config`).
"""
from jaxrobust.rift.config import PROTOCOLS, default_rift_config, validate_rift_config
from jaxrobust.rift.evaluation import evaluate_runs, make_runs_eval_step
from jaxrobust.rift.interpolate import interpolate, select_alpha
from jaxrobust.rift.modules import Module, list_modules, module_regex, replace_module
from jaxrobust.rift.mrc import (MRCSettings, ModuleCriticality, build_adversarial_set,
                                least_critical, make_group_maximizer, mrc_sweep)
from jaxrobust.rift.ood import RIFT_CORRUPTIONS, check_official_ood, official_ood_sets
from jaxrobust.rift.reinit import reinit_analysis

__all__ = ["MRCSettings", "Module", "ModuleCriticality", "PROTOCOLS", "RIFT_CORRUPTIONS",
           "build_adversarial_set", "check_official_ood", "default_rift_config", "evaluate_runs",
           "interpolate", "least_critical", "list_modules", "make_group_maximizer",
           "make_runs_eval_step", "module_regex", "mrc_sweep", "official_ood_sets",
           "reinit_analysis", "replace_module", "select_alpha", "validate_rift_config"]
