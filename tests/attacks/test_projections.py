"""Threat-model pieces: random starts, ascent directions, projections."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import (NORMS, RANDOM_STARTS, ascent_direction, l2_project,
                               linf_project, project, random_init)


def _np(gen_method, seed, shape, **kw):
  # NumPy test data: every new jax.random shape costs an XLA compile.
  gen = np.random.default_rng(seed)
  return jnp.asarray(getattr(gen, gen_method)(size=shape, **kw), jnp.float32)


def _l2(v):
  v = np.asarray(v)
  return np.sqrt(np.sum(v.reshape(v.shape[0], -1).astype(np.float64) ** 2, axis=1))


def _linf(v):
  v = np.asarray(v)
  return np.max(np.abs(v.reshape(v.shape[0], -1)), axis=1)


@pytest.fixture
def x():
  return _np("uniform", 0, (16, 8, 8, 3))  # the shape of test_pgd: shared compiles


def test_constants():
  assert NORMS == ("linf", "l2")
  assert RANDOM_STARTS == ("uniform", "normal", "none", "uniform_radius")


def test_linf_project_by_hand():
  x = jnp.array([[0.5, 0.5, 0.95, 0.02]])
  x_adv = jnp.array([[0.7, 0.45, 1.5, -0.3]])
  out = linf_project(x_adv, x, 0.1)
  # clip the delta to [-0.1, 0.1], then the image to [0, 1].
  np.testing.assert_allclose(np.asarray(out), [[0.6, 0.45, 1.0, 0.0]], atol=1e-7)
  np.testing.assert_array_equal(np.asarray(project(x_adv, x, 0.1, "linf")), np.asarray(out))


def test_l2_project_by_hand():
  x = jnp.full((2, 2), 0.5)
  x_adv = x + jnp.array([[0.3, 0.4], [0.03, -0.04]])  # norms 0.5 and 0.05
  out = l2_project(x_adv, x, 0.1)
  # outside the ball: scaled by eps / ||delta|| = 0.2; inside: unchanged.
  np.testing.assert_allclose(np.asarray(out - x), [[0.06, 0.08], [0.03, -0.04]], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(project(x_adv, x, 0.1, "l2")), np.asarray(out))


def test_l2_project_clips_to_unit_box():
  x = jnp.array([[0.99, 0.5]])
  out = l2_project(x + jnp.array([[0.3, 0.0]]), x, 0.5)
  np.testing.assert_allclose(np.asarray(out), [[1.0, 0.5]])


@pytest.mark.parametrize("norm", NORMS)
def test_project_feasible_and_idempotent(x, norm):
  eps = 0.1 if norm == "linf" else 0.5
  x_adv = x + _np("normal", 1, x.shape)
  p = project(x_adv, x, eps, norm)
  assert p.shape == x.shape and p.dtype == jnp.float32
  assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
  dist = _linf(p - x) if norm == "linf" else _l2(p - x)
  assert np.all(dist <= eps * (1 + 1e-5))
  np.testing.assert_allclose(np.asarray(project(p, x, eps, norm)), np.asarray(p), atol=1e-6)


def test_project_unknown_norm(x):
  with pytest.raises(ValueError, match="unknown norm"):
    project(x, x, 0.1, "l1")


def test_random_init_none(x):
  np.testing.assert_array_equal(np.asarray(random_init(jax.random.PRNGKey(0), x, 0.1,
                                                       kind="none")), 0.0)


def test_random_init_linf_uniform(x):
  eps = 0.05
  d = np.asarray(random_init(jax.random.PRNGKey(2), x, eps, "linf", "uniform"))
  assert d.shape == x.shape and d.dtype == np.float32
  assert np.all(np.abs(d) <= eps)
  # U(-eps, eps): mean 0, variance eps^2 / 3 (3072 samples).
  assert abs(d.mean()) < 0.1 * eps
  assert abs(d.var() / (eps ** 2 / 3) - 1) < 0.1
  d2 = np.asarray(random_init(jax.random.PRNGKey(3), x, eps, "linf", "uniform"))
  assert not np.allclose(d, d2)


def test_random_init_normal_scale(x):
  d = np.asarray(random_init(jax.random.PRNGKey(4), x, 0.5, "linf", "normal"))
  # 0.001 * N(0, 1), independent of eps (3072 samples).
  assert abs(d.std() / 0.001 - 1) < 0.08
  assert abs(d.mean()) < 1e-4


def test_random_init_l2_uniform_in_ball(x):
  # d = 192; 50 draws of 16 examples
  eps = 0.5
  d = np.concatenate([np.asarray(random_init(jax.random.PRNGKey(i), x, eps, "l2", "uniform"))
                      for i in range(50)]).reshape(800, -1)
  r = _l2(d)
  assert np.all(r <= eps * (1 + 1e-6))
  # uniform in the 192-D ball: P(r <= eps * t) = t^192.
  for t in (0.99, 0.995, 0.998):
    assert abs(np.mean(r <= eps * t) - t ** 192) < 0.06
  # direction uniform on the sphere: each coordinate of d / |d| has mean 0 (std 0.0026).
  u = d / r[:, None]
  assert np.all(np.abs(u.mean(0)) < 0.015)


def test_random_init_l2_uniform_radius_as_rice_et_al():
  # Rice et al. / AWP attack_pgd: normalised Gaussian direction, radius U(0, 1) * eps, so the
  # mean radius is eps / 2 (uniform in the 192-D ball: 192/193 eps). 4000 examples, one draw.
  eps, n = 0.5, 4000
  x = jnp.zeros((n, 8, 8, 3), jnp.float32)
  key = jax.random.PRNGKey(7)
  d = np.asarray(random_init(key, x, eps, "l2", "uniform_radius")).reshape(n, -1)
  r = _l2(d)
  assert np.all(r <= eps * (1 + 1e-6))
  assert abs(r.mean() / eps - 0.5) < 0.02  # std of the mean: 0.29 / sqrt(4000) = 0.0046
  for t in (0.1, 0.25, 0.5, 0.75, 0.9):  # P(r <= t eps) = t
    assert abs(np.mean(r <= eps * t) - t) < 0.03
  ball = np.asarray(random_init(key, x, eps, "l2", "uniform")).reshape(n, -1)
  r_ball = _l2(ball)
  assert abs(r_ball.mean() / eps - 192 / 193) < 0.002
  # Same key, same direction: only the radius law differs.
  np.testing.assert_allclose(d / r[:, None], ball / r_ball[:, None], atol=1e-5)


def test_random_init_uniform_radius_is_uniform_for_linf(x):
  key = jax.random.PRNGKey(5)
  np.testing.assert_array_equal(np.asarray(random_init(key, x, 0.03, "linf", "uniform_radius")),
                                np.asarray(random_init(key, x, 0.03, "linf", "uniform")))


def test_random_init_unknown(x):
  with pytest.raises(ValueError, match="unknown random start"):
    random_init(jax.random.PRNGKey(0), x, 0.1, kind="gauss")


def test_ascent_direction():
  g = jnp.array([[[[0.3, -2.0]], [[0.0, 4.0]]]])  # [1, 2, 1, 2]
  np.testing.assert_array_equal(np.asarray(ascent_direction(g, "linf")),
                                [[[[1.0, -1.0]], [[0.0, 1.0]]]])
  # ||g||_2 = sqrt(0.09 + 4 + 16) = sqrt(20.09)
  np.testing.assert_allclose(np.asarray(ascent_direction(g, "l2")),
                             np.asarray(g) / np.sqrt(20.09), rtol=1e-6)


def test_ascent_direction_l2_per_example_unit_norm_and_zero_safe():
  g = _np("normal", 6, (5, 3, 3, 2)) * jnp.arange(5.0)[:, None, None, None]
  d = ascent_direction(g, "l2")
  assert np.all(np.isfinite(np.asarray(d)))
  np.testing.assert_array_equal(np.asarray(d[0]), 0.0)  # zero gradient -> zero step
  np.testing.assert_allclose(_l2(d[1:]), 1.0, rtol=1e-5)
