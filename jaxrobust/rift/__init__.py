"""RiFT (Zhu et al., ICCV 2023): robust critical fine-tuning.

Module robust criticality (:mod:`~jaxrobust.rift.mrc`), fine-tuning of the
least critical module (``jaxrobust.train`` with ``train.init_from`` and
``train.trainable``), weight interpolation (:mod:`~jaxrobust.rift.interpolate`),
layer re-initialisation analysis (:mod:`~jaxrobust.rift.reinit`) and the
end-to-end pipeline (:mod:`~jaxrobust.rift.pipeline`, CLI
``python -m jaxrobust.rift``).
"""
from jaxrobust.rift.config import default_rift_config, validate_rift_config
from jaxrobust.rift.interpolate import interpolate, select_alpha
from jaxrobust.rift.modules import Module, list_modules, module_regex, replace_module
from jaxrobust.rift.mrc import (MRCSettings, ModuleCriticality, build_adversarial_set,
                                least_critical, make_group_maximizer, mrc_sweep)
from jaxrobust.rift.reinit import reinit_analysis

__all__ = ["MRCSettings", "Module", "ModuleCriticality", "build_adversarial_set",
           "default_rift_config", "interpolate", "least_critical", "list_modules",
           "make_group_maximizer", "module_regex", "mrc_sweep", "reinit_analysis",
           "replace_module", "select_alpha", "validate_rift_config"]
