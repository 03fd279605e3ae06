"""Modules of a model for RiFT: :mod:`jaxrobust.weights.modules` (shared with re-initialisation).

RiFT's criticality (MRC) perturbs a module's ``kernel`` only, as the official
code perturbs ``<module>.weight`` only (``microsoft/robustlearn:RiFT/main.py``,
``layer_sharpness``); fine-tuning and re-initialisation act on every parameter
under the module's path (kernel and bias).
"""
from jaxrobust.weights.modules import Module, list_modules, module_regex, replace_module

__all__ = ["Module", "list_modules", "module_regex", "replace_module"]
