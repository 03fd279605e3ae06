"""Square attack (Andriushchenko et al. 2020), score-based, L-inf and L2.

Reference semantics: the AutoAttack implementation ``fra31/auto-attack``,
``autoattack/square.py`` (``SquareAttack`` with ``loss='margin'``, untargeted;
``resc_schedule`` is the setting ``rescale_schedule``: True, the reference's
default, for the standalone attack; False inside AutoAttack, as the reference
builds it), re-expressed as a pure, fixed-shape JAX function.

Sign convention: the attack MINIMISES the margin ``z_y - max_{j != y} z_j``
of the true class, which is the same as MAXIMISING jaxrobust's
``margin_loss`` (``max_{j != y} z_j - z_y``): the ``jaxrobust.attacks`` rule that
attack objectives are maximised holds. An example with margin <= 0 is
misclassified and is done.

Each query is one forward pass of the whole batch. The loop over queries is a
``lax.while_loop`` that stops once every example is done or the budget is
spent; in the AutoAttack cascade it is cut into segments of
:data:`SQUARE_SEGMENT_QUERIES` queries, between which the fooled examples
leave the batch (:func:`square_pass_segments`). The square side ``s`` depends
only on the iteration (as in the reference); the per-example window
``[r, r+s) x [c, c+s)`` is a mask, so every array keeps a static shape.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks._model import call_logits, model_key
from jaxrobust.attacks._norms import l2_norm
from jaxrobust.attacks.registry import AttackSegments
from jaxrobust.types import AnyLogitsFn

SQUARE_NORMS = ("linf", "l2")

# Queries per segment of a compacted AutoAttack pass (:func:`square_pass_segments`). Between
# segments the cascade syncs with the host, gathers the state of the rows not yet fooled
# ([B, H, W, C] points, margins, flags, row ids) and re-pads it: a few milliseconds, against
# 250 forward passes of the batch per segment (< 1 % overhead even for a tiny model), while a
# fooled row wastes at most 250 queries (5 % of AutoAttack's 5,000). The step program takes the
# segment index traced, so the segment size does not change what is compiled.
SQUARE_SEGMENT_QUERIES = 250

# Schedule of the square's area fraction p: (iteration threshold on the
# 10000-query scale, divisor of p_init for iterations past it).
_P_SCHEDULE = ((10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 64),
               (4000, 128), (6000, 256), (8000, 512))


def p_selection(it: int, n_queries: int = 5000, p_init: float = 0.8,
                rescale_schedule: bool = True) -> float:
  """Fraction ``p`` of the image area covered by the square at iteration ``it``.

  The reference schedule (``SquareAttack.p_selection``): ``p = p_init / d``
  with ``d = 2, 4, 8, ..., 512`` once the iteration exceeds 10, 50, 200, 500,
  1000, 2000, 4000, 6000, 8000 respectively (``p = p_init`` up to 10
  included). With ``rescale_schedule`` (the reference's ``resc_schedule=True``,
  its default and the standalone attack's) ``it`` is first rescaled to a
  10000-query budget, ``int(it / n_queries * 10000)``; without it (what
  AutoAttack builds, ``autoattack.py``: ``resc_schedule=False``) the
  thresholds apply to ``it`` itself, so with 5,000 queries ``p`` only comes
  down to ``p_init / 128``.

  Args:
    it: query index, 0-based (Python int).
    n_queries: the attack's query budget (> 0); unused without rescaling.
    p_init: initial fraction (0 < p_init <= 1).
    rescale_schedule: rescale ``it`` to the 10000-query scale.

  Returns:
    ``p`` as a Python float.
  """
  scaled = int(it / n_queries * 10000) if rescale_schedule else int(it)
  p = p_init
  for threshold, divisor in _P_SCHEDULE:
    if scaled > threshold:
      p = p_init / divisor
  return p


def square_size(p: float, h: int, w: int, norm: str = "linf") -> int:
  """Side ``s`` of the square for area fraction ``p`` on an ``h x w`` image.

  ``s = max(round(sqrt(p * h * w)), 1)`` (L-inf) or ``max(., 3)`` made odd
  (L2), as in the reference (``n_features / c = h * w``; Python ``round``,
  i.e. half to even). Clamped to ``min(h, w)`` (the reference is undefined
  for a square larger than the image).
  """
  s = int(round(math.sqrt(p * h * w)))
  if norm == "linf":
    s = max(s, 1)
  else:
    s = max(s, 3)
    if s % 2 == 0:
      s += 1
  return min(s, h, w)


def _eta_rectangles(a: int, b: int) -> np.ndarray:
  """The reference's ``eta_rectangles``: nested centred rectangles on ``[a, b]``.

  Rectangle ``k`` (side ``2k + 1``, centred at ``(a // 2, b // 2)``, cut to the
  array) adds ``1 / (k + 1)^2``; the result has unit L2 norm.
  """
  out = np.zeros((a, b), np.float64)
  r0, c0 = a // 2, b // 2
  for k in range(max(a // 2 + 1, b // 2 + 1)):
    out[max(r0 - k, 0):min(r0 - k + 2 * k + 1, a),
        max(c0 - k, 0):min(c0 - k + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
  norm = np.sqrt(np.sum(out ** 2))
  return out / norm if norm > 0 else out


def eta(s: int) -> np.ndarray:
  """The reference's L2 square pattern ``eta(s)`` before its random transpose.

  Top ``s // 2`` rows: ``+_eta_rectangles(s // 2, s)``; the other rows:
  ``-_eta_rectangles(s - s // 2, s)``; the whole has unit L2 norm. float32
  ``[s, s]``.
  """
  out = np.concatenate([_eta_rectangles(s // 2, s), -_eta_rectangles(s - s // 2, s)])
  return (out / np.sqrt(np.sum(out ** 2))).astype(np.float32)


def _true_margin(logits, y):
  """``z_y - max_{j != y} z_j``: float32 ``[B]`` (the attack minimises it)."""
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return z_y - z_other


def _l2n(v, axis):
  return l2_norm(v, axis=axis, keepdims=True)


def _window_mask(r, c, s, h, w):
  """bool ``[B, H, W, 1]``: rows ``[r, r+s)`` x columns ``[c, c+s)`` per example."""
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  r = r[:, None, None, None]
  c = c[:, None, None, None]
  return (rows >= r) & (rows < r + s) & (cols >= c) & (cols < c + s)


def _linf_proposal(x, x_best, mask, colour, eps):
  """The reference's L-inf step: the window gets ``x + colour * eps`` (in the box).

  ``x_best + 2 eps colour`` on the window, projected on the eps-ball and [0, 1].
  ``mask`` bool ``[B, H, W, 1]``, ``colour`` float32 ±1 ``[B, 1, 1, C]``.
  """
  x_new = x_best + jnp.where(mask, 2.0 * eps * colour, 0.0)
  return jnp.clip(jnp.clip(x_new, x - eps, x + eps), 0.0, 1.0)


def _l2_proposal(x, x_best, mask1, mask2, pattern, colour, eps):
  """The reference's L2 step (mass moved from windows 1 and 2 into window 1).

  Args:
    x, x_best: float32 ``[B, H, W, C]``.
    mask1, mask2: bool ``[B, H, W, 1]``: windows 1 and 2 (same side ``s``).
    pattern: float32 ``[B, H, W, 1]``: ``eta(s)`` (or its transpose) placed on
      window 1, zero elsewhere.
    colour: float32 ±1 ``[B, 1, 1, C]``.
    eps: L2 budget.

  Returns:
    float32 ``[B, H, W, C]``: ``clip(x + eps * d / ||d||, 0, 1)`` with ``d`` the
    current perturbation, window 2 zeroed and window 1 replaced per channel by
    ``(pattern * colour + d_w1 / ||d_w1||)``, rescaled to the norm
    ``sqrt(max(eps^2 - ||d||^2, 0) / C + ||d on w1 ∪ w2||^2)``.
  """
  c = x.shape[-1]
  delta = x_best - x
  win1 = jnp.where(mask1, delta, 0.0)
  norm_w1 = _l2n(win1, (1, 2))                          # [B, 1, 1, C]
  norm_img = _l2n(delta, (1, 2, 3))                     # [B, 1, 1, 1]
  norm_both = _l2n(jnp.where(mask1 | mask2, delta, 0.0), (1, 2, 3))
  new = pattern * colour + win1 / (1e-12 + norm_w1)     # zero outside window 1
  target = jnp.sqrt(jnp.maximum(eps ** 2 - norm_img ** 2, 0.0) / c + norm_both ** 2)
  new = new / (1e-12 + _l2n(new, (1, 2))) * target
  delta = jnp.where(mask1, new, jnp.where(mask2, 0.0, delta))
  return jnp.clip(x + eps * delta / (_l2n(delta, (1, 2, 3)) + 1e-12), 0.0, 1.0)


def _l2_init_patterns(h: int, w: int):
  """Static tiles of the reference's L2 start: ``(P, P^T)`` float32 ``[K, H, W]``.

  Blocks of side ``s = h // 5`` tiled from ``((h - 5 s) // 2, same)`` with
  stride ``s``, ``h // s`` rows by ``w // s`` columns, each holding ``eta(s)``
  (``P``) or its transpose (``P^T``); blocks are cut to the image.
  """
  s = h // 5
  start = (h - 5 * s) // 2
  e = eta(s)
  tiles, tiles_t = [], []
  for i in range(h // s):
    for j in range(w // s):
      r, c = start + i * s, start + j * s
      if r >= h or c >= w:
        continue
      hh, ww = min(s, h - r), min(s, w - c)
      p = np.zeros((h, w), np.float32)
      pt = np.zeros((h, w), np.float32)
      p[r:r + hh, c:c + ww] = e[:hh, :ww]
      pt[r:r + hh, c:c + ww] = e.T[:hh, :ww]
      tiles.append(p)
      tiles_t.append(pt)
  return np.stack(tiles), np.stack(tiles_t)


def _row_uniform(key, row_id, shape):
  """float32 ``[B, *shape]`` uniform in [0, 1): row ``b`` from ``fold_in(key, row_id[b])``.

  Each example's draws depend on ``key`` and its id only, not on the rest of
  the batch, so an example gets the same draws in any batch (compaction).
  """
  return jax.vmap(lambda r: jax.random.uniform(jax.random.fold_in(key, r), shape,
                                               jnp.float32))(row_id)


def _init(rng, x, eps, norm, row_id):
  """The reference's starting point (accepted whatever its margin); per-row draws."""
  b, h, w, c = x.shape
  if norm == "linf":  # vertical stripes: one ±eps per (example, column, channel).
    stripes = jnp.where(_row_uniform(rng, row_id, (1, w, c)) < 0.5, -1.0, 1.0)
    return jnp.clip(x + eps * stripes, 0.0, 1.0)
  tiles, tiles_t = (jnp.asarray(t) for t in _l2_init_patterns(h, w))
  # Per (example, block): a sign per channel and the transposition of eta.
  u = _row_uniform(rng, row_id, (tiles.shape[0], c + 1))
  sign = jnp.where(u[..., :c] < 0.5, -1.0, 1.0)
  flip = u[..., c:] < 0.5
  delta = (jnp.einsum("khw,bkc->bhwc", tiles, jnp.where(flip, 0.0, sign)) +
           jnp.einsum("khw,bkc->bhwc", tiles_t, jnp.where(flip, sign, 0.0)))
  return jnp.clip(x + eps * delta / (_l2n(delta, (1, 2, 3)) + 1e-12), 0.0, 1.0)


def _schedule(n_queries, p_init, h, w, norm, rescale_schedule=True):
  """Static tables: distinct sides ``[L]`` int32, level per iteration ``[N]`` int32."""
  sizes = [square_size(p_selection(i, n_queries, p_init, rescale_schedule), h, w, norm)
           for i in range(n_queries)]
  uniq = sorted(set(sizes)) or [1]  # n_queries = 0: no loop, placeholder tables
  index = {s: k for k, s in enumerate(uniq)}
  return (np.asarray(uniq, np.int32), np.asarray([index[s] for s in sizes], np.int32))


def _corner(u, span):
  """int32 ``floor(u * span)`` clamped to ``{0, ..., max(span, 1) - 1}``."""
  span = jnp.maximum(span, 1)
  return jnp.minimum(jnp.floor(u * span.astype(jnp.float32)).astype(jnp.int32), span - 1)


def _place(pattern_table, level, r, c, flip, h, w):
  """float32 ``[B, H, W, 1]``: ``pattern_table[level]`` (transposed where ``flip``)
  with its top-left corner at ``(r, c)`` per example; the caller masks it."""
  table = pattern_table[level]                          # [S, S]
  smax = table.shape[0]
  li = jnp.clip(jnp.arange(h)[None, :] - r[:, None], 0, smax - 1)[:, :, None]  # [B, H, 1]
  lj = jnp.clip(jnp.arange(w)[None, :] - c[:, None], 0, smax - 1)[:, None, :]  # [B, 1, W]
  f = flip[:, None, None]
  rows, cols = jnp.where(f, lj, li), jnp.where(f, li, lj)
  return table[rows, cols][..., None]


def _tables(n_queries, p_init, h, w, norm, rescale_schedule):
  """``(sides [L], levels [N], eta tables [L, S, S] or None)`` of a run (static)."""
  sides_np, levels_np = _schedule(n_queries, p_init, h, w, norm, rescale_schedule)
  tables = None
  if norm == "l2":  # eta(s) for every side in use, zero-padded: [L, S, S].
    smax = int(sides_np.max())
    tables = np.zeros((len(sides_np), smax, smax), np.float32)
    for k, s in enumerate(sides_np):
      tables[k, :s, :s] = eta(int(s))
    tables = jnp.asarray(tables)
  return jnp.asarray(sides_np), jnp.asarray(levels_np), tables


def _start(logits_fn, rng, x, y, row_id, *, eps, norm):
  """The starting point of a run and its margin: float32 ``[B, H, W, C]``, ``[B]``."""
  k_init, _ = jax.random.split(rng)
  x_best = _init(k_init, x, eps, norm, row_id)
  return x_best, _true_margin(call_logits(logits_fn, x_best, model_key(rng, 0)), y)


def _queries(logits_fn, rng, x, y, active, row_id, x_best, margin, start, stop, *, eps, norm,
             n_queries, p_init, rescale_schedule, history=None):
  """Queries ``start .. stop - 1`` of a run (``start``, ``stop`` int32, may be traced).

  Stops early once no example is left to fool (unless ``history`` is recorded).
  Query ``i`` of example ``b`` draws from ``fold_in(fold_in(k_loop, i),
  row_id[b])`` (:func:`_row_uniform`), so an example's search depends on
  ``rng`` and its id only. Returns ``(x_best, margin, history)``.
  """
  _, h, w, c = x.shape
  record = history is not None
  sides, levels, tables = _tables(n_queries, p_init, h, w, norm, rescale_schedule)
  _, k_loop = jax.random.split(rng)

  def cond(carry):
    i, _, m, _ = carry
    todo = jnp.any(active & (m > 0.0))
    return (i < stop) & (todo | record)

  def body(carry):
    i, xb, m, hist = carry
    todo = active & (m > 0.0)
    level = levels[i]
    s = sides[level]
    # One uniform draw per iteration and example: [5 + C] = window corners (r1,
    # c1, r2, c2), transposition, colours. Corners as the reference's random_int:
    # floor(U * (h - s)) in {0, ..., h - s - 1}, 0 when s == h.
    u = _row_uniform(jax.random.fold_in(k_loop, i), row_id, (5 + c,))
    r1, c1 = _corner(u[:, 0], h - s), _corner(u[:, 1], w - s)
    colour = jnp.where(u[:, 5:] < 0.5, -1.0, 1.0)[:, None, None, :]  # ±1 per channel
    mask1 = _window_mask(r1, c1, s, h, w)
    if norm == "linf":
      x_new = _linf_proposal(x, xb, mask1, colour, eps)
    else:
      r2, c2 = _corner(u[:, 2], h - s), _corner(u[:, 3], w - s)
      flip = u[:, 4] > 0.5
      pattern = jnp.where(mask1, _place(tables, level, r1, c1, flip, h, w), 0.0)
      x_new = _l2_proposal(x, xb, mask1, _window_mask(r2, c2, s, h, w), pattern, colour,
                           eps)
    m_new = _true_margin(call_logits(logits_fn, x_new, model_key(rng, 1, i)), y)
    # Reference: accept if the loss decreased or the proposal misclassifies;
    # with loss='margin' and m > 0 for every example still to fool, the
    # second case implies the first.
    better = todo & ((m_new < m) | (m_new <= 0.0))
    xb = jnp.where(better[:, None, None, None], x_new, xb)
    m = jnp.where(better, m_new, m)
    if record:
      hist = hist.at[i + 1].set(m)
    return i + 1, xb, m, hist

  if n_queries > 0:
    _, x_best, margin, history = jax.lax.while_loop(
        cond, body, (jnp.asarray(start, jnp.int32), x_best, margin, history))
  return x_best, margin, history


def _square_run(logits_fn, rng, x, y, active, *, eps, norm, n_queries, p_init,
                rescale_schedule=True, record=False, row_id=None):
  """One Square run of ``n_queries`` queries after the starting point.

  Args:
    logits_fn, x, y, eps, norm, n_queries, p_init, rescale_schedule: as
      :func:`square`.
    rng: PRNG key of this run.
    active: bool ``[B]``: examples to attack; the others are never updated
      (their entries in the result are meaningless).
    record: also return the margin history (and never stop early).
    row_id: int32 ``[B]``: each example's stream id (default ``arange(B)``).

  Returns:
    ``(x_best, margin_best)`` float32 ``[B, H, W, C]`` and ``[B]``, plus with
    ``record`` the history float32 ``[n_queries + 1, B]`` (row ``i`` is the
    best margin after ``i`` queries past the start).
  """
  b = x.shape[0]
  row_id = jnp.arange(b, dtype=jnp.int32) if row_id is None else row_id
  x_best, margin = _start(logits_fn, rng, x, y, row_id, eps=eps, norm=norm)
  history = None
  if record:
    history = jnp.zeros((n_queries + 1, b), jnp.float32).at[0].set(margin)
  x_best, margin, history = _queries(
      logits_fn, rng, x, y, active, row_id, x_best, margin, 0, n_queries, eps=eps, norm=norm,
      n_queries=n_queries, p_init=p_init, rescale_schedule=rescale_schedule, history=history)
  if record:
    return x_best, margin, history
  return x_best, margin


def square(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array, *,
           eps: float, norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8,
           num_restarts: int = 1, rescale_schedule: bool = True,
           row_ids: jax.Array | None = None) -> jax.Array:
  """Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient
  black-box adversarial attack via random search"), untargeted, margin loss.

  Random search using only the logits: starting from the reference's initial
  point (L-inf: vertical stripes of ±eps, one sign per column and channel; L2:
  a grid of ``h // 5``-pixel blocks holding the pseudo-gaussian pattern
  ``eta`` with a random sign per channel, rescaled to L2 norm eps), each
  query proposes a change on a random ``s x s`` window (L-inf: the window is
  set to ``x ± eps`` with one random sign per channel; L2: perturbation mass
  of a second random window is moved into the first as ``eta(s)`` with a
  random sign per channel) and accepts it only if it lowers the margin
  ``z_y - max_{j != y} z_j``. Equivalently Square MAXIMISES jaxrobust's
  ``margin_loss`` (``max_{j != y} z_j - z_y``), the library's sign convention
  for attack objectives. The side ``s = max(round(sqrt(p * H * W)), 1)`` (L2:
  at least 3 and odd) follows the schedule :func:`p_selection`, rescaled to
  the query budget or not (``rescale_schedule``). Only examples
  with margin > 0 are updated; the loop stops when none is left.

  Reference: ``fra31/auto-attack``, ``autoattack/square.py``
  (``SquareAttack.perturb``, defaults ``loss='margin'``, ``resc_schedule=True``,
  untargeted); AutoAttack builds it with ``n_queries=5000, p_init=0.8,
  num_restarts=1, resc_schedule=False`` (``autoattack/autoattack.py``), in
  both its ``standard`` and ``plus`` versions; the AutoAttack cascade
  (:mod:`jaxrobust.evaluate.autoattack`) passes ``rescale_schedule=False``.

  Deliberate differences from the reference:

  * Randomness is per example: window positions, the L-inf window colours
    and the transposition of ``eta`` (per query, and per L2 start block) are
    drawn for each example, where the reference draws one window position
    (two for L2), one L-inf colour per channel and one transposition per
    query (per start block) for the whole batch; its L2 colours and start
    signs are already per example. Each example thus runs the paper's
    per-image random search, whatever else is in its batch: its draws come
    from ``fold_in(key, row_ids[b])`` (query ``i``: ``key = fold_in(k_loop,
    i)``), so they depend on the example's id only, not on its position or
    on the other examples, and the AutoAttack cascade can drop fooled
    examples between segments of queries (:func:`square_pass_segments`) with
    identical results.
  * Only the reference's AutoAttack configuration: untargeted, margin loss
    (its ``loss='ce'`` and ``targeted=True`` are not implemented).
  * Examples the attack fails to fool are returned at their best point (the
    lowest margin found, still correctly classified) where the reference's
    ``perturb`` returns the clean ``x``; robust accuracy is the same. With
    ``num_restarts > 1`` each restart attacks only the still-robust examples
    (as the reference) and an example keeps its lowest-margin point.
  * ``jax.random`` instead of ``torch`` RNG: results match the reference in
    distribution, not bit for bit.
  * ``s`` is clamped to ``min(H, W)`` (the reference is undefined for larger
    squares, e.g. non-square images), L2 starting blocks that cross the image
    border are cut (the reference raises there).

  As in the reference: window corners are drawn uniformly from
  ``{0, ..., H - s - 1}`` (the last row/column offset ``H - s`` is never drawn;
  0 when ``s = H``); the initial point counts as a query and is kept
  whatever its margin; clean-misclassified examples (``argmax != y``) are
  not attacked and returned unchanged.

  Args:
    logits_fn: pure ``x -> logits`` (float32 ``[B, K]``), or a stochastic
      ``(x, key) -> logits`` (:func:`jaxrobust.attacks.stochastic`) that gets a
      fresh key, derived from ``rng``, in every query; queried once on the
      clean batch, once per restart at the start, then once per iteration.
    rng: PRNG key.
    x: float32 ``[B, H, W, C]`` in [0, 1]; L2 needs ``H >= 5``.
    y: int32 ``[B]`` true labels.
    eps: budget in pixel units (e.g. 8/255 L-inf, 0.5 L2); > 0.
    norm: ``'linf'`` or ``'l2'``.
    n_queries: iterations (queries) per restart after the starting point; >= 0.
    p_init: initial fraction of the image area per square, in (0, 1].
    num_restarts: independent runs (>= 1).
    rescale_schedule: read the p schedule on the 10000-query scale after
      rescaling the iteration to ``n_queries`` (True, the reference's default
      ``resc_schedule=True``), or on the iteration itself (False, AutoAttack's
      setting).
    row_ids: int32 ``[B]``: each example's random-stream id (default
      ``arange(B)``). An example with the same ``rng``, id, ``x``, ``y`` and
      settings gets the same result in any batch (deterministic model).

  Returns:
    float32 ``x_adv`` like ``x`` (``stop_gradient``-ed): within eps of ``x``
    (L-inf: every pixel of ``x_adv - x`` is ±eps or clipped at the box for
    attacked examples), inside [0, 1].

  Raises:
    ValueError: unknown norm, eps <= 0, p_init outside (0, 1], n_queries < 0,
      num_restarts < 1, or L2 with ``H < 5``.
  """
  _check_settings(eps, norm, p_init, n_queries, num_restarts)
  _check_shape(x, norm)
  n_queries, num_restarts = int(n_queries), int(num_restarts)
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  y = y.astype(jnp.int32)
  row_ids = (jnp.arange(x.shape[0], dtype=jnp.int32) if row_ids is None
             else jnp.asarray(row_ids, jnp.int32))
  clean_correct = jnp.argmax(call_logits(logits_fn, x, model_key(rng, 0)), axis=-1) == y
  # Not-attacked examples keep x; attacked ones take the first restart's point, later
  # restarts' points where their margin is lower.
  best_m = jnp.where(clean_correct, jnp.inf, -jnp.inf)

  def restart(r, carry):
    best_x, best_m = carry
    active = best_m > 0.0
    x_r, m_r = _square_run(logits_fn, jax.random.fold_in(rng, r), x, y, active, eps=eps,
                           norm=norm, n_queries=n_queries, p_init=p_init,
                           rescale_schedule=bool(rescale_schedule), row_id=row_ids)
    take = active & ((m_r < best_m) | (r == 0))
    return jnp.where(take[:, None, None, None], x_r, best_x), jnp.where(take, m_r, best_m)

  carry = (x, best_m)
  if num_restarts == 1:
    carry = restart(0, carry)
  else:
    carry = jax.lax.fori_loop(0, num_restarts, restart, carry)
  return jax.lax.stop_gradient(carry[0])


def _check_settings(eps, norm, p_init, n_queries, num_restarts):
  """ValueError for an unknown norm, eps <= 0, p_init outside (0, 1] or bad counts."""
  if norm not in SQUARE_NORMS:
    raise ValueError(f"unknown norm {norm!r} for square; use one of {SQUARE_NORMS}")
  if not eps > 0:
    raise ValueError(f"eps must be > 0, got {eps}")
  if not 0 < p_init <= 1:
    raise ValueError(f"p_init must be in (0, 1], got {p_init}")
  if int(n_queries) < 0 or int(num_restarts) < 1:
    raise ValueError(f"n_queries ({n_queries}) must be >= 0 and num_restarts "
                     f"({num_restarts}) >= 1")


def _check_shape(x, norm):
  """ValueError for ``x`` that is not ``[B, H, W, C]`` or too small for the L2 start."""
  if x.ndim != 4:
    raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
  if norm == "l2" and x.shape[1] < 5:
    raise ValueError(f"L2 square needs H >= 5 (start blocks of H // 5 pixels), got "
                     f"H = {x.shape[1]}")


def square_pass(logits_fn: AnyLogitsFn, rng: jax.Array, x: jax.Array, y: jax.Array,
                sub: int | jax.Array, *, eps: float, norm: str = "linf", n_queries: int = 5000,
                p_init: float = 0.8, num_restarts: int = 1,
                rescale_schedule: bool = True) -> jax.Array:
  """Pass ``sub`` (restart ``sub < num_restarts``) of Square in the AutoAttack cascade.

  The cascade runs each restart as one pass over the points still robust, with
  a key per pass (as APGD's restarts): ``square(..., rng, num_restarts=1)``.
  Arguments as :func:`square`.

  Returns:
    float32 ``x_adv`` like ``x`` (the cascade keeps only misclassified points).
  """
  del sub, num_restarts
  return square(logits_fn, rng, x, y, eps=eps, norm=norm, n_queries=n_queries, p_init=p_init,
                num_restarts=1, rescale_schedule=rescale_schedule)


def square_pass_segments(*, eps: float, norm: str = "linf", n_queries: int = 5000,
                         p_init: float = 0.8, num_restarts: int = 1,
                         rescale_schedule: bool = True) -> AttackSegments:
  """:func:`square_pass` cut every :data:`SQUARE_SEGMENT_QUERIES` queries (compaction).

  The state holds each row's best point ``x_best`` (the clean point for rows
  not attacked), its margin, whether it is attacked (``active``: correctly
  classified) and its stream id ``row_id`` (its row in the chunk,
  ``arange(B)`` at ``init``): a row's draws depend on its id only
  (:func:`square`, ``row_ids``), so the rows left after dropping the fooled ones
  search exactly as in the whole chunk. A row is done once its margin is <= 0
  (or it is not attacked): Square never updates it again. ``result`` equals
  :func:`square_pass` on the whole chunk.

  Raises:
    ValueError: invalid settings (as :func:`square`).
  """
  _check_settings(eps, norm, p_init, n_queries, num_restarts)
  n_queries, size = int(n_queries), int(SQUARE_SEGMENT_QUERIES)
  kw = dict(eps=eps, norm=norm, n_queries=n_queries, p_init=p_init,
            rescale_schedule=bool(rescale_schedule))

  def init(logits_fn, key, x, y, sub):
    del sub
    _check_shape(x, norm)
    x = x.astype(jnp.float32)
    y = y.astype(jnp.int32)
    active = jnp.argmax(call_logits(logits_fn, x, model_key(key, 0)), axis=-1) == y
    row_id = jnp.arange(x.shape[0], dtype=jnp.int32)
    x_best, margin = _start(logits_fn, jax.random.fold_in(key, 0), x, y, row_id, eps=eps,
                            norm=norm)
    return dict(x_best=jnp.where(active[:, None, None, None], x_best, x), margin=margin,
                active=active, row_id=row_id)

  def step(logits_fn, key, x, y, sub, state, seg):
    del sub
    start = seg * size
    stop = jnp.minimum(start + size, n_queries)
    x_best, margin, _ = _queries(logits_fn, jax.random.fold_in(key, 0), x.astype(jnp.float32),
                                 y.astype(jnp.int32), state["active"], state["row_id"],
                                 state["x_best"], state["margin"], start, stop, **kw)
    return dict(state, x_best=x_best, margin=margin)

  return AttackSegments(count=-(-n_queries // size), init=init, step=step,
                        done=lambda st: ~(st["active"] & (st["margin"] > 0.0)),
                        result=lambda st: st["x_best"])
