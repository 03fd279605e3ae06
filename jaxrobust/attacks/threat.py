"""The threat model (``eps``, ``norm``) of attack configs: set once, filled into every branch.

A config sets the threat model once (``config.eps`` in pixel units, ``config.norm``)
and its attack branches (training, validation, test) leave ``eps`` / ``norm``
unset; :func:`resolve_attack` fills an unset key from the top level when the
attack is built. A branch that sets its own ``eps`` or ``norm`` keeps it.

Why not a shared ``ml_collections.FieldReference``: assigning to a field that
holds a shared reference sets the shared value, so overriding one branch
(``--config.eval.test_attack.eps=0.03``) would silently change every branch.
Unset keys are typed placeholders instead, so command-line overrides of a
branch still parse (``config_flags`` needs the key and its type).
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from jaxrobust.errors import ConfigError

THREAT_KEYS = ("eps", "norm")
# Attacks whose norm is fixed (no ``norm`` setting): name -> norm.
FIXED_NORM = {"trades_l2": "l2"}


def attack_config(name: str, **settings: Any) -> ml_collections.ConfigDict:
  """An attack config whose ``eps`` / ``norm`` (if not given) come from the top level.

  Args:
    name: the attack's name (``jaxrobust.attacks.attack_from_config``; e.g.
      ``'pgd'``, ``'fgsm'``, ``'trades_l2'``).
    **settings: the attack's settings (``step_size``, ``num_steps``, ``loss``,
      ...). ``eps`` (pixel units) and ``norm`` given here override the
      config's threat model for this branch only.

  Returns:
    A ConfigDict with ``name``, the settings and typed unset placeholders
    for the missing threat-model keys (no ``norm`` for attacks in
    :data:`FIXED_NORM`).
  """
  out = {"name": name}
  out["eps"] = settings.pop("eps", None)
  if out["eps"] is None:
    out["eps"] = config_dict.placeholder(float)
  if name not in FIXED_NORM:
    out["norm"] = settings.pop("norm", None)
    if out["norm"] is None:
      out["norm"] = config_dict.placeholder(str)
  out.update(settings)
  return ml_collections.ConfigDict(out)


def resolve_attack(cfg: Mapping[str, Any] | None, *, eps: float, norm: str,
                   where: str = "attack") -> dict | None:
  """``cfg`` as a plain dict with an unset (missing or None) ``eps`` / ``norm`` filled.

  Args:
    cfg: an attack config (mapping with ``name``), or None (clean: returned
      as is).
    eps: the config's radius, pixel units (e.g. 8/255 for L-inf).
    norm: the config's norm (``'linf'`` or ``'l2'``).
    where: the config key of ``cfg``, for error messages.

  Returns:
    A new dict; keys that ``cfg`` sets keep their values.

  Raises:
    ConfigError: ``cfg`` has a fixed-norm attack (e.g. ``trades_l2``, L2)
      whose ``eps`` would come from a threat model of another norm.
  """
  if cfg is None:
    return None
  out = dict(cfg)
  fixed = FIXED_NORM.get(out.get("name"))
  if fixed is not None:
    if out.get("norm", "") is None:
      del out["norm"]
    if out.get("eps") is None and norm != fixed:
      raise ConfigError(f"{where}: attack {out.get('name')!r} is an {fixed} attack but the "
                        f"config's threat model is {norm!r}: set {where}.eps or config.norm")
  elif out.get("norm") is None:
    out["norm"] = norm
  if out.get("eps") is None:
    out["eps"] = eps
  return out


__all__ = ["FIXED_NORM", "THREAT_KEYS", "attack_config", "resolve_attack"]
