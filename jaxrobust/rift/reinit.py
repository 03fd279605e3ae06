"""Layer re-initialisation analysis ("Are all layers created equal?", Zhang, Bengio
& Singer, JMLR 2022).

For each module, the trained weights under its path (kernel and bias) are
replaced either by their values at initialisation (*re-initialisation*: the
same seed as the training run, so exactly the starting weights) or by a fresh
random draw from the same initialiser (*re-randomisation*), everything else
kept, and the model's clean and robust accuracy are measured. Robustness-
critical layers are those whose re-initialisation destroys robust accuracy;
the paper finds later layers often "robust" to re-initialisation. BatchNorm
running averages are kept (they belong to the BatchNorm modules).
"""
from __future__ import annotations

from typing import Callable, Sequence

from jaxrobust.rift.modules import Module, replace_module

MODES = ("reinit", "rerandom")


def reinit_analysis(params, modules: Sequence[Module], init_params, random_params,
                    evaluate: Callable, modes: Sequence[str] = MODES,
                    progress: Callable | None = None) -> list[dict]:
  """Clean / robust accuracy after resetting each module.

  Args:
    params: trained parameters.
    modules: modules to reset, one at a time.
    init_params: the parameters at initialisation (same structure).
    random_params: an independent random initialisation (same structure).
    evaluate: ``params -> {'clean': acc, 'robust': acc}``.
    modes: subset of :data:`MODES`.
    progress: optional callback ``(module name, mode)`` after each evaluation.

  Returns:
    ``[{'module', 'mode', 'clean', 'robust'}]`` for every module and mode.

  Raises:
    ValueError: an unknown mode.
  """
  bad = set(modes) - set(MODES)
  if bad:
    raise ValueError(f"unknown re-initialisation mode(s) {sorted(bad)}; use {MODES}")
  sources = {"reinit": init_params, "rerandom": random_params}
  rows = []
  for m in modules:
    for mode in modes:
      acc = evaluate(replace_module(params, sources[mode], m.name))
      rows.append({"module": m.name, "mode": mode, **acc})
      if progress is not None:
        progress(m.name, mode)
  return rows
