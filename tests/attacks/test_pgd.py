"""PGD / FGSM: analytic optima on linear models, invariants, restarts, early stop.

Speed: on a 2-core CPU these tests are bound by XLA compilation, so every test
uses one input shape (``SHAPE``; the conv net takes the same batch), NumPy
test data (each new ``jax.random`` shape costs a compile) and eager calls
(op-by-op executables are cached across tests).
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import (LOSSES, attack_from_config, fgsm, pgd, project,
                               random_init)
from jaxrobust.errors import ConfigError

from ..numpy_models import numpy_initialised

SHAPE = (16, 8, 8, 3)  # B, H, W, C
B = SHAPE[0]
KEY = jax.random.PRNGKey(0)


def _linear(num_classes, seed=0, scale=0.1):
  """``logits = x.reshape(B, -1) @ w + b`` with NumPy-drawn ``w, b``."""
  gen = np.random.default_rng(seed)
  d = int(np.prod(SHAPE[1:]))
  w = jnp.asarray(scale * gen.normal(size=(d, num_classes)), jnp.float32)
  b = jnp.asarray(scale * gen.normal(size=(num_classes,)), jnp.float32)

  def logits_fn(x):
    return x.reshape(x.shape[0], -1) @ w + b

  return logits_fn, w, b


def _interior_x(seed=1):
  """Images in [0.3, 0.7]: the [0, 1] box does not bind for budgets < 0.3."""
  return jnp.asarray(np.random.default_rng(seed).uniform(0.3, 0.7, SHAPE), jnp.float32)


def _uniform_x(seed):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=SHAPE), jnp.float32)


def _labels(seed, k):
  return jnp.asarray(np.random.default_rng(seed).integers(0, k, B), jnp.int32)


def _linf(v):
  v = np.asarray(v)
  return np.max(np.abs(v.reshape(v.shape[0], -1)), axis=1)


def _l2(v):
  v = np.asarray(v, np.float64)
  return np.sqrt(np.sum(v.reshape(v.shape[0], -1) ** 2, axis=1))


def _w_diff(w, y):
  """``w_y - w_j`` per example for 2 classes, shaped like the images."""
  w, y = np.asarray(w), np.asarray(y)
  return (w[:, y] - w[:, 1 - y]).T.reshape(SHAPE)


def _pred(logits_fn, x):
  return np.asarray(jnp.argmax(logits_fn(x), -1))


# --- analytic optima on a 2-class linear model ------------------------------------------
# For logits = x @ W + b with 2 classes, every untargeted loss here (CE, margin, CW)
# is increasing in z_j - z_y = x . (w_j - w_y) + const, so the L-inf optimum is
# x - eps sign(w_y - w_j) and the L2 optimum x - eps (w_y - w_j) / ||w_y - w_j||.


@pytest.mark.parametrize("random_start", ["none", "uniform", "normal"])
@pytest.mark.parametrize("loss", ["ce", "margin", "cw"])
def test_linf_pgd_finds_linear_optimum(loss, random_start):
  logits_fn, w, _ = _linear(2)
  x, y = _interior_x(), _labels(2, 2)
  eps = 0.1
  # 4 steps of eps / 2 cover the 2 eps between any start and the optimal corner.
  x_adv = pgd(logits_fn, jax.random.PRNGKey(3), x, y, eps=eps, step_size=eps / 2,
              num_steps=4, loss=loss, random_start=random_start)
  expected = np.asarray(x) - eps * np.sign(_w_diff(w, y))
  np.testing.assert_allclose(np.asarray(x_adv), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "margin", "cw"])
def test_fgsm_finds_linear_optimum(loss):
  logits_fn, w, _ = _linear(2, seed=4)
  x, y = _interior_x(5), _labels(6, 2)
  eps = 0.05
  x_adv = fgsm(logits_fn, KEY, x, y, eps=eps, loss=loss)
  expected = np.asarray(x) - eps * np.sign(_w_diff(w, y))
  np.testing.assert_allclose(np.asarray(x_adv), expected, rtol=0, atol=1e-6)


def test_fgsm_rs_step_from_random_start():
  # FGSM-RS: uniform start, one step of 1.25 eps, projected back to the ball.
  logits_fn, w, _ = _linear(2, seed=4)
  x, y = _interior_x(5), _labels(6, 2)
  eps, rng = 0.05, jax.random.PRNGKey(1)
  x_rs = fgsm(logits_fn, rng, x, y, eps=eps, step_size=1.25 * eps, random_start="uniform")
  x0 = np.asarray(x + random_init(rng, x, eps, "linf", "uniform"))
  expected = np.clip(x0 - 1.25 * eps * np.sign(_w_diff(w, y)), np.asarray(x) - eps,
                     np.asarray(x) + eps)
  np.testing.assert_allclose(np.asarray(x_rs), expected, atol=1e-6)


@pytest.mark.parametrize("random_start", ["none", "uniform"])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_l2_pgd_finds_linear_optimum(loss, random_start):
  logits_fn, w, _ = _linear(2, seed=7)
  x, y = _interior_x(8), _labels(9, 2)
  eps = 0.25  # every coordinate of the optimum moves < 0.3: [0, 1] does not bind.
  # 10 steps of 4 eps: the component orthogonal to the optimum shrinks ~5x per step.
  x_adv = pgd(logits_fn, jax.random.PRNGKey(10), x, y, eps=eps, step_size=4 * eps,
              num_steps=10, norm="l2", loss=loss, random_start=random_start)
  d = _w_diff(w, y)
  expected = -eps * d / _l2(d)[:, None, None, None]
  np.testing.assert_allclose(np.asarray(x_adv - x), expected, atol=1e-5)
  np.testing.assert_allclose(_l2(x_adv - x), eps, rtol=1e-5)


def test_l2_fgsm_is_exact_optimum():
  logits_fn, w, _ = _linear(2, seed=7)
  x, y = _interior_x(8), _labels(9, 2)
  x_adv = fgsm(logits_fn, KEY, x, y, eps=0.2, norm="l2")
  d = _w_diff(w, y)
  np.testing.assert_allclose(np.asarray(x_adv - x), -0.2 * d / _l2(d)[:, None, None, None],
                             atol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "margin", "cw"])
def test_targeted_two_class_moves_toward_target(loss):
  logits_fn, w, _ = _linear(2, seed=11)
  x, y = _interior_x(12), _labels(13, 2)
  t = 1 - y  # target the other class: the optimum is x + eps sign(w_t - w_y)
  eps = 0.1
  x_adv = pgd(logits_fn, KEY, x, t, eps=eps, step_size=eps / 2, num_steps=4, loss=loss,
              targeted=True, random_start="uniform")
  expected = np.asarray(x) + eps * np.sign(-_w_diff(w, y))
  np.testing.assert_allclose(np.asarray(x_adv), expected, atol=1e-6)


def test_targeted_multiclass_raises_target_probability():
  logits_fn, _, _ = _linear(10, seed=14, scale=0.3)
  x, t = _interior_x(15), _labels(16, 10)
  x_adv = pgd(logits_fn, KEY, x, t, eps=0.1, step_size=0.02, num_steps=10, targeted=True,
              random_start="none")
  logp = lambda v: np.asarray(jax.nn.log_softmax(logits_fn(v))[jnp.arange(B), t])
  assert np.all(logp(x_adv) > logp(x))
  hit = lambda v: np.mean(_pred(logits_fn, v) == np.asarray(t))
  assert hit(x) <= 0.25 and hit(x_adv) >= 0.75


# --- invariants on a small conv net ---------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _cnn():
  """simple_cnn_tiny split into (ModelFns, params, batch_stats), NumPy weights."""
  return numpy_initialised("simple_cnn_tiny", seed=0)


def _cnn_logits_fn():
  fns, params, bs = _cnn()
  return fns.logits_fn(params, bs)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", ["uniform", "normal", "none"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_invariants(loss, random_start, norm):
  if norm == "l2" and random_start != "uniform":
    pytest.skip("'normal'/'none' starts do not depend on the norm: covered by linf")
  eps = 0.1 if norm == "linf" else 0.5
  x, y = _uniform_x(20), _labels(21, 10)  # pixels near 0 and 1: the box binds
  x_adv = pgd(_cnn_logits_fn(), KEY, x, y, eps=eps, step_size=eps / 2, num_steps=3,
              norm=norm, loss=loss, random_start=random_start)
  assert x_adv.shape == x.shape and x_adv.dtype == jnp.float32
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  if norm == "linf":
    assert np.all(_linf(x_adv - x) <= eps * (1 + 1e-6))
  else:
    assert np.all(_l2(x_adv - x) <= eps * (1 + 1e-5))
  assert not np.allclose(np.asarray(x_adv), np.asarray(x))  # it did something


def test_no_gradient_through_x_adv():
  x, y = _uniform_x(22), _labels(23, 10)
  gx = jax.grad(lambda x: jnp.sum(pgd(_cnn_logits_fn(), KEY, x, y, eps=0.1, step_size=0.05,
                                      num_steps=2) ** 2))(x)
  np.testing.assert_array_equal(np.asarray(gx), 0.0)
  # nor into the model's weights; fgsm as well (a linear model keeps the
  # second-order tracing cheap). Restarts: see test_restarts_keep_worst_case.
  x, y = _interior_x(6), _labels(7, 2)
  _, w0, b0 = _linear(2, seed=5)
  lin = lambda w: (lambda v: v.reshape(v.shape[0], -1) @ w + b0)

  def f(x, w):
    return jnp.sum(pgd(lin(w), KEY, x, y, eps=0.1, step_size=0.05, num_steps=2) ** 2)

  gx, gw = jax.grad(f, argnums=(0, 1))(x, w0)
  np.testing.assert_array_equal(np.asarray(gx), 0.0)
  np.testing.assert_array_equal(np.asarray(gw), 0.0)
  g_fgsm = jax.grad(lambda x: jnp.sum(fgsm(lin(w0), KEY, x, y, eps=0.1) ** 2))(x)
  np.testing.assert_array_equal(np.asarray(g_fgsm), 0.0)


def test_robust_accuracy_at_most_clean():
  logits_fn = _cnn_logits_fn()
  x = _uniform_x(30)
  pred = jnp.argmax(logits_fn(x), -1)
  # Half the labels agree with the prediction: clean accuracy 50 %.
  y = jnp.where(jnp.arange(B) % 2 == 0, pred, (pred + 1) % 10)
  clean = _pred(logits_fn, x) == np.asarray(y)
  assert clean.mean() == 0.5
  for kwargs in (dict(), dict(early_stop=True, random_start="none")):
    x_adv = pgd(logits_fn, jax.random.PRNGKey(1), x, y, eps=0.1, step_size=0.03, num_steps=5,
                **kwargs)
    robust = _pred(logits_fn, x_adv) == np.asarray(y)
    assert robust.mean() < clean.mean(), kwargs  # <=, and the attack finds something
    if kwargs.get("early_stop"):
      # a frozen misclassified example can never become correct.
      assert not np.any(robust & ~clean)


# --- restarts -----------------------------------------------------------------------------


def test_restarts_keep_worst_case():
  """Each example keeps the restart that succeeded, else the highest objective.

  The model's first half of the batch is linear (10 classes), its second half a
  step function whose class depends only on the sign of u = mean(x) - 0.5:

    u < 0: logits [0, 0.1, -100, ...]  -> class 1 (misclassified), CE ~ 0.74
    u > 0: logits [0, -0.01, -0.01, ...] -> class 0 (correct),     CE ~ 2.3

  Its gradient is 0, so each restart stays at its random start and a
  successful restart has the LOWER CE: success must win over the objective.
  """
  half = B // 2
  linear, _, _ = _linear(10, seed=40, scale=0.3)
  wrong = jnp.array([0.0, 0.1] + [-100.0] * 8)
  right = jnp.array([0.0] + [-0.01] * 9)

  def logits_fn(x):
    u = jnp.mean(x[half:], axis=(1, 2, 3)) - 0.5
    step = jnp.where((u < 0)[:, None], wrong, right)
    return jnp.concatenate([linear(x[:half]), step])

  x = jnp.concatenate([_interior_x(41)[:half], jnp.full((half,) + SHAPE[1:], 0.5)])
  y = jnp.asarray(np.concatenate([_pred(linear, x[:half]), np.zeros(half)]), jnp.int32)
  rng, n = jax.random.PRNGKey(42), 4
  # eps 0.3: mean(x) of the step half moves by U(-0.3, 0.3) averaged over 192 pixels.
  settings = dict(eps=0.3, step_size=0.01, num_steps=2, loss="ce")

  best, vjp = jax.vjp(lambda x: pgd(logits_fn, rng, x, y, num_restarts=n, **settings), x)
  np.testing.assert_array_equal(np.asarray(vjp(jnp.ones_like(x))[0]), 0.0)  # no gradient
  # the same keys as the implementation: restart r uses fold_in(rng, r)
  singles = [pgd(logits_fn, jax.random.fold_in(rng, r), x, y, **settings) for r in range(n)]
  ce = lambda v: np.asarray(LOSSES["ce"](logits_fn(v), y))
  succ = lambda v: _pred(logits_fn, v) != np.asarray(y)
  s_all = np.stack([succ(v) for v in singles])  # [n, B]
  o_all = np.stack([ce(v) for v in singles])
  assert np.ptp(o_all[:, :half], axis=0).max() > 1e-3  # restarts differ
  mixed = s_all.any(0) & ~s_all.all(0)
  assert mixed[half:].sum() >= 2  # the success-versus-objective case occurs

  np.testing.assert_array_equal(succ(best), s_all.any(0))
  expected = np.where(s_all.any(0), np.where(s_all, o_all, -np.inf).max(0), o_all.max(0))
  np.testing.assert_allclose(ce(best), expected, rtol=1e-5, atol=1e-6)
  # never worse than any restart with the same success status
  same = s_all == succ(best)[None]
  assert np.all(ce(best) >= np.where(same, o_all, -np.inf).max(0) - 1e-6)
  # on the step half a lower-CE success beat a higher-CE failure
  assert np.all(ce(best)[half:][mixed[half:]] < o_all.max(0)[half:][mixed[half:]])
  # each returned example is one of the restarts' results
  for i in range(B):
    assert any(np.allclose(np.asarray(best[i]), np.asarray(v[i]), atol=1e-6) for v in singles)


# --- early stop -----------------------------------------------------------------------------


def test_early_stop_freezes_misclassified_at_start():
  logits_fn, _, _ = _linear(2, seed=60)
  x = _interior_x(61)
  pred = jnp.argmax(logits_fn(x), -1)
  wrong = np.arange(B) % 2 == 1
  y = jnp.where(jnp.asarray(wrong), 1 - pred, pred)
  kw = dict(eps=0.1, step_size=0.02, num_steps=5, early_stop=True)
  x_adv = pgd(logits_fn, KEY, x, y, random_start="none", **kw)
  np.testing.assert_array_equal(np.asarray(x_adv)[wrong], np.asarray(x)[wrong])
  assert np.all(_linf(x_adv - x)[~wrong] > 0)
  # with a uniform start: examples misclassified at the start point stay there.
  rng = jax.random.PRNGKey(1)
  x0 = project(x + random_init(rng, x, 0.1, "linf", "uniform"), x, 0.1, "linf")
  wrong0 = _pred(logits_fn, x0) != np.asarray(y)
  assert wrong0.any() and (~wrong0).any()
  x_adv = pgd(logits_fn, rng, x, y, random_start="uniform", **kw)
  np.testing.assert_allclose(np.asarray(x_adv)[wrong0], np.asarray(x0)[wrong0], atol=1e-7)
  assert np.all(_linf(x_adv - x0)[~wrong0] > 0)


def test_early_stop_stops_at_first_misclassified_iterate():
  logits_fn, _, _ = _linear(2, seed=62, scale=0.1)
  x = _interior_x(63)
  y = jnp.argmax(logits_fn(x), -1)
  kw = dict(eps=0.2, step_size=0.003, random_start="none")
  n = 10
  iterates = [pgd(logits_fn, KEY, x, y, num_steps=k, **kw) for k in range(1, n + 1)]
  wrong = np.stack([_pred(logits_fn, v) != np.asarray(y) for v in iterates])
  # examples flip at different steps, some never
  assert len(set(np.argmax(wrong, 0)[wrong.any(0)])) >= 3 and not wrong[-1].all()
  stopped = pgd(logits_fn, KEY, x, y, num_steps=n, early_stop=True, **kw)
  for i in range(B):
    first = int(np.argmax(wrong[:, i])) if wrong[:, i].any() else n - 1
    np.testing.assert_allclose(np.asarray(stopped[i]), np.asarray(iterates[first][i]),
                               atol=1e-6)


# --- sign convention --------------------------------------------------------------------------


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_one_step_increases_objective(loss, targeted):
  if targeted and loss == "kl":
    pytest.skip("kl ignores labels")
  logits_fn, _, _ = _linear(10, seed=70, scale=0.3)
  x, y = _interior_x(71), _labels(72, 10)
  kwargs = {}
  if loss == "kl":  # at ref == logits(x) the KL gradient is 0; use another reference.
    noise = np.random.default_rng(73).normal(size=(B, 10))
    kwargs["ref_logits"] = logits_fn(x) + jnp.asarray(2.0 * noise, jnp.float32)
  x1 = pgd(logits_fn, KEY, x, y, eps=0.01, step_size=0.001, num_steps=1, loss=loss,
           random_start="none", targeted=targeted, **kwargs)

  def objective(v):
    target = kwargs["ref_logits"] if loss == "kl" else y
    out = np.asarray(LOSSES[loss](logits_fn(v), target))
    return -out if targeted else out

  gain = objective(x1) - objective(x)
  assert gain.mean() > 0
  # (DLR is piecewise: a step may cross a kink of the sorted logits, and its
  # gradient vanishes where target and pi_3 coincide, i.e. the ratio is constant.)
  assert np.mean(gain > 0) >= 0.75 and np.mean(gain < 0) <= 0.1


# --- compile guard, loop forms -------------------------------------------------------------------


def test_jitted_pgd_compiles_once():
  traces = []
  logits_fn, _, _ = _linear(10, seed=91)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(rng, x, y):  # fori_loop steps (unroll < num_steps) inside the restart loop
    traces.append(1)  # Python side effect: runs once per trace
    return pgd(logits_fn, rng, x, y, eps=0.03, step_size=0.01, num_steps=5, unroll=2,
               num_restarts=2)

  x, y = _interior_x(92), _labels(93, 10)
  a = run(jax.random.PRNGKey(0), x, y)
  b = run(jax.random.PRNGKey(1), x + 0.01, (y + 1) % 10)  # same shapes: no retrace
  assert len(traces) == 1 and a.shape == b.shape
  with pytest.raises(AssertionError):  # the guard works: a new shape retraces
    run(jax.random.PRNGKey(1), x[:2], y[:2])


def test_fori_loop_matches_straight_line():
  logits_fn, _, _ = _linear(10, seed=85, scale=0.3)
  x, y = _interior_x(86), _labels(87, 10)
  kw = dict(eps=0.05, step_size=0.01, num_steps=6)
  a = pgd(logits_fn, KEY, x, y, unroll=None, **kw)  # straight-line code on CPU
  b = pgd(logits_fn, KEY, x, y, unroll=4, **kw)  # fori_loop; 6 steps, unroll 4: a remainder
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_pgd_rejects_bad_arguments():
  logits_fn, _, _ = _linear(2)
  x, y = _interior_x(), _labels(2, 2)
  kw = dict(eps=0.1, step_size=0.01, num_steps=2)
  with pytest.raises(ValueError, match="unknown norm"):
    pgd(logits_fn, KEY, x, y, norm="l1", **kw)
  with pytest.raises(ValueError, match="unknown random_start"):
    pgd(logits_fn, KEY, x, y, random_start="gauss", **kw)
  with pytest.raises(ValueError, match="unknown attack loss"):
    pgd(logits_fn, KEY, x, y, loss="hinge", **kw)
  with pytest.raises(ValueError, match="must be > 0"):
    pgd(logits_fn, KEY, x, y, eps=0.0, step_size=0.01, num_steps=2)
  with pytest.raises(ValueError, match=">= 1"):
    pgd(logits_fn, KEY, x, y, eps=0.1, step_size=0.01, num_steps=0)
  with pytest.raises(ValueError, match=">= 1"):
    pgd(logits_fn, KEY, x, y, num_restarts=0, **kw)


# --- attack_from_config -----------------------------------------------------------------------


@pytest.mark.parametrize("cfg, match", [
    (dict(name="cw", eps=0.1), "unknown attack 'cw'"),
    (dict(eps=0.1), "unknown attack None"),
    (dict(name="pgd", eps=0.1, step_size=0.01, num_steps=3, epsilon=0.1),
     "unknown setting(s) ['epsilon']"),
    (dict(name="fgsm", eps=0.1, num_steps=3), "unknown setting(s) ['num_steps']"),
    (dict(name="pgd", eps=0.0, step_size=0.01, num_steps=3), "eps must be > 0"),
    (dict(name="pgd", eps=-0.1, step_size=0.01, num_steps=3), "eps must be > 0"),
    (dict(name="pgd", step_size=0.01, num_steps=3), "eps must be > 0"),
    (dict(name="pgd", eps=8, step_size=2, num_steps=3), "write e.g. 8/255"),
    (dict(name="fgsm", eps=8), "outside the [0, 1] pixel scale"),
    (dict(name="pgd", eps=0.03, num_steps=3), "step_size must be > 0, got None"),
    (dict(name="pgd", eps=0.03, step_size=0.0, num_steps=3), "step_size must be > 0"),
    (dict(name="pgd", eps=0.03, step_size=0.01), "num_steps must be >= 1"),
    (dict(name="pgd", eps=0.03, step_size=0.01, num_steps=3, loss="xent"),
     "unknown attack loss 'xent'"),
    (dict(name="pgd", eps=0.5, step_size=0.1, num_steps=3, norm="l1"), "unknown norm 'l1'"),
    (dict(name="pgd", eps=0.03, step_size=0.01, num_steps=3, random_start="zeros"),
     "unknown random_start 'zeros'"),
])
def test_attack_from_config_errors(cfg, match):
  with pytest.raises(ConfigError) as info:
    attack_from_config(cfg)
  assert match in str(info.value)


def test_attack_from_config_builds_attack():
  logits_fn, _, _ = _linear(10, seed=95, scale=0.3)
  x, y = _interior_x(96), _labels(97, 10)
  cfg = dict(name="pgd", eps=8 / 255, step_size=2 / 255, num_steps=3, loss="margin")
  attack = attack_from_config(cfg)
  assert cfg["name"] == "pgd"  # the caller's dict is not consumed
  np.testing.assert_array_equal(
      np.asarray(attack(logits_fn, KEY, x, y)),
      np.asarray(pgd(logits_fn, KEY, x, y, eps=8 / 255, step_size=2 / 255, num_steps=3,
                     loss="margin")))
  # L2 budgets above 1 are fine.
  attack_from_config(dict(name="pgd", eps=1.5, step_size=0.5, num_steps=2, norm="l2"))
  fg = attack_from_config(dict(name="fgsm", eps=0.05, random_start="none"))
  np.testing.assert_array_equal(np.asarray(fg(logits_fn, KEY, x, y)),
                                np.asarray(fgsm(logits_fn, KEY, x, y, eps=0.05)))
