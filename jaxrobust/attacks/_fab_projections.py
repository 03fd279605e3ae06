"""FAB's projection: the minimal-norm step onto a hyperplane inside the box ``[0, 1]^D``.

JAX re-implementation of ``fra31/auto-attack:autoattack/fab_projections.py``
(``projection_linf``, ``projection_l2``, ``projection_l1``), used by the FAB
attack (:mod:`jaxrobust.attacks._fab`). The solvers work on flattened rows
``[N, D]`` and are exact: the L2 and L1 solvers sort the coordinates once and
binary-search the breakpoint of the piecewise linear dual, like the
reference; the L-inf solver brackets its radius by bisection on the value
(no sort) and solves exactly on the bracket.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

FAB_NORMS = ("linf", "l2", "l1")


def _zero_tol(dtype) -> float:
  """|w| below this counts as 0: the reference's 1e-8, but never below the dtype's tiny."""
  return max(1e-8, float(jnp.finfo(dtype).tiny))


def _gather(a, idx):
  """``a[n, idx[n]]`` per row: ``[N, M], [N] -> [N]``."""
  return jnp.take_along_axis(a, idx[:, None], axis=1)[:, 0]


def _safe_div(num, den):
  """``num / den`` where ``den != 0``, else 0 (no inf/NaN in discarded branches)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def _bisect(is_below, upper: int, num_iter: int, n_rows: int):
  """Largest breakpoint index ``k`` in ``[0, upper]`` with ``is_below(k)`` true.

  The reference's integer binary search: ``lb = 0``, ``ub = upper``,
  ``mid = (lb + ub) // 2``, ``lb <- mid`` where ``is_below(mid)`` else
  ``ub <- mid``, ``num_iter`` times. Returns int32 ``lb`` of shape ``[n_rows]``.
  """
  lb = jnp.zeros((n_rows,), jnp.int32)
  ub = jnp.full((n_rows,), upper, jnp.int32)

  def body(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    below = is_below(mid)
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lb, _ = jax.lax.fori_loop(0, num_iter, body, (lb, ub))
  return lb


def _num_bisect_steps(n: int) -> int:
  return int(math.ceil(math.log2(n))) if n > 1 else 0


_LINF_BISECT_STEPS = 40  # halvings of [0, max room]: below float32 resolution after ~25.


def _projection_linf(t, w, b):
  """L-inf projection of rows ``t`` onto ``{<w, z> = b} ∩ [0, 1]^D``: :func:`fab_projection`.

  Same solution as the reference's ``projection_linf``, found without sorting
  (XLA:CPU's sort of a ``[250, 3072]`` array took ~0.25 s, more than the rest
  of a FAB step): with radius ``lam`` every coordinate moves ``min(lam,
  room_i)`` towards the box corner that decreases ``<w, z>``, which changes
  ``<w, z>`` by ``-g(lam)``, ``g(lam) = sum_i |w_i| min(lam, room_i)``
  (piecewise linear, increasing). ``lam`` is bracketed by bisection on its
  value and then solved exactly on the bracket's segment: ``lam = (c - sum_{room
  <= lo} |w| room) / sum_{room > lo} |w|`` for the needed change ``c``. Rows
  that cannot reach the hyperplane inside the box move every coordinate to the
  corner, as the reference does. Computed in float32 at least.
  """
  dtype = t.dtype
  ct = jnp.promote_types(dtype, jnp.float32)
  t, w, b = t.astype(ct), w.astype(ct), b.astype(ct)
  # Orient the hyperplane so that t lies on its non-negative side.
  sign = jnp.where(jnp.sum(w * t, axis=1) - b >= 0, 1, -1).astype(ct)
  w = w * sign[:, None]
  b = b * sign
  nonzero = w != 0
  a = (w < 0).astype(ct)                            # corner minimising <w, z>
  d_full = jnp.where(nonzero, a - t, 0)
  room = jnp.where(nonzero, jnp.abs(a - t), 0)
  aw = jnp.abs(w)
  need = jnp.sum(w * t, axis=1) - b                 # >= 0: decrease of <w, z> needed
  reach = jnp.sum(aw * room, axis=1)                # the largest decrease inside the box
  feasible = need <= reach

  def g(lam):
    return jnp.sum(aw * jnp.minimum(lam[:, None], room), axis=1)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    short = g(mid) < need
    return jnp.where(short, mid, lo), jnp.where(short, hi, mid)

  lo, _ = jax.lax.fori_loop(0, _LINF_BISECT_STEPS, body,
                            (jnp.zeros_like(need), jnp.max(room, axis=1)))
  clipped = room <= lo[:, None]
  lam = _safe_div(need - jnp.sum(jnp.where(clipped, aw * room, 0), axis=1),
                  jnp.sum(jnp.where(clipped, 0, aw), axis=1))
  lam = jnp.maximum(lam, 0)[:, None]
  d_box = jnp.minimum(lam, d_full) * a + jnp.maximum(-lam, d_full) * (1 - a)
  d = jnp.where(feasible[:, None], d_box, d_full)
  return jnp.where(nonzero, d, 0).astype(dtype)


def _projection_linf_sorted(t, w, b):
  """The reference's sort-based L-inf projection (kept to test :func:`_projection_linf`)."""
  n_rows, dim = t.shape
  # Orient the hyperplane so that t lies on its non-negative side: the solution
  # then moves every coordinate towards the box corner ``a`` minimising <w, z>.
  sign = jnp.where(jnp.sum(w * t, axis=1) - b >= 0, 1, -1).astype(t.dtype)
  w = w * sign[:, None]
  b = b * sign
  nonzero = w != 0
  a = (w < 0).astype(t.dtype)                       # minimising corner
  d_full = jnp.where(nonzero, a - t, 0)             # move every coordinate to it
  p = a - t * (2 * a - 1)                           # |a - t|: the room per coordinate
  order = jnp.argsort(p, axis=1)                    # ascending room
  order_desc = order[:, ::-1]
  b = b - jnp.sum(w * t, axis=1)                    # needed change of <w, z>: <= 0
  b0 = jnp.sum(w * d_full, axis=1)                  # largest achievable change: <= 0
  w_desc = jnp.take_along_axis(w, order_desc, axis=1)
  # With radius lam and the k+1 roomiest coordinates clipped at lam, the change
  # of <w, z> is sb[k] - lam * s[k].
  s = jnp.cumsum(jnp.abs(w_desc), axis=1)
  sb = jnp.cumsum(-w_desc * jnp.take_along_axis(d_full, order_desc, axis=1), axis=1) + b0[:, None]
  b2 = sb[:, -1] - s[:, -1] * _gather(p, order[:, 0])
  all_clipped = b - b2 > 0                          # lam < smallest room: no box effect
  feasible = (b - b0 > 0) & ~all_clipped

  def overshoots(k):                                # lam = k-th largest room is too big
    return b - (_gather(sb, k) - _gather(s, k) * _gather(p, _gather(order_desc, k))) > 0

  lb = _bisect(overshoots, dim - 1, _num_bisect_steps(dim), n_rows)
  lam_free = jnp.maximum(_safe_div(b - sb[:, -1], -s[:, -1]), 0)
  d_free = (2 * a - 1) * lam_free[:, None]
  lam = jnp.maximum(_safe_div(b - _gather(sb, lb), -_gather(s, lb)), 0)[:, None]
  d_box = jnp.minimum(lam, d_full) * a + jnp.maximum(-lam, d_full) * (1 - a)
  d = jnp.where(all_clipped[:, None], d_free, jnp.where(feasible[:, None], d_box, d_full))
  return jnp.where(nonzero, d, 0)


def _projection_l2(t, w, b):
  """L2 projection of rows ``t`` onto ``{<w, z> = b} ∩ [0, 1]^D``: :func:`fab_projection`."""
  n_rows, dim = t.shape
  c = jnp.sum(w * t, axis=1) - b
  w = jnp.where((c < 0)[:, None], -w, w)            # now z = clip(t - r w) decreases <w, z>
  c = jnp.abs(c)
  valid = jnp.abs(w) > _zero_tol(t.dtype)
  w_safe = jnp.where(valid, w, 1)
  # r_i: the step length along -w at which coordinate i reaches the box.
  r = jnp.maximum(t / w_safe, (t - 1) / w_safe)
  r = jnp.where(valid, r, jnp.finfo(t.dtype).max)   # sentinel: sorts last, masked below
  order = jnp.argsort(r, axis=1)
  rs = jnp.take_along_axis(r, order, axis=1)
  rs_valid = jnp.take_along_axis(valid, order, axis=1)
  rs = jnp.where(rs_valid, rs, 0)
  rs_next = jnp.concatenate([rs[:, 1:], jnp.zeros_like(rs[:, :1])], axis=1)
  w2_sorted = jnp.take_along_axis(w * w, order, axis=1)
  w_sq = jnp.sum(w * w, axis=1)
  w_rest = w_sq[:, None] - jnp.cumsum(w2_sorted, axis=1)   # squared norm still free
  d_sat = jnp.where(valid, -r * w, 0)               # every coordinate at its bound
  # s[k]: change of <w, z> at step length rs[k] (piecewise linear, slope -w_rest).
  s0 = -w_sq * rs[:, 0]
  s = jnp.concatenate([s0[:, None], jnp.cumsum((rs - rs_next) * w_rest, axis=1) + s0[:, None]],
                      axis=1)
  free = s[:, 0] + c < 0                            # reached before any coordinate saturates
  infeasible = jnp.sum(d_sat * w, axis=1) + c > 0
  feasible = ~free & ~infeasible
  lb = _bisect(lambda k: _gather(s, k) + c > 0, dim - 1, _num_bisect_steps(dim), n_rows)
  d_free = -_safe_div(c, w_sq)[:, None] * w
  w_rest_lb = _gather(w_rest, lb)
  step = _safe_div(_gather(s, lb) + c, w_rest_lb) + _gather(rs, lb)
  step = jnp.where(w_rest_lb == 0, 0, step)[:, None]
  d_box = jnp.where(step > r, d_sat, -step * w)
  d = jnp.where(free[:, None], d_free, jnp.where(feasible[:, None], d_box, d_sat))
  return jnp.where(valid, d, 0)


def _projection_l1(t, w, b):
  """L1 projection of rows ``t`` onto ``{<w, z> = b} ∩ [0, 1]^D``: :func:`fab_projection`."""
  n_rows, dim = t.shape
  c = jnp.sum(w * t, axis=1) - b
  w = jnp.where((c < 0)[:, None], -w, w)
  c = jnp.abs(c)
  nonzero = w != 0
  # Greedy: move the coordinates with the largest |w| first, each to its bound.
  r = jnp.where(nonzero, 1 / jnp.where(nonzero, jnp.abs(w), 1), jnp.finfo(t.dtype).max)
  order = jnp.argsort(r, axis=1)
  rank = jnp.argsort(order, axis=1)
  d_sat = jnp.where(nonzero, (w < 0).astype(t.dtype) - t, 0)
  gain = jnp.take_along_axis(jnp.minimum(-w * t, w * (1 - t)), order, axis=1)   # <= 0
  s = jnp.cumsum(jnp.concatenate([c[:, None], gain], axis=1), axis=1)   # [N, D + 1]
  feasible = s[:, -1] < 0
  # Search range [0, D + 1) as the reference, with enough steps to close it.
  lb = _bisect(lambda k: _gather(s, k) > 0, dim + 1, _num_bisect_steps(dim + 1), n_rows)
  lb = jnp.minimum(lb, dim - 1)
  partial = _safe_div(-_gather(s, lb), _gather(w, _gather(order, lb)))[:, None]
  d_box = jnp.where(rank < lb[:, None], d_sat, 0)
  d_box = jnp.where(rank == lb[:, None], partial, d_box)
  d = jnp.where(feasible[:, None], d_box, d_sat)
  return jnp.where(jnp.abs(w) > _zero_tol(t.dtype), d, 0)


_PROJECTIONS = {"linf": _projection_linf, "l2": _projection_l2, "l1": _projection_l1}


def fab_projection(points: jax.Array, w: jax.Array, b: jax.Array, norm: str = "linf"
                   ) -> jax.Array:
  """Minimal-norm step from each point onto ``{z : <w, z> = b} ∩ [0, 1]^D``.

  FAB's projection step (the reference's ``projection_linf`` / ``projection_l2``
  / ``projection_l1``), batched over rows: for each row ``n`` it returns
  ``delta[n]`` minimising ``||delta||_p`` subject to ``<w[n], points[n] +
  delta[n]> = b[n]`` and ``points[n] + delta[n]`` in ``[0, 1]^D``. When no
  point of the box reaches the hyperplane, ``delta`` moves every coordinate to
  the bound on the hyperplane's side (the box point closest to it in ``<w,
  .>``). When the box is not active the result is the closed form:
  ``-(<w, t> - b) w / ||w||_2^2`` (L2), ``-(<w, t> - b) sign(w) / ||w||_1``
  (L-inf), the whole step on one largest-``|w|`` coordinate (L1).
  Coordinates where ``w`` is zero (L-inf) or ``|w| <= 1e-8`` (L2, L1) are not
  moved.

  Args:
    points: float ``[N, D]``, normally inside ``[0, 1]``.
    w: float ``[N, D]``: hyperplane normals.
    b: float ``[N]``: hyperplane offsets.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.

  Returns:
    ``delta``: ``[N, D]`` in the dtype of ``points``.

  Raises:
    ValueError: unknown norm, or shapes that are not ``[N, D], [N, D], [N]``.
  """
  if norm not in _PROJECTIONS:
    raise ValueError(f"unknown norm {norm!r}; use one of {FAB_NORMS}")
  if points.ndim != 2 or w.shape != points.shape or b.shape != points.shape[:1]:
    raise ValueError(f"fab_projection wants points [N, D], w [N, D], b [N]; got "
                     f"{points.shape}, {w.shape}, {b.shape}")
  dtype = points.dtype
  return _PROJECTIONS[norm](points, w.astype(dtype), b.astype(dtype))
