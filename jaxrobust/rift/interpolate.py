"""RiFT's weight interpolation and the choice of the mixing coefficient.

``theta(alpha) = alpha * theta_FT + (1 - alpha) * theta_AT`` over the whole
model state, BatchNorm running averages included (the official
``interpolation`` in ``microsoft/robustlearn:RiFT/utils.py`` mixes the full
``state_dict``), for ``alpha`` in a grid (default 0, 0.1, ..., 1); the chosen
``alpha`` has the best clean accuracy within a robust-accuracy tolerance.

Both live in :mod:`jaxrobust.weights` (shared with WiSE-FT and the soups);
this module re-exports them under their RiFT names.
"""
from __future__ import annotations

from jaxrobust.weights import interpolate, select_alpha

__all__ = ["interpolate", "select_alpha"]
