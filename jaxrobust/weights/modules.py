"""Modules of a model: its named conv / dense layers in a parameter pytree.

A *module* is one convolution or dense layer, named by the dotted path of its
parameters in the NNX state (``convs.1``, ``blocks.3.conv2``, ``linear``).
Layer re-initialisation (:mod:`jaxrobust.weights.reinit`) and RiFT
(:mod:`jaxrobust.rift`: criticality, fine-tuning of one module) act on every
parameter under a module's path (kernel and bias); RiFT's criticality
perturbs the module's ``kernel`` only, as the official code perturbs
``<module>.weight`` (``microsoft/robustlearn:RiFT/main.py``, ``layer_sharpness``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax

from jaxrobust.errors import ConfigError
from jaxrobust.utils.paths import compile_regex, named_leaves, param_name


@dataclasses.dataclass(frozen=True)
class Module:
  """One conv / dense layer.

  Attributes:
    name: dotted path of the layer, e.g. ``'blocks.3.conv2'``.
    leaf_index: position of its kernel in ``jax.tree.leaves(params)``.
    shape: kernel shape (``[kh, kw, c_in, c_out]`` or ``[d_in, d_out]``).
  """
  name: str
  leaf_index: int
  shape: tuple[int, ...]


def list_modules(params, include: str = "", exclude: str = "") -> list[Module]:
  """The conv / dense layers of ``params`` whose name matches the filters.

  Args:
    params: NNX ``State`` (or any pytree) of parameters.
    include: regex searched in each module name ('' = every module).
    exclude: regex; matching modules are dropped ('' = none). The official
      code skips WideResNet modules whose name contains ``sub``.

  Returns:
    Modules in parameter order: every leaf named ``*.kernel`` with 2 (dense)
    or 4 (conv) dimensions.

  Raises:
    ConfigError: an invalid regex, or no module left after filtering.
  """
  inc = compile_regex(include, "module include regex")
  exc = compile_regex(exclude, "module exclude regex") if exclude else None
  found, names = [], []
  for i, (name, leaf) in enumerate(named_leaves(params)):
    if not name.endswith(".kernel") or len(leaf.shape) not in (2, 4):
      continue
    module = name[:-len(".kernel")]
    names.append(module)
    if inc.search(module) and not (exc and exc.search(module)):
      found.append(Module(module, i, tuple(leaf.shape)))
  if not found:
    raise ConfigError(f"no conv/dense module matches include={include!r} exclude={exclude!r}; "
                      f"modules are {names}")
  return found


def module_regex(names: Sequence[str]) -> str:
  """A regex matching exactly the parameters under the given module names."""
  return "^(" + "|".join(re.escape(n) for n in names) + r")\."


def replace_module(params, source, name: str):
  """``params`` with every leaf under module ``name`` taken from ``source``.

  ``source`` has the structure of ``params`` (e.g. the freshly initialised
  weights of the same architecture).
  """
  prefix = name + "."
  return jax.tree_util.tree_map_with_path(
      lambda p, a, b: b if param_name(p).startswith(prefix) else a, params, source)


__all__ = ["Module", "list_modules", "module_regex", "replace_module"]
