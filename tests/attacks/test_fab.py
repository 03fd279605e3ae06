"""FAB-T and FAB: exact projections, closed-form minimal perturbations, invariants."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.optimize import linprog

from jaxrobust.attacks import ATTACKS, attack_from_config, fab, fab_projection, fab_targeted
from jaxrobust.errors import ConfigError
from jaxrobust.methods import ModelFns
from jaxrobust.models import create_model
from jaxrobust.train import split_model

SHAPE = (8, 4, 4, 1)  # B, H, W, C: 16 features
DIM = 16
# FAB's fixed point on a linear model: after the first hit at eta = 1.05 times
# the projection, the backward step (beta) and the biased extrapolation
# (alpha_max) land at 1.00521... times the minimal perturbation, and no later
# iterate is smaller (the reference behaves the same).
FAB_LINEAR_RATIO = 1.0052


def _norm(v, norm):
  v = np.asarray(v, np.float64).reshape(len(v), -1)
  if norm == "linf":
    return np.abs(v).max(1)
  if norm == "l2":
    return np.sqrt((v ** 2).sum(1))
  return np.abs(v).sum(1)


def _dual(norm):
  return {"linf": 1, "l2": 2, "l1": np.inf}[norm]


# --- the projection step --------------------------------------------------------------


def _hyperplanes(seed, n=8, dim=DIM, offset=0.05):
  """Rows t in [0.3, 0.7], normals w, and b at L2 distance ``offset`` (either side)."""
  gen = np.random.default_rng(seed)
  t = gen.uniform(0.3, 0.7, (n, dim)).astype(np.float32)
  w = gen.normal(size=(n, dim)).astype(np.float32)
  side = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
  b = (np.sum(w * t, 1) - side * offset * np.linalg.norm(w, axis=1)).astype(np.float32)
  return t, w, b


# One compilation per norm and dtype: every projection test uses [8, 16] rows.
_fab_projection = jax.jit(fab_projection, static_argnames="norm")


def _project(t, w, b, norm):
  assert t.shape == (8, DIM)
  return np.asarray(_fab_projection(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b), norm))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_closed_form_when_box_inactive(norm):
  t, w, b = _hyperplanes(0)
  t64, w64 = t.astype(np.float64), w.astype(np.float64)
  c = np.sum(w64 * t64, 1) - b  # the point lies on the side sign(c)
  if norm == "l2":
    expected = -(c / np.sum(w64 ** 2, 1))[:, None] * w64
  elif norm == "linf":
    expected = -(c / np.abs(w64).sum(1))[:, None] * np.sign(w64)
  else:  # the whole step on the coordinate of largest |w|
    expected = np.zeros_like(w64)
    i = np.abs(w64).argmax(1)
    expected[np.arange(len(t)), i] = -c / w64[np.arange(len(t)), i]
  assert np.all(np.abs(expected) < 0.3)  # the box [0, 1] is indeed inactive
  delta = _project(t, w, b, norm)
  np.testing.assert_allclose(delta, expected, rtol=0, atol=2e-6)
  np.testing.assert_allclose(np.sum(w64 * (t64 + delta), 1), b, atol=1e-5)
  # the minimal distance is |c| / ||w||_dual
  np.testing.assert_allclose(_norm(delta, norm), np.abs(c) / np.linalg.norm(w64, _dual(norm),
                                                                            axis=1), rtol=1e-5)


def _bisect_ref(t, w, b, move):
  """Independent solver: z(lam) = clip(t - lam * move, 0, 1), lam >= 0 with <w, z> = b."""
  t, w, b, move = (np.asarray(v, np.float64) for v in (t, w, b, move))
  f = lambda lam: w @ np.clip(t - lam * move, 0, 1) - b
  lo, hi = 0.0, 1e4
  assert f(lo) * f(hi) < 0
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if f(mid) * f(lo) > 0 else (lo, mid)
  return np.clip(t - lo * move, 0, 1) - t


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_matches_independent_solver_when_box_active(norm):
  # Points near the faces and hyperplanes far away: most coordinates saturate.
  gen = np.random.default_rng(1)
  t = gen.choice([0.02, 0.5, 0.97], size=(8, DIM)).astype(np.float32)
  w = gen.normal(size=(8, DIM)).astype(np.float32)
  offset = np.array([0.4, -0.6, 1.0, -1.2, 0.8, -0.3, 0.6, -0.9])
  b = (np.sum(w * t, 1) - offset * np.abs(w).sum(1) * 0.3).astype(np.float32)
  delta = _project(t, w, b, norm)
  z = t + delta
  assert z.min() >= -1e-6 and z.max() <= 1 + 1e-6
  np.testing.assert_allclose(np.sum(w.astype(np.float64) * z, 1), b, atol=2e-5)
  active = 0
  for n in range(len(t)):
    c = float(np.sum(w[n] * t[n].astype(np.float64)) - b[n])
    if norm == "l2":
      expected = _bisect_ref(t[n], w[n], b[n], np.sign(c) * w[n])
      np.testing.assert_allclose(delta[n], expected, atol=2e-5)
    elif norm == "linf":
      expected = _bisect_ref(t[n], w[n], b[n], np.sign(c) * np.sign(w[n]))
      np.testing.assert_allclose(delta[n], expected, atol=2e-5)
    else:  # LP: min sum(u + v), t + u - v in [0, 1], <w, u - v> = b - <w, t>
      res = linprog(np.ones(2 * DIM), A_eq=np.concatenate([w[n], -w[n]])[None].astype(np.float64),
                    b_eq=[b[n] - np.sum(w[n] * t[n].astype(np.float64))],
                    bounds=[(0, 1 - v) for v in t[n]] + [(0, v) for v in t[n]])
      assert res.status == 0
      np.testing.assert_allclose(np.abs(delta[n]).sum(), res.fun, rtol=1e-5)
    active += np.any(np.isclose(z[n], 0, atol=1e-7) | np.isclose(z[n], 1, atol=1e-7))
  assert active >= 4  # the box constraint binds for most rows


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_infeasible_and_degenerate_rows(norm):
  gen = np.random.default_rng(2)
  t = gen.uniform(0.2, 0.8, (8, DIM)).astype(np.float32)
  w = gen.normal(size=(8, DIM)).astype(np.float32)
  w[2] = 0.0                 # no hyperplane at all
  w[3, :8] = 0.0             # half the coordinates cannot help
  b = (np.sum(w * t, 1) + np.array([1e3, -1e3, 1.0, 1e3, 0, 0, 0, 0])).astype(np.float32)
  delta = _project(t, w, b, norm)
  assert np.all(np.isfinite(delta))
  # unreachable: every useful coordinate goes to the bound in the right direction.
  corner = np.where(w > 0, 1.0, np.where(w < 0, 0.0, t)) - t
  corner[1] = np.where(w[1] > 0, 0.0, 1.0) - t[1]
  np.testing.assert_allclose(delta[[0, 1, 3]], corner[[0, 1, 3]], atol=1e-6)
  np.testing.assert_array_equal(delta[2], 0.0)


def test_projection_half_precision_is_finite():
  dtype = jnp.float16
  # The reference's 1e10/1e12 overflow float16; here the sentinels follow finfo.
  t, w, b = _hyperplanes(3, offset=0.1)
  w[0, :4] = 0.0
  ref = {norm: _project(t, w, b, norm) for norm in ("linf", "l2", "l1")}
  for norm, expected in ref.items():
    out = _fab_projection(jnp.asarray(t, dtype), jnp.asarray(w, dtype), jnp.asarray(b, dtype),
                          norm=norm)
    assert out.dtype == dtype
    out = np.asarray(out, np.float32)
    assert np.all(np.isfinite(out)), norm
    np.testing.assert_allclose(out, expected, atol=0.03)


def test_projection_bad_arguments():
  t = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="norm"):
    fab_projection(t, t, jnp.zeros(2), "l3")
  with pytest.raises(ValueError, match="shape|want"):
    fab_projection(t, t, jnp.zeros(3))


# --- the attack on a linear model: closed-form minimal perturbations -----------------------


@functools.lru_cache(maxsize=None)
def _linear_problem(k=4, seed=12):
  gen = np.random.default_rng(seed)
  w = gen.normal(size=(DIM, k)).astype(np.float32)
  bias = (0.3 * gen.normal(size=k)).astype(np.float32)
  x = gen.uniform(0.3, 0.7, SHAPE).astype(np.float32)
  logits = x.reshape(len(x), -1).astype(np.float64) @ w + bias
  y = logits.argmax(1)
  return w, bias, x, y, logits


def _linear_fn(w, bias):
  w, bias = jnp.asarray(w), jnp.asarray(bias)
  return lambda v: v.reshape(v.shape[0], -1) @ w + bias


def _minimal_perturbation(norm):
  """Per example: the closest class boundary f_j = f_y, its distance and the step to it."""
  w, _, x, y, logits = _linear_problem()
  w64 = w.astype(np.float64)
  dist, step, cls = [], [], []
  for n in range(len(x)):
    best = (np.inf, None, None)
    for j in range(w.shape[1]):
      if j == y[n]:
        continue
      u = w64[:, j] - w64[:, y[n]]        # f_j - f_y grows along u
      gap = logits[n, y[n]] - logits[n, j]
      d = gap / np.linalg.norm(u, _dual(norm))
      if d < best[0]:
        direction = u / np.linalg.norm(u) if norm == "l2" else np.sign(u)
        best = (d, d * direction, j)
    dist.append(best[0]), step.append(best[1]), cls.append(best[2])
  return np.array(dist), np.array(step).reshape(SHAPE), np.array(cls)


@functools.lru_cache(maxsize=None)
def _jitted_fab(norm, **settings):
  w, bias, _, _, _ = _linear_problem()
  fn = _linear_fn(w, bias)
  # eps is traced: the success and failure runs share one compilation.
  return jax.jit(lambda rng, x, y, eps: fab_targeted(fn, rng, x, y, eps=eps, norm=norm,
                                                     **settings))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_t_finds_closed_form_minimal_perturbation(norm):
  _, _, x, y, logits = _linear_problem()
  dist, step, cls = _minimal_perturbation(norm)
  second = np.argsort(logits, 1)[:, -2]
  assert np.any(cls != second)  # some optima need a target beyond the runner-up
  assert np.all(np.abs(step) < 0.25 if norm != "l1" else dist < 0.295)  # the box does not bind
  # Default n_target_classes=9 > K - 1 = 3: clamped to every other class. The
  # second restart (random start at eps/2) runs only where the first failed.
  run = _jitted_fab(norm, num_steps=10, num_restarts=2)
  args = (jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(y, jnp.int32))
  # eps (per example) just below the minimal distance: no adversarial exists,
  # restarts included, and x comes back.
  below = run(*args, jnp.asarray(0.999 * dist, jnp.float32))
  np.testing.assert_array_equal(np.asarray(below), x)
  # just above: every example is fooled at the minimal perturbation (scaled by
  # FAB's overshoot), past the boundary of the closest class.
  above = np.asarray(run(*args, jnp.asarray(1.01 * dist, jnp.float32)))
  delta = above - x
  np.testing.assert_allclose(_norm(delta, norm) / dist, FAB_LINEAR_RATIO, atol=2e-4)
  if norm != "l1":  # (the L1 optimum need not be unique)
    np.testing.assert_allclose(delta, FAB_LINEAR_RATIO * step, atol=3e-4 * np.abs(step).max())
  pred = np.asarray(jnp.argmax(_linear_fn(*_linear_problem()[:2])(above), -1))
  np.testing.assert_array_equal(pred, cls)
  # One eps for the batch: each example keeps the first target class (by clean
  # logit rank) that succeeds within eps, not necessarily the closest class.
  eps = float(dist.max() * 1.01)
  shared = np.asarray(run(*args, jnp.full(len(x), eps, jnp.float32)))  # (same shape: no retrace)
  found = _norm(shared - x, norm)
  assert np.all((found >= dist * (1 - 1e-5)) & (found <= eps * (1 + 1e-6)))
  runner_up = cls == second
  np.testing.assert_allclose(found[runner_up] / dist[runner_up], FAB_LINEAR_RATIO, atol=2e-4)


# --- invariants on a small conv net ------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _cnn():
  """simple_cnn_tiny with random weights, eval-mode ``x -> logits`` (jitted)."""
  # Shapes from eval_shape, values from NumPy: eager flax initialisation costs
  # one XLA compilation per parameter shape (~10 s on a 2-core CPU).
  graphdef, params, batch_stats = split_model(
      nnx.eval_shape(lambda: create_model("simple_cnn_tiny", seed=0)))
  gen = np.random.default_rng(0)

  def init(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      kernel = gen.normal(size=leaf.shape) * np.sqrt(2 / fan_in)
      if "linear" in name:  # centred: post-ReLU features alone favour no class
        kernel -= kernel.mean(0)
      return jnp.asarray(kernel, leaf.dtype)
    if "scale" in name or "var" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(0.01 * gen.normal(size=leaf.shape), leaf.dtype)   # bias, mean

  params = jax.tree_util.tree_map_with_path(init, params)
  batch_stats = jax.tree_util.tree_map_with_path(init, batch_stats)
  return ModelFns(graphdef).logits_fn(params, batch_stats)


_CNN_TRACES = []


@functools.lru_cache(maxsize=None)
def _cnn_attack(norm):
  def attack(rng, x, y, eps):
    _CNN_TRACES.append(norm)  # Python side effect: once per trace
    return fab_targeted(_cnn(), rng, x, y, eps=eps, norm=norm, num_steps=4, num_restarts=2,
                        n_target_classes=3)

  return jax.jit(attack)


def _cnn_data(seed):
  x = jnp.asarray(np.random.default_rng(seed).uniform(size=(8, 8, 8, 3)), jnp.float32)
  pred = jax.jit(_cnn())(x).argmax(-1)
  y = jnp.where(jnp.arange(8) % 4 == 3, (pred + 1) % 10, pred)  # 2 of 8 misclassified
  return x, y, pred


@pytest.mark.parametrize("norm,eps", [("linf", 0.04), ("l2", 0.35)])
def test_fab_t_invariants_on_cnn(norm, eps):
  x, y, pred = _cnn_data(20)
  x_adv = _cnn_attack(norm)(jax.random.PRNGKey(0), x, y, eps)
  assert x_adv.shape == x.shape and x_adv.dtype == jnp.float32
  xa, xn = np.asarray(x_adv), np.asarray(x)
  assert xa.min() >= 0.0 and xa.max() <= 1.0
  assert np.all(_norm(xa - xn, norm) <= eps + 1e-6)
  wrong = np.asarray(pred != y)
  np.testing.assert_array_equal(xa[wrong], xn[wrong])   # already misclassified: unchanged
  changed = np.any(xa != xn, axis=(1, 2, 3))
  adv_pred = np.asarray(jax.jit(_cnn())(x_adv).argmax(-1))
  assert np.all(adv_pred[changed] != np.asarray(y)[changed])  # every change is a success
  assert changed.sum() >= 2  # the attack finds something


def test_fab_t_compiles_once():
  run = _cnn_attack("linf")
  before = len(_CNN_TRACES)
  for seed, eps in ((30, 0.05), (31, 0.03), (32, 0.1)):  # new values, same shapes
    x, y, _ = _cnn_data(seed)
    run(jax.random.PRNGKey(seed), x, y, eps).block_until_ready()
  assert _CNN_TRACES.count("linf") == 1
  assert len(_CNN_TRACES) - before <= 1  # at most the first call traced here
  run.lower(jax.random.PRNGKey(0), x[:2], y[:2], 0.05)  # the counter sees a retrace
  assert _CNN_TRACES.count("linf") == 2


def test_no_gradient_through_x_adv():
  w, bias, x, y, _ = _linear_problem()

  def f(v, wv):
    lf = lambda z: z.reshape(z.shape[0], -1) @ wv + bias
    x_adv = fab_targeted(lf, jax.random.PRNGKey(0), v, jnp.asarray(y), eps=1.0, num_steps=1,
                         n_target_classes=1)
    return jnp.sum(x_adv ** 2)

  gx, gw = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(w))
  np.testing.assert_array_equal(np.asarray(gx), 0.0)
  np.testing.assert_array_equal(np.asarray(gw), 0.0)


# --- registry, config, argument checks ---------------------------------------------------


def test_registry_and_config():
  assert ATTACKS["fab_t"] is fab_targeted
  attack = attack_from_config(dict(name="fab_t", eps=0.5, norm="l2", num_steps=3,
                                   n_target_classes=1))
  w, bias, x, y, _ = _linear_problem()
  # Tracing only (no compilation): the configured attack runs and keeps x's shape.
  out = jax.eval_shape(lambda *a: attack(_linear_fn(w, bias), *a), jax.random.PRNGKey(0),
                       jnp.asarray(x), jnp.asarray(y, jnp.int32))
  assert out.shape == x.shape and out.dtype == jnp.float32
  with pytest.raises(ConfigError, match="step_size"):
    attack_from_config(dict(name="fab_t", eps=0.1, step_size=0.1))


@pytest.mark.parametrize("kwargs", [dict(eps=0.0), dict(eps=0.1, norm="l3"),
                                    dict(eps=0.1, num_steps=0), dict(eps=0.1, beta=1.5),
                                    dict(eps=0.1, n_target_classes=0),
                                    dict(eps=np.full(3, 0.1))])
def test_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    fab_targeted(lambda v: v.reshape(v.shape[0], -1), jax.random.PRNGKey(0),
                 jnp.zeros((1, 2, 1, 1)), jnp.zeros((1,), jnp.int32), **kwargs)


# --- untargeted FAB ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _jitted_fab_untargeted(norm, **settings):
  w, bias, _, _, _ = _linear_problem()
  fn = _linear_fn(w, bias)
  return jax.jit(lambda rng, x, y, eps: fab(fn, rng, x, y, eps=eps, norm=norm, **settings))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_closest_boundary(norm):
  # Linear model: the minimal perturbation goes to the closest boundary,
  # min_j |f_y - f_j| / ||w_y - w_j||_dual, and FAB picks that hyperplane.
  _, _, x, y, _ = _linear_problem()
  dist, step, cls = _minimal_perturbation(norm)
  assert np.all(np.abs(step) < 0.25)  # the box does not bind
  run = _jitted_fab_untargeted(norm, num_steps=10, num_restarts=2)
  args = (jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(y, jnp.int32))
  below = run(*args, jnp.asarray(0.999 * dist, jnp.float32))
  np.testing.assert_array_equal(np.asarray(below), x)
  above = np.asarray(run(*args, jnp.asarray(1.01 * dist, jnp.float32)))
  delta = above - x
  np.testing.assert_allclose(_norm(delta, norm) / dist, FAB_LINEAR_RATIO, atol=2e-4)
  np.testing.assert_allclose(delta, FAB_LINEAR_RATIO * step, atol=3e-4 * np.abs(step).max())
  pred = np.asarray(jnp.argmax(_linear_fn(*_linear_problem()[:2])(above), -1))
  np.testing.assert_array_equal(pred, cls)


@pytest.mark.parametrize("norm,eps", [("linf", 0.04), ("l2", 0.35)])
def test_fab_invariants_on_cnn(norm, eps):
  x, y, pred = _cnn_data(20)
  attack = jax.jit(lambda rng, x, y: fab(_cnn(), rng, x, y, eps=eps, norm=norm, num_steps=4,
                                         num_restarts=2))
  x_adv = attack(jax.random.PRNGKey(0), x, y)
  assert x_adv.shape == x.shape and x_adv.dtype == jnp.float32
  xa, xn = np.asarray(x_adv), np.asarray(x)
  assert xa.min() >= 0.0 and xa.max() <= 1.0
  assert np.all(_norm(xa - xn, norm) <= eps + 1e-6)
  wrong = np.asarray(pred != y)
  np.testing.assert_array_equal(xa[wrong], xn[wrong])
  changed = np.any(xa != xn, axis=(1, 2, 3))
  adv_pred = np.asarray(jax.jit(_cnn())(x_adv).argmax(-1))
  assert np.all(adv_pred[changed] != np.asarray(y)[changed])
  assert changed.sum() >= 2


def test_fab_registry_and_bad_arguments():
  assert ATTACKS["fab"] is fab
  attack = attack_from_config(dict(name="fab", eps=0.5, norm="l2", num_steps=3, num_restarts=1))
  w, bias, x, y, _ = _linear_problem()
  out = jax.eval_shape(lambda *a: attack(_linear_fn(w, bias), *a), jax.random.PRNGKey(0),
                       jnp.asarray(x), jnp.asarray(y, jnp.int32))
  assert out.shape == x.shape and out.dtype == jnp.float32
  with pytest.raises(ConfigError, match="n_target_classes"):
    attack_from_config(dict(name="fab", eps=0.1, n_target_classes=3))
  for kwargs in (dict(eps=0.0), dict(eps=0.1, norm="l3"), dict(eps=0.1, num_restarts=0),
                 dict(eps=0.1, eta=0.0)):
    with pytest.raises(ValueError):
      fab(lambda v: v.reshape(v.shape[0], -1), jax.random.PRNGKey(0), jnp.zeros((1, 2, 1, 1)),
          jnp.zeros((1,), jnp.int32), **kwargs)


def test_sort_free_linf_projection_equals_the_sort_based_reference():
  """The bisection form gives the reference's (sort-based) L-inf projection."""
  from jaxrobust.attacks._fab_projections import _projection_linf, _projection_linf_sorted
  gen = np.random.default_rng(7)
  t = gen.uniform(size=(64, 50)).astype(np.float32)
  w = gen.normal(size=(64, 50)).astype(np.float32)
  w[::7, :10] = 0  # zero normals on some coordinates.
  # Offsets from "barely moved" to "box active" to "unreachable".
  b = (np.sum(w * t, 1) + gen.normal(size=64) * np.linspace(0.01, 30, 64)).astype(np.float32)
  ours = np.asarray(jax.jit(_projection_linf)(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
  ref = np.asarray(jax.jit(_projection_linf_sorted)(jnp.asarray(t), jnp.asarray(w),
                                                    jnp.asarray(b)))
  np.testing.assert_allclose(ours, ref, atol=2e-5)
  assert np.all((t + ours >= -1e-6) & (t + ours <= 1 + 1e-6))
