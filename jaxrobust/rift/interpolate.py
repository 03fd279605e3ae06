"""RiFT's weight interpolation and the choice of the mixing coefficient.

``theta(alpha) = alpha * theta_FT + (1 - alpha) * theta_AT`` over the whole
model state, BatchNorm running averages included (the official
``interpolation`` in ``microsoft/robustlearn:RiFT/utils.py`` mixes the full
``state_dict``), for ``alpha`` in a grid (default 0, 0.1, ..., 1).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax

from jaxrobust.errors import ConfigError


def interpolate(theta_at, theta_ft, alpha: float):
  """``alpha * theta_ft + (1 - alpha) * theta_at`` leaf by leaf.

  Args:
    theta_at, theta_ft: pytrees of equal structure (params or running averages)
      of the adversarially trained and the fine-tuned model.
    alpha: mixing coefficient; 0 returns ``theta_at`` and 1 ``theta_ft`` exactly.

  Raises:
    ConfigError: the two pytrees differ in structure or leaf shapes.
  """
  if jax.tree.structure(theta_at) != jax.tree.structure(theta_ft):
    raise ConfigError("cannot interpolate models of different structure")
  for a, b in zip(jax.tree.leaves(theta_at), jax.tree.leaves(theta_ft)):
    if a.shape != b.shape:
      raise ConfigError(f"cannot interpolate leaves of shapes {a.shape} and {b.shape}")
  return jax.tree.map(lambda a, b: alpha * b + (1.0 - alpha) * a, theta_at, theta_ft)


def select_alpha(records: Sequence[Mapping[str, float]], robust_tolerance: float,
                 metric: str = "clean", robust_key: str = "robust") -> dict:
  """The ``alpha`` with the best ``metric`` whose robust accuracy stays within tolerance.

  The README of the official code asks for the "max ID generalization gain
  without losing much robustness"; here that is made a rule: among the grid
  points whose ``robust_key`` accuracy is at least that of ``alpha = 0``
  minus ``robust_tolerance`` (absolute, fraction of 1), the one with the
  highest ``metric``; ties go to the smaller ``alpha`` (closer to the robust
  model).

  Args:
    records: one mapping per grid point with ``alpha``, ``metric`` and
      ``robust_key``; must contain ``alpha = 0``.
    robust_tolerance: allowed drop of robust accuracy, e.g. 0.01.

  Returns:
    The selected record.

  Raises:
    ConfigError: no ``alpha = 0`` record or a negative tolerance.
  """
  if robust_tolerance < 0:
    raise ConfigError(f"robust_tolerance must be >= 0, got {robust_tolerance}")
  base = [r for r in records if abs(r["alpha"]) < 1e-12]
  if not base:
    raise ConfigError("the interpolation grid must contain alpha = 0 (the robust model)")
  floor = base[0][robust_key] - robust_tolerance
  ok = [r for r in records if r[robust_key] >= floor - 1e-12]
  return max(sorted(ok, key=lambda r: r["alpha"]), key=lambda r: r[metric])
