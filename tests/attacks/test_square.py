"""Square attack: reference schedule and steps, invariants, monotone search, compile guard."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import ATTACKS, attack_from_config, square
from jaxrobust.attacks import _square as sq
from jaxrobust.errors import ConfigError

from ..numpy_models import numpy_initialised

B, H, W, C = 8, 8, 8, 3


def _flat(v):
  v = np.asarray(v, np.float64)
  return v.reshape(v.shape[0], -1)


def _linf(v):
  return np.max(np.abs(_flat(v)), axis=1)


def _l2(v):
  return np.sqrt(np.sum(_flat(v) ** 2, axis=1))


def _margin(logits_fn, x, y):
  return np.asarray(jax.jit(lambda v, t: sq._true_margin(logits_fn(v), t))(x, y))


# --- the reference's schedule and patterns, by hand ------------------------------------


def _ref_p_selection(it, n_queries, p_init, rescale):
  """The reference's ``SquareAttack.p_selection``, branch by branch."""
  if rescale:
    it = int(it / n_queries * 10000)
  if 10 < it <= 50:
    return p_init / 2
  if 50 < it <= 200:
    return p_init / 4
  if 200 < it <= 500:
    return p_init / 8
  if 500 < it <= 1000:
    return p_init / 16
  if 1000 < it <= 2000:
    return p_init / 32
  if 2000 < it <= 4000:
    return p_init / 64
  if 4000 < it <= 6000:
    return p_init / 128
  if 6000 < it <= 8000:
    return p_init / 256
  if 8000 < it:
    return p_init / 512
  return p_init


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("n_queries", [5000, 1000, 10000, 20000, 7])
def test_p_selection_matches_reference_both_rules(rescale, n_queries):
  for it in range(n_queries):
    assert sq.p_selection(it, n_queries, 0.8, rescale) == _ref_p_selection(
        it, n_queries, 0.8, rescale), it


def test_p_selection_defaults_to_rescaled():
  # The reference's own default (resc_schedule=True) for the standalone attack.
  assert sq.p_selection(6, 5000, 0.8) == pytest.approx(0.4)
  assert sq.p_selection(6, 5000, 0.8, rescale_schedule=False) == pytest.approx(0.8)


@pytest.mark.parametrize("it,divisor", [
    (0, 1), (10, 1),         # p_init up to 10 included
    (11, 2), (50, 2),
    (51, 4), (200, 4),
    (201, 8), (500, 8),
    (501, 16), (1000, 16),
    (1001, 32), (2000, 32),
    (2001, 64), (4000, 64),
    (4001, 128), (4999, 128)])  # the last AutoAttack query: p_init / 128, never / 256
def test_p_selection_autoattack_unrescaled(it, divisor):
  # AutoAttack builds Square with resc_schedule=False: thresholds on the iteration itself.
  assert sq.p_selection(it, 5000, 0.8, rescale_schedule=False) == pytest.approx(
      0.8 / divisor, rel=1e-12)


def test_schedule_tables_follow_the_rule():
  # CIFAR-sized L-inf, 5000 queries: the unrescaled schedule's smallest square is
  # round(sqrt(0.8 / 128 * 1024)) = 3 pixels; the rescaled one reaches 1 pixel.
  sides_r, levels_r = sq._schedule(5000, 0.8, 32, 32, "linf", True)
  sides_u, levels_u = sq._schedule(5000, 0.8, 32, 32, "linf", False)
  assert sides_u[levels_u[-1]] == 3 and sides_r[levels_r[-1]] == 1
  # Iteration 6: rescaled to 12 > 10 (p_init / 2, side 20), unrescaled 6 (p_init, side 29).
  assert sides_r[levels_r[6]] == 20 and sides_u[levels_u[6]] == 29
  # Iteration 26: rescaled to 52 > 50 (p_init / 4, side 14), unrescaled 26 (p_init / 2).
  assert sides_r[levels_r[26]] == sq.square_size(0.2, 32, 32) == 14
  assert sides_u[levels_u[26]] == 20


@pytest.mark.parametrize("it,divisor", [
    (0, 1), (5, 1),          # rescaled to 0, 10: p_init (the rule is "10 < it")
    (6, 2), (25, 2),         # 12, 50
    (26, 4), (100, 4),       # 52, 200
    (101, 8), (250, 8),      # 202, 500
    (251, 16), (500, 16),    # 502, 1000
    (501, 32), (1000, 32),   # 1002, 2000
    (1001, 64), (2000, 64),  # 2002, 4000
    (2001, 128), (3000, 128),
    (3001, 256), (4000, 256),
    (4001, 512), (4999, 512)])
def test_p_selection_autoattack_budget(it, divisor):
  assert sq.p_selection(it, 5000, 0.8) == pytest.approx(0.8 / divisor, rel=1e-12)


def test_p_selection_rescales_to_10000():
  # n_queries=1000: iteration i is rescaled to 10 i.
  assert sq.p_selection(1, 1000, 0.3) == pytest.approx(0.3)      # 10
  assert sq.p_selection(2, 1000, 0.3) == pytest.approx(0.15)     # 20
  assert sq.p_selection(21, 1000, 0.3) == pytest.approx(0.3 / 8)  # 210
  assert sq.p_selection(801, 1000, 0.3) == pytest.approx(0.3 / 512)  # 8010
  # n_queries=20000: iteration i is rescaled to i // 2.
  assert sq.p_selection(21, 20000, 0.8) == pytest.approx(0.8)    # 10
  assert sq.p_selection(22, 20000, 0.8) == pytest.approx(0.4)    # 11


def test_square_size():
  # CIFAR, p_init = 0.8: sqrt(0.8 * 1024) = 28.6 -> 29; p = 0.4: 20.2 -> 20 (L2: odd, 21).
  assert sq.square_size(0.8, 32, 32, "linf") == 29
  assert sq.square_size(0.4, 32, 32, "linf") == 20
  assert sq.square_size(0.4, 32, 32, "l2") == 21
  # The smallest p: sqrt(0.8 / 512 * 1024) = 1.26 -> 1 (L-inf), 3 (L2).
  assert sq.square_size(0.8 / 512, 32, 32, "linf") == 1
  assert sq.square_size(0.8 / 512, 32, 32, "l2") == 3
  assert sq.square_size(0.8, 4, 100, "linf") == 4  # clamped to the image


def test_eta_by_hand():
  # s = 3: top row = rectangles(1, 3) = [1/4, 1 + 1/4, 1/4] / |.|; bottom two
  # rows = -rectangles(2, 3) = -[[1/4] * 3, [1/4, 5/4, 1/4]] / |.|; each half
  # has unit norm, so the whole is divided by sqrt(2).
  top = np.array([[0.25, 1.25, 0.25]]) / np.sqrt(1.6875)
  bottom = -np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]]) / np.sqrt(1.875)
  np.testing.assert_allclose(sq.eta(3), np.concatenate([top, bottom]) / np.sqrt(2), atol=1e-6)
  np.testing.assert_allclose(sq.eta(1), [[-1.0]])
  for s in (2, 5, 7):
    e = sq.eta(s)
    assert e.shape == (s, s) and np.sum(e ** 2) == pytest.approx(1.0, rel=1e-5)
    assert np.all(e[: s // 2] > 0) and np.all(e[s // 2:] < 0)


def test_l2_start_tiles():
  # 10 x 10: blocks of 10 // 5 = 2 pixels from (0, 0), 5 x 5 of them, each eta(2).
  tiles, tiles_t = sq._l2_init_patterns(10, 10)
  assert tiles.shape == (25, 10, 10)
  np.testing.assert_allclose(tiles[7, 2:4, 4:6], sq.eta(2))
  np.testing.assert_allclose(tiles_t[7, 2:4, 4:6], sq.eta(2).T)
  assert np.count_nonzero(tiles[7]) == 4
  # 8 x 8: 1-pixel blocks from (1, 1) (the reference's offset (8 - 5) // 2).
  tiles, _ = sq._l2_init_patterns(8, 8)
  np.testing.assert_allclose(tiles.sum(0)[1:, 1:], -1.0)
  assert np.all(tiles.sum(0)[0] == 0) and np.all(tiles.sum(0)[:, 0] == 0)


# --- one step against a slicing re-statement of the reference --------------------------


def _ref_linf_step(x, xb, r, c, s, colour, eps):
  out = xb.copy()
  for b in range(x.shape[0]):
    win = xb[b, r[b]:r[b] + s, c[b]:c[b] + s] + 2 * eps * colour[b]
    lo, hi = x[b, r[b]:r[b] + s, c[b]:c[b] + s] - eps, x[b, r[b]:r[b] + s, c[b]:c[b] + s] + eps
    out[b, r[b]:r[b] + s, c[b]:c[b] + s] = np.clip(np.clip(win, lo, hi), 0, 1)
  return out


def _ref_l2_step(x, xb, r1, c1, r2, c2, s, flip, colour, eps):
  out = np.empty_like(xb)
  for b in range(x.shape[0]):
    d = xb[b] - x[b]
    w1 = d[r1[b]:r1[b] + s, c1[b]:c1[b] + s]
    n1 = np.sqrt(np.sum(w1 ** 2, axis=(0, 1)))
    both = np.zeros(d.shape[:2] + (1,))
    both[r1[b]:r1[b] + s, c1[b]:c1[b] + s] = 1
    both[r2[b]:r2[b] + s, c2[b]:c2[b] + s] = 1
    n_img, n_both = np.sqrt(np.sum(d ** 2)), np.sqrt(np.sum((d * both) ** 2))
    e = sq.eta(s).T if flip[b] else sq.eta(s)
    new = e[:, :, None] * colour[b] + w1 / (1e-12 + n1)
    new = new / (1e-12 + np.sqrt(np.sum(new ** 2, axis=(0, 1)))) * np.sqrt(
        max(eps ** 2 - n_img ** 2, 0) / d.shape[-1] + n_both ** 2)
    d = d.copy()
    d[r2[b]:r2[b] + s, c2[b]:c2[b] + s] = 0
    d[r1[b]:r1[b] + s, c1[b]:c1[b] + s] = new
    out[b] = np.clip(x[b] + d / (np.sqrt(np.sum(d ** 2)) + 1e-12) * eps, 0, 1)
  return out


def _step_data(seed, eps, norm):
  gen = np.random.default_rng(seed)
  x = gen.uniform(0, 1, (B, H, W, C)).astype(np.float32)
  if norm == "linf":
    xb = np.clip(x + eps * np.sign(gen.normal(size=x.shape)), 0, 1)
  else:
    d = gen.normal(size=x.shape)
    xb = np.clip(x + 0.7 * eps * d / _l2(d)[:, None, None, None], 0, 1)
  colour = np.where(gen.uniform(size=(B, 1, 1, C)) < 0.5, -1.0, 1.0).astype(np.float32)
  return gen, x, xb.astype(np.float32), colour


@jax.jit
def _linf_step(x, xb, r, c, s, colour, eps):
  return sq._linf_proposal(x, xb, sq._window_mask(r, c, s, H, W), colour, eps)


@jax.jit
def _l2_step(x, xb, r1, c1, r2, c2, s, tables, level, flip, colour, eps):
  mask1 = sq._window_mask(r1, c1, s, H, W)
  pattern = jnp.where(mask1, sq._place(tables, level, r1, c1, flip, H, W), 0.0)
  return sq._l2_proposal(x, xb, mask1, sq._window_mask(r2, c2, s, H, W), pattern, colour, eps)


def test_linf_step_matches_reference():
  eps = 0.1
  gen, x, xb, colour = _step_data(0, eps, "linf")
  for s in (1, 3, 8):  # traced s: one compile
    r, c = gen.integers(0, H - s + 1, B), gen.integers(0, W - s + 1, B)
    got = _linf_step(x, xb, r, c, s, colour, eps)
    np.testing.assert_allclose(np.asarray(got), _ref_linf_step(x, xb, r, c, s, colour, eps),
                               atol=1e-6)


def test_l2_step_matches_reference():
  eps = 0.5
  gen, x, xb, colour = _step_data(1, eps, "l2")
  # eta tables as in _square_run: every side in use, zero-padded to the largest.
  tables = np.zeros((3, 7, 7), np.float32)
  for level, s in ((1, 3), (2, 5)):
    tables[level, :s, :s] = sq.eta(s)
  for level, s in ((1, 3), (2, 5)):
    r1, c1, r2, c2 = (gen.integers(0, H - s + 1, B) for _ in range(4))
    r2[0], c2[0] = r1[0], c1[0]  # identical windows
    flip = gen.uniform(size=B) < 0.5
    got = _l2_step(x, xb, r1, c1, r2, c2, s, tables, level, flip, colour, eps)
    want = _ref_l2_step(x.astype(np.float64), xb.astype(np.float64), r1, c1, r2, c2, s, flip,
                        colour[:, 0, 0, :].astype(np.float64), eps)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
    assert np.all(_l2(np.asarray(got) - x) <= eps * (1 + 1e-5))


def _ref_l2_step_nchw(x, xb, vh, vw, vh2, vw2, s, eta_s, colour, eps, window_axes=(-2, -1)):
  """NumPy transcription of the reference's L2 step (``square.py``, ``attack_single_run``,
  L2 branch) in its own NCHW layout, one window pair for the batch as there.

  ``window_axes``: the axes the window norms run over; the reference's ``(-2, -1)``
  (per channel, over height and width), ``(-3, -2, -1)`` the joint alternative.
  """
  c = x.shape[1]
  norm_all = lambda v: np.sqrt(np.sum(v ** 2, axis=(1, 2, 3), keepdims=True))
  delta_curr = xb - x
  norms_window_1 = np.sqrt(np.sum(delta_curr[:, :, vh:vh + s, vw:vw + s] ** 2,
                                  axis=window_axes, keepdims=True))
  mask_1 = np.zeros_like(x)
  mask_1[:, :, vh:vh + s, vw:vw + s] = 1.0
  mask_2 = np.zeros_like(x)
  mask_2[:, :, vh2:vh2 + s, vw2:vw2 + s] = 1.0
  norms_image = norm_all(delta_curr)
  norms_windows = norm_all(delta_curr * np.maximum(mask_1, mask_2))
  new_deltas = np.ones((x.shape[0], c, s, s)) * eta_s.reshape(1, 1, s, s) * colour
  new_deltas = new_deltas + delta_curr[:, :, vh:vh + s, vw:vw + s] / (1e-12 + norms_window_1)
  new_deltas = new_deltas / (1e-12 + np.sqrt(np.sum(new_deltas ** 2, axis=window_axes,
                                                    keepdims=True))) * np.sqrt(
      np.maximum(eps ** 2 - norms_image ** 2, 0.0) / c + norms_windows ** 2)
  delta_curr = delta_curr.copy()
  delta_curr[:, :, vh2:vh2 + s, vw2:vw2 + s] = 0.0
  delta_curr[:, :, vh:vh + s, vw:vw + s] = new_deltas
  return np.clip(x + delta_curr / (norm_all(delta_curr) + 1e-12) * eps, 0.0, 1.0)


@pytest.mark.parametrize("s,level,flip", [(3, 1, False), (5, 2, True)])
def test_l2_step_normalises_windows_per_channel(s, level, flip):
  """L2 window norms per channel over height and width (reference ``square.py``:
  ``sum(dim=(-2, -1))`` on ``[B, C, s, s]``), checked against the NCHW transcription;
  the joint (H, W, C) normalisation gives a different point on the same data."""
  eps = 0.5
  gen, x, xb, colour = _step_data(7 + s, eps, "l2")
  # Channels of different scales, so per-channel and joint norms disagree.
  scale = np.array([1.0, 0.2, 3.0], np.float32)
  xb = np.clip(x + (xb - x) * scale, 0, 1).astype(np.float32)
  tables = np.zeros((3, 7, 7), np.float32)
  tables[1, :3, :3], tables[2, :5, :5] = sq.eta(3), sq.eta(5)
  vh, vw, vh2, vw2 = (int(v) for v in gen.integers(0, H - s + 1, 4))
  rep = lambda v: np.full(B, v)
  got = np.asarray(_l2_step(x, xb, rep(vh), rep(vw), rep(vh2), rep(vw2), s, tables, level,
                            np.full(B, flip), colour, eps))
  eta_s = sq.eta(s).T if flip else sq.eta(s)
  nchw = lambda v: np.transpose(np.asarray(v, np.float64), (0, 3, 1, 2))
  args = (nchw(x), nchw(xb), vh, vw, vh2, vw2, s, eta_s.astype(np.float64), nchw(colour), eps)
  want = np.transpose(_ref_l2_step_nchw(*args), (0, 2, 3, 1))
  np.testing.assert_allclose(got, want, atol=2e-5)
  joint = np.transpose(_ref_l2_step_nchw(*args, window_axes=(-3, -2, -1)), (0, 2, 3, 1))
  assert np.max(np.abs(joint - want)) > 1e-2


# --- the search on a small conv net: invariants, monotone margins ----------------------


@functools.lru_cache(maxsize=None)
def _cnn():
  """A random simple_cnn_tiny (eval-mode BN) and a batch it classifies as ``y``.

  The weights come from NumPy on the abstract model (as in test_pgd): one XLA
  compile per ``jax.random`` initialiser would dominate this file's run time.
  """
  fns, params, batch_stats = numpy_initialised("simple_cnn_tiny", seed=31)
  logits_fn = fns.logits_fn(params, batch_stats)
  x = jnp.asarray(np.random.default_rng(30).uniform(size=(B, H, W, C)), jnp.float32)
  y = jnp.argmax(jax.jit(logits_fn)(x), -1).astype(jnp.int32)  # all correct
  return logits_fn, x, y


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_cnn_search_invariants(norm, eps):
  logits_fn, x, y = _cnn()
  n = 30
  run = jax.jit(functools.partial(sq._square_run, logits_fn, eps=eps, norm=norm,
                                  n_queries=n, p_init=0.8, record=True))
  active = jnp.arange(B) != 0  # example 0 is left alone
  x_best, m_best, hist = (np.asarray(v) for v in run(jax.random.PRNGKey(0), x, y, active))
  x = np.asarray(x)
  assert x_best.dtype == np.float32 and x_best.shape == x.shape
  assert x_best.min() >= 0.0 and x_best.max() <= 1.0
  d = x_best - x
  if norm == "linf":
    assert np.all(_linf(d) <= eps * (1 + 1e-6))
    # Only the corners: every pixel is x ± eps unless clipped at the box.
    at_corner = np.abs(np.abs(d) - eps) <= 1e-6
    assert np.all(at_corner | (x_best == 0.0) | (x_best == 1.0))
  else:
    assert np.all(_l2(d) <= eps * (1 + 1e-5))
  # The margin never increases (a worse proposal is never accepted) ...
  assert hist.shape == (n + 1, B)
  assert np.all(np.diff(hist[:, 1:], axis=0) <= 0.0)
  # ... and the search does something: every example not fooled by the start improved.
  assert np.all((hist[-1, 1:] < hist[0, 1:]) | (hist[0, 1:] <= 0.0))
  # The recorded margin is the margin of the returned point.
  np.testing.assert_allclose(hist[-1], m_best)
  np.testing.assert_allclose(m_best[1:], _margin(logits_fn, jnp.asarray(x_best), y)[1:],
                             rtol=1e-5, atol=1e-5)
  assert np.all(hist[:, 0] == hist[0, 0])  # inactive: never queried for an update


# --- linear model: non-robust points, misclassified points, restarts, compile guard ----


@functools.lru_cache(maxsize=None)
def _linear_problem():
  """2-class linear model, clean margins set to fractions of the optimum's reach.

  ``w_0 - w_1`` has one sign per channel in the top half rows and the opposite
  sign in the bottom half (times 1 + 0.3 N(0, 1)): every column sums to about
  zero, so the vertical-stripe start barely moves the margin, and the search
  must find the squares. The best L-inf (eps 0.05) perturbation lowers the
  margin ``z_0 - z_1`` by ``R = eps ||w_0 - w_1||_1``; L2 gets the eps with the
  same reach, ``R / ||w_0 - w_1||_2``. Clean margins: 0.1 R .. 0.2 R
  (examples 0-3: clearly non-robust), 1.5 R and 2 R (6, 7: provably robust);
  examples 4, 5 are labelled 1 although class 0 wins: misclassified.
  """
  gen = np.random.default_rng(40)
  half = np.where(np.arange(H) < H // 2, 1.0, -1.0)[:, None, None]
  wd = 0.1 * np.array([1.0, -0.7, 0.5]) * half * (1 + 0.3 * gen.normal(size=(H, W, C)))
  wd = wd.reshape(-1).astype(np.float32).astype(np.float64)
  reach = 0.05 * np.abs(wd).sum()
  eps_l2 = reach / np.sqrt(np.sum(wd ** 2))
  frac = np.array([0.1, 0.12, 0.15, 0.2, 0.2, 0.3, 1.5, 2.0])
  x = gen.uniform(0.45, 0.55, (B, H * W * C))
  x += ((frac * reach - x @ wd) / np.abs(wd).sum())[:, None] * np.sign(wd)
  assert 0.1 < x.min() and x.max() < 0.9  # the box never binds
  x = jnp.asarray(x.reshape(B, H, W, C), jnp.float32)
  w = jnp.asarray(np.stack([wd / 2, -wd / 2], axis=1), jnp.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  y = jnp.zeros(B, jnp.int32).at[4:6].set(1)
  return logits_fn, x, y, {"linf": 0.05, "l2": float(eps_l2)}


TRACES = []


@functools.lru_cache(maxsize=None)
def _linear_attack(norm, num_restarts):
  logits_fn, _, _, eps = _linear_problem()
  eps = eps[norm]

  @jax.jit
  def run(rng, x, y):
    TRACES.append((norm, num_restarts))
    return square(logits_fn, rng, x, y, eps=eps, norm=norm, n_queries=100,
                  num_restarts=num_restarts)

  return run


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_non_robust_found_misclassified_unchanged(norm):
  logits_fn, x, y, eps = _linear_problem()
  eps = eps[norm]
  x_adv = _linear_attack(norm, 1)(jax.random.PRNGKey(1), x, y)
  assert x_adv.dtype == jnp.float32
  m = _margin(logits_fn, x_adv, jnp.zeros(B, jnp.int32))
  assert np.all(m[:4] < 0.0), m  # fooled within 100 queries
  assert np.all(m[6:] > 0.0)  # no point within eps can fool them
  np.testing.assert_array_equal(np.asarray(x_adv[4:6]), np.asarray(x[4:6]))
  if norm == "linf":
    assert np.all(_linf(x_adv - x) <= eps * (1 + 1e-6))
  else:
    assert np.all(_l2(x_adv - x) <= eps * (1 + 1e-5))
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_stops_early_with_same_result():
  """The public path (early exit once all are fooled) equals the full-length record run."""
  logits_fn, x, y, eps = _linear_problem()
  rng = jax.random.PRNGKey(1)
  x_adv = _linear_attack("linf", 1)(rng, x, y)
  active = np.asarray(jnp.argmax(logits_fn(x), -1) == y)
  np.testing.assert_array_equal(active, [1, 1, 1, 1, 0, 0, 1, 1])
  x_best, _, hist = jax.jit(functools.partial(
      sq._square_run, logits_fn, eps=eps["linf"], norm="linf", n_queries=100, p_init=0.8,
      record=True))(jax.random.fold_in(rng, 0), x, y, jnp.asarray(active))
  np.testing.assert_array_equal(np.asarray(x_adv)[active], np.asarray(x_best)[active])
  hist = np.asarray(hist)
  assert np.all(np.diff(hist, axis=0) <= 0.0)
  assert hist[0, 0] > 0 and np.all(hist[-1, :4] <= 0.0)
  assert np.all(hist[:, 4:6] == hist[0, 4:6])  # never updated


def test_restarts_keep_lowest_margin():
  logits_fn, x, y, eps = _linear_problem()
  rng = jax.random.PRNGKey(2)
  one = _linear_attack("linf", 1)(rng, x, y)
  three = _linear_attack("linf", 3)(rng, x, y)
  y0 = jnp.zeros(B, jnp.int32)
  m1, m3 = _margin(logits_fn, one, y0), _margin(logits_fn, three, y0)
  assert np.all(m3 <= m1 + 1e-6)
  np.testing.assert_array_equal(np.asarray(three[4:6]), np.asarray(x[4:6]))
  fooled = m1 < 0  # fooled by restart 0: later restarts leave them alone
  np.testing.assert_array_equal(np.asarray(three)[fooled], np.asarray(one)[fooled])
  assert np.all(_linf(three - x) <= eps["linf"] * (1 + 1e-6))


def test_rescale_schedule_reaches_the_schedule(monkeypatch):
  """``square(rescale_schedule=...)`` builds its side tables with that rule (default True)."""
  seen = []
  real = sq._schedule

  def spy(*args):
    seen.append(args[-1])
    return real(*args)

  monkeypatch.setattr(sq, "_schedule", spy)
  logits_fn, x, y, eps = _linear_problem()
  for kw in ({}, {"rescale_schedule": False}):
    jax.eval_shape(functools.partial(square, logits_fn, eps=eps["linf"], n_queries=4, **kw),
                   jax.random.PRNGKey(0), x, y)
  assert seen == [True, False]


def test_compiles_once():
  _, x, y, _ = _linear_problem()
  run = _linear_attack("linf", 1)
  run(jax.random.PRNGKey(5), x, y)
  run(jax.random.PRNGKey(6), jnp.clip(x + 0.01, 0, 1), 1 - y)
  assert TRACES.count(("linf", 1)) == 1


# --- errors, registry --------------------------------------------------------------------


def test_bad_settings_raise():
  logits_fn, x, y, _ = _linear_problem()
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="norm"):
    square(logits_fn, key, x, y, eps=0.1, norm="l1")
  with pytest.raises(ValueError, match="eps"):
    square(logits_fn, key, x, y, eps=0.0)
  with pytest.raises(ValueError, match="p_init"):
    square(logits_fn, key, x, y, eps=0.1, p_init=1.5)
  with pytest.raises(ValueError, match="num_restarts"):
    square(logits_fn, key, x, y, eps=0.1, num_restarts=0)
  with pytest.raises(ValueError, match="H >= 5"):
    square(logits_fn, key, x[:, :4, :4], y, eps=0.1, norm="l2")


def test_registry():
  assert ATTACKS["square"] is square
  attack_from_config(dict(name="square", eps=8 / 255, norm="linf", n_queries=100,
                          p_init=0.8, num_restarts=1))
  attack_from_config(dict(name="square", eps=8 / 255, rescale_schedule=False))
  with pytest.raises(ConfigError, match="rescale_schedule"):
    attack_from_config(dict(name="square", eps=8 / 255, rescale_schedule="no"))
  with pytest.raises(ConfigError, match="unknown setting"):
    attack_from_config(dict(name="square", eps=8 / 255, step_size=0.1))
