"""Attack objectives against hand-computed values."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import (LOSSES, ce_loss, cw_loss, dlr_loss, dlr_targeted_loss,
                               kl_loss, margin_loss)

LOGITS = jnp.array([[3.0, 1.0, 0.5, -1.0]])


def _normal(seed, shape):
  # NumPy test data: every new jax.random shape costs an XLA compile.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _close(a, b, tol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b, np.float32), rtol=tol, atol=tol)


def test_registry():
  assert set(LOSSES) == {"ce", "cw", "margin", "kl", "dlr", "margin_floor"}


def test_ce_by_hand():
  logits = jnp.array([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  out = ce_loss(logits, jnp.array([0, 2, 1]))
  # -log softmax: log(e^2 + e^1 + e^0) - z_y.
  lse = math.log(math.exp(2) + math.exp(1) + 1.0)
  _close(out, [lse - 2.0, lse - 0.0, math.log(3.0)])
  assert out.dtype == jnp.float32 and out.shape == (3,)


def test_ce_large_logits_is_finite():
  out = ce_loss(jnp.array([[1000.0, -1000.0]]), jnp.array([1]))
  _close(out, [2000.0])


def test_margin_by_hand():
  logits = jnp.concatenate([LOGITS] * 4)
  out = margin_loss(logits, jnp.array([0, 1, 2, 3]))
  # max_{j != y} z_j - z_y
  _close(out, [1.0 - 3.0, 3.0 - 1.0, 3.0 - 0.5, 3.0 - (-1.0)])


def test_margin_ties():
  out = margin_loss(jnp.array([[2.0, 2.0, 0.0]]), jnp.array([0]))
  _close(out, [0.0])


def test_cw_by_hand():
  logits = jnp.concatenate([LOGITS] * 2)
  labels = jnp.array([0, 2])
  # -relu(z_y - max_{j != y} z_j + kappa)
  _close(cw_loss(logits, labels, kappa=1.0), [-max(3.0 - 1.0 + 1.0, 0.0),
                                              -max(0.5 - 3.0 + 1.0, 0.0)])
  _close(cw_loss(logits, labels, kappa=0.0), [-2.0, 0.0])
  _close(cw_loss(logits, labels), [-(2.0 + 50.0), -(0.5 - 3.0 + 50.0)])  # default kappa=50


def test_kl_by_hand():
  # ref p = softmax([0, 0]) = [1/2, 1/2]; q = softmax([log 3, 0]) = [3/4, 1/4].
  ref = jnp.array([[0.0, 0.0]])
  logits = jnp.array([[math.log(3.0), 0.0]])
  expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = 0.5 log(4/3)
  _close(kl_loss(logits, ref), [expected])
  _close(kl_loss(logits, ref), [0.5 * math.log(4.0 / 3.0)])


def test_kl_zero_at_reference_and_shift_invariant():
  z = _normal(0, (5, 7)) * 3
  _close(kl_loss(z, z), np.zeros(5), tol=1e-5)
  _close(kl_loss(z + 10.0, z), np.zeros(5), tol=1e-5)  # softmax is shift invariant
  assert np.all(np.asarray(kl_loss(z[::-1], z)) >= 0)


def test_kl_no_gradient_into_reference():
  z = _normal(1, (3, 4))
  ref = _normal(2, (3, 4))
  g_ref = jax.grad(lambda r: jnp.sum(kl_loss(z, r)))(ref)
  np.testing.assert_array_equal(np.asarray(g_ref), 0.0)
  g_z = jax.grad(lambda l: jnp.sum(kl_loss(l, ref)))(z)
  # d KL(p||q)/dz = q - p with q = softmax(z), p = softmax(ref).
  _close(g_z, jax.nn.softmax(z) - jax.nn.softmax(ref), tol=1e-5)


def test_dlr_by_hand():
  logits = jnp.concatenate([LOGITS] * 3)
  out = dlr_loss(logits, jnp.array([0, 1, 3]))
  # sorted: 3, 1, 0.5, -1 -> denominator z_pi1 - z_pi3 = 3 - 0.5 = 2.5
  _close(out, [-(3.0 - 1.0) / (3.0 - 0.5),    # = -0.8
               -(1.0 - 3.0) / (3.0 - 0.5),    # = 0.8
               -(-1.0 - 3.0) / (3.0 - 0.5)])  # = 1.6
  _close(out, [-0.8, 0.8, 1.6])


def test_dlr_unsorted_logits_and_scale_invariance():
  logits = jnp.array([[0.5, -1.0, 3.0, 1.0]])
  # label 2 holds the max 3; best other 1; sorted 3, 1, 0.5, -1.
  _close(dlr_loss(logits, jnp.array([2])), [-(3.0 - 1.0) / (3.0 - 0.5)])
  _close(dlr_loss(7.0 * logits + 2.0, jnp.array([2])), [-0.8], tol=1e-5)


def test_dlr_targeted_by_hand():
  logits = jnp.concatenate([LOGITS] * 2)
  out = dlr_targeted_loss(logits, jnp.array([0, 2]), jnp.array([1, 3]))
  # denominator z_pi1 - (z_pi3 + z_pi4) / 2 = 3 - (0.5 - 1) / 2 = 3.25
  _close(out, [-(3.0 - 1.0) / 3.25, -(0.5 - (-1.0)) / 3.25])


def test_losses_shapes_and_dtype_from_bf16():
  logits = _normal(3, (6, 10)).astype(jnp.bfloat16)
  labels = jnp.arange(6) % 10
  for name, fn in LOSSES.items():
    out = fn(logits, logits if name == "kl" else labels)
    assert out.shape == (6,) and out.dtype == jnp.float32, name
    assert np.all(np.isfinite(np.asarray(out))), name


@pytest.mark.parametrize("name", ["margin", "cw", "dlr"])
def test_sign_positive_iff_misclassified(name):
  # margin/dlr > 0 exactly when argmax != y; cw (kappa=0) reaches its max 0 then.
  z = _normal(4, (64, 5))
  y = jnp.asarray(np.random.default_rng(5).integers(0, 5, 64), jnp.int32)
  kwargs = {"kappa": 0.0} if name == "cw" else {}
  out = np.asarray(LOSSES[name](z, y, **kwargs))
  wrong = np.asarray(jnp.argmax(z, -1) != y)
  assert wrong.any() and (~wrong).any()
  if name == "cw":
    np.testing.assert_array_equal(out[wrong], 0.0)
    assert np.all(out[~wrong] < 0)
  else:
    assert np.all(out[wrong] > 0) and np.all(out[~wrong] < 0)
