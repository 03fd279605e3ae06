"""Per-layer relative distance from the initial weights, ``||theta - theta_0|| / ||theta_0||``.

The lazy-training diagnostic (Chizat et al. 2019; used for adversarial
training in the robustness-tricks survey, METHODS 2.12): how far each layer
moved from its initialisation. A layer is a module of the parameter tree: the
parameters whose dotted names (:func:`jaxrobust.utils.paths.param_name`)
share everything but the last component (``convs.0.kernel`` and
``convs.0.bias`` form ``convs.0``); ``'all'`` is the whole model. Norms are
Frobenius norms over all of a layer's parameters together; a layer whose
initial weights are all zero reports its absolute distance ``||theta||``.

With ``config.train.log_weight_distance=True`` the trainer logs
``weight_distance/<layer>`` at every logging step (``logs/metrics.jsonl``,
TensorBoard) and writes the final values to ``report.json`` under
``weight_distance``; ``theta_0`` is the run's initial weights (those of
``config.train.init_from`` when fine-tuning), rebuilt on resume.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrobust.utils.paths import named_leaves

ALL = "all"


def layer_of(name: str) -> str:
  """``'convs.0.kernel'`` -> ``'convs.0'``; a top-level leaf is its own layer."""
  head, dot, _ = name.rpartition(".")
  return head if dot else name


def layer_names(params) -> list[str]:
  """The layers of a parameter tree, in first-leaf order."""
  out = []
  for name, _ in named_leaves(params):
    layer = layer_of(name)
    if layer not in out:
      out.append(layer)
  return out


def relative_distances(params, params0) -> dict[str, jax.Array]:
  """``{layer: ||theta - theta_0|| / ||theta_0||}`` and ``'all'``; float32 scalars.

  Args:
    params: the current parameters (any pytree, e.g. an ``nnx.State``).
    params0: the initial parameters, same structure and shapes.

  Returns:
    One float32 scalar per layer (:func:`layer_of`) and for ``'all'``; the
    absolute distance ``||theta - theta_0||`` where ``||theta_0|| = 0``.
    Traceable (jit it; the layer grouping is static).

  Raises:
    ValueError: trees of different structure.
  """
  a, b = named_leaves(params), named_leaves(params0)
  if [n for n, _ in a] != [n for n, _ in b]:
    raise ValueError("params and params0 have different structures")
  diff2: dict[str, Any] = {}
  norm2: dict[str, Any] = {}
  for (name, x), (_, x0) in zip(a, b):
    x, x0 = jnp.asarray(x, jnp.float32), jnp.asarray(x0, jnp.float32)
    for key in (layer_of(name), ALL):
      diff2[key] = diff2.get(key, 0.0) + jnp.sum(jnp.square(x - x0))
      norm2[key] = norm2.get(key, 0.0) + jnp.sum(jnp.square(x0))
  out = {}
  for key in diff2:
    d, n = jnp.sqrt(diff2[key]), jnp.sqrt(norm2[key])
    out[key] = jnp.where(n > 0, d / jnp.where(n > 0, n, 1.0), d)
  return out


def jit_relative_distances():
  """``jax.jit(relative_distances)``: one compiled call per parameter structure."""
  return jax.jit(relative_distances)


def as_metrics(distances: dict, prefix: str = "weight_distance/") -> dict[str, float]:
  """``{prefix + layer: float}`` on the host (one transfer)."""
  host = jax.device_get(distances)
  return {f"{prefix}{k}": float(v) for k, v in host.items()}
