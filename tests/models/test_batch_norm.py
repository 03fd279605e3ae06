"""The CPU train-mode BatchNorm (``layers.BatchNorm`` / ``bn_train``) against ``nnx.BatchNorm``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrobust.models import layers


@pytest.fixture(autouse=True)
def _fast_path_on(monkeypatch):
  # The fast path is for one CPU device; the suite runs with 8 forced host devices, and these
  # unsharded arrays live on one of them, so the path is exercised here by patching the check.
  monkeypatch.setattr(layers, "_one_device", lambda: True)


def _pair(c, seed=0):
  fast = layers.batch_norm(c, rngs=nnx.Rngs(seed))
  ref = nnx.BatchNorm(c, momentum=layers.BN_MOMENTUM, epsilon=layers.BN_EPS, rngs=nnx.Rngs(seed))
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed + 1), 4)
  for bn in (fast, ref):  # non-trivial affine parameters and running averages
    bn.scale[...] = 1.0 + 0.3 * jax.random.normal(k1, (c,))
    bn.bias[...] = 0.2 * jax.random.normal(k2, (c,))
    bn.mean[...] = 0.1 * jax.random.normal(k3, (c,))
    bn.var[...] = 1.0 + 0.5 * jax.random.uniform(k4, (c,))
  return fast, ref


def _loss_and_grads(bn, x, gy):
  """Train-mode loss <bn(x), gy>, its gradients (x, scale, bias) and the updated averages."""
  bn.train()
  graphdef, params, stats = nnx.split(bn, nnx.Param, nnx.BatchStat)

  def loss(x, params, stats):
    m = nnx.merge(graphdef, params, stats, copy=True)
    y = m(x)
    return jnp.sum(y * gy), (y, nnx.state(m, nnx.BatchStat))

  (val, (y, new_stats)), (gx, gp) = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, params, stats)
  return val, y, gx, gp, new_stats


@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (4, 3, 3, 16), (16, 7)])
def test_train_mode_matches_flax_values_gradients_and_running_averages(shape):
  c = shape[-1]
  fast, ref = _pair(c)
  x = 0.5 + 2.0 * jax.random.normal(jax.random.key(7), shape)
  gy = jax.random.normal(jax.random.key(8), shape)
  got = _loss_and_grads(fast, x, gy)
  want = _loss_and_grads(ref, x, gy)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)          # y
  np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-5)          # dL/dx
  for k in ("scale", "bias"):
    np.testing.assert_allclose(got[3][k][...], want[3][k][...], rtol=1e-4, atol=1e-4)
  for k in ("mean", "var"):
    np.testing.assert_allclose(got[4][k][...], want[4][k][...], rtol=1e-5, atol=1e-6)


def test_gradient_through_the_statistics_is_the_closed_form():
  # Independent check: the sum over the batch of dL/dx is zero for every channel (the mean is
  # subtracted), and <dL/dx, xhat> is zero too (the variance is divided out), for any gy.
  x = jax.random.normal(jax.random.key(0), (6, 4, 4, 3)) * 3.0 + 1.0
  gy = jax.random.normal(jax.random.key(1), x.shape)
  scale, bias = jnp.array([1.0, 2.0, 0.5]), jnp.zeros(3)
  gx = jax.grad(lambda z: jnp.sum(layers.bn_train(z, scale, bias)[0] * gy))(x)
  xhat = (x - x.mean((0, 1, 2))) / jnp.sqrt(x.var((0, 1, 2)) + layers.BN_EPS)
  np.testing.assert_allclose(gx.sum((0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose((gx * xhat).sum((0, 1, 2)), 0.0, atol=1e-3)
  # and against autodiff of the textbook formula
  def plain(z):
    m, v = z.mean((0, 1, 2)), z.var((0, 1, 2))
    return jnp.sum(((z - m) / jnp.sqrt(v + layers.BN_EPS) * scale + bias) * gy)
  np.testing.assert_allclose(gx, jax.grad(plain)(x), rtol=1e-4, atol=1e-5)


def test_eval_mode_masks_and_the_switch_use_flax(monkeypatch):
  fast, ref = _pair(4)
  x = jax.random.normal(jax.random.key(3), (5, 2, 2, 4))
  fast.eval(), ref.eval()
  np.testing.assert_array_equal(fast(x), ref(x))
  calls = []
  monkeypatch.setattr(layers, "bn_train", lambda *a: calls.append(1) or (_ for _ in ()).throw(
      AssertionError("fast path taken")))
  fast.train()
  monkeypatch.setenv(layers.ENV_CPU_BN, "0")
  fast(x)                                   # switched off: flax's own path
  monkeypatch.delenv(layers.ENV_CPU_BN)
  fast(x, mask=jnp.ones(x.shape, bool))     # masks: flax's own path
  monkeypatch.setattr(layers, "_one_device", lambda: False)
  fast(x)                                   # several devices: flax's own path
  monkeypatch.setattr(layers, "_one_device", lambda: True)
  assert not calls
  with pytest.raises(AssertionError, match="fast path"):
    fast(x)
