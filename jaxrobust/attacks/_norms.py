"""Per-example norms shared by the attacks."""
from __future__ import annotations

import jax.numpy as jnp

from jaxrobust.types import Array


def l2_norm(v: Array, axis=None, keepdims: bool = True) -> Array:
  """Euclidean norm ``sqrt(sum v^2)``, per example by default.

  Args:
    v: float ``[B, ...]``.
    axis: axes to reduce; None: every axis but the batch axis 0 (per-example
      norm of an image batch ``[B, H, W, C]`` or of flat rows ``[B, D]``).
    keepdims: keep the reduced axes (``[B, 1, 1, 1]`` for images), so that
      ``v / l2_norm(v)`` broadcasts.

  Returns:
    float array: ``[B, 1, ..., 1]`` (``keepdims``) or ``[B]`` for the default axes.
  """
  if axis is None:
    axis = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axis, keepdims=keepdims))
