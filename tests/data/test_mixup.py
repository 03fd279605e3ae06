"""Mixup / CutMix with timm's batch-mode semantics, and the soft-target CE they feed."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import ce_loss
from jaxrobust.data.mixup import MixupSettings, cutmix_box, mixup_cutmix, mixup_targets
from jaxrobust.losses import cross_entropy, soft_target_cross_entropy

B, H, W, K = 4, 8, 8, 5
CUTMIX = MixupSettings(prob=1.0, switch_prob=1.0)  # always CutMix
MIXUP = MixupSettings(prob=1.0, switch_prob=0.0)  # always Mixup
# One compile per settings (eager op-by-op dispatch is slower than compiling once).
_mix = jax.jit(mixup_cutmix, static_argnums=(3, 4))


def _batch():
  # Image i is constant i + 1 (every pixel differs from its partner B - 1 - i).
  x = jnp.broadcast_to(jnp.arange(1, B + 1, dtype=jnp.float32)[:, None, None, None] / 10,
                       (B, H, W, 3))
  return x, jnp.asarray([0, 3, 1, 4], jnp.int32)


def test_cutmix_box_area_is_one_minus_lambda():
  x, y = _batch()
  for seed in range(6):
    x_out, targets, lam = _mix(jax.random.PRNGKey(seed), x, y, K, CUTMIX)
    pasted = np.asarray(x_out != x)  # [B, H, W, 3]
    np.testing.assert_array_equal(np.asarray(x_out)[pasted], np.asarray(x[::-1])[pasted])
    box = pasted[0, :, :, 0]
    assert (pasted == box[None, :, :, None]).all()  # one box for the batch and the channels
    rows, cols = np.nonzero(box.any(1))[0], np.nonzero(box.any(0))[0]
    if box.any():  # a filled rectangle
      assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    np.testing.assert_allclose(float(lam), 1.0 - box.sum() / (H * W), rtol=1e-6)
    want = float(lam) * np.eye(K)[np.asarray(y)] + (1 - float(lam)) * np.eye(K)[np.asarray(y)[::-1]]
    np.testing.assert_allclose(np.asarray(targets), want, rtol=1e-6, atol=1e-7)


_box = jax.jit(lambda key, lam: cutmix_box(key, 32, 32, lam))


def test_cutmix_box_is_timms_rand_bbox():
  # cut = int(32 sqrt(1 - lam)); corners centre -/+ cut // 2, clipped to the image.
  for lam, side in ((0.75, 16), (1 - (15.5 / 32) ** 2, 14)):  # cut 16 -> 16; cut 15 -> 14
    for seed in range(8):
      yl, yh, xl, xh = (int(v) for v in _box(jax.random.PRNGKey(seed), lam))
      assert 0 <= yl <= yh <= 32 and 0 <= xl <= xh <= 32
      for lo, hi in ((yl, yh), (xl, xh)):
        assert hi - lo == side or lo == 0 or hi == 32  # clipped only at a border
        assert hi - lo <= side
  yl, yh, xl, xh = (int(v) for v in _box(jax.random.PRNGKey(0), 1.0))
  assert yl == yh and xl == xh  # lam 1: an empty box


def test_mixup_is_a_convex_combination_of_the_reversed_pair():
  x, y = _batch()
  x_out, targets, lam = _mix(jax.random.PRNGKey(1), x, y, K, MIXUP)
  lam = float(lam)
  assert 0.0 < lam < 1.0
  np.testing.assert_allclose(np.asarray(x_out), lam * np.asarray(x) + (1 - lam) * np.asarray(
      x[::-1]), rtol=1e-6)
  lo, hi = np.minimum(x, x[::-1]), np.maximum(x, x[::-1])
  assert np.all(np.asarray(x_out) >= lo - 1e-7) and np.all(np.asarray(x_out) <= hi + 1e-7)
  np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(targets)[np.arange(B), np.asarray(y)],
                             np.where(np.asarray(y) == np.asarray(y)[::-1], 1.0, lam), rtol=1e-6)


def test_batch_probability_and_switch():
  x, y = _batch()
  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  settings = MixupSettings()  # Mo et al.: prob 0.3, switch 0.5
  x_out, _, lam = jax.jit(jax.vmap(lambda k: mixup_cutmix(k, x, y, K, settings)))(keys)
  x_out, mixed, x_np = np.asarray(x_out), np.asarray(lam) < 1.0, np.asarray(x)
  np.testing.assert_array_equal(x_out[~mixed], np.broadcast_to(x_np, (
      (~mixed).sum(),) + x.shape))  # unmixed batches are untouched
  assert 0.24 < mixed.mean() < 0.36
  cut = (x_out == x_np[::-1]).any(axis=(1, 2, 3, 4))[mixed]  # CutMix pastes exact pixels
  assert 0.35 < cut.mean() < 0.65
  # prob 0: never mixed, one-hot targets.
  x0, t0, lam0 = _mix(keys[0], x, y, K, MixupSettings(prob=0.0))
  assert float(lam0) == 1.0 and np.array_equal(np.asarray(x0), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(t0), np.eye(K)[np.asarray(y)])
  with pytest.raises(ValueError, match="even batch size"):
    mixup_cutmix(keys[0], x[:3], y[:3], K)


def test_label_smoothing_targets():
  t = mixup_targets(jnp.asarray([0, 1]), 4, 0.6, label_smoothing=0.2)
  off, on = 0.05, 0.85
  np.testing.assert_allclose(np.asarray(t[0]), [0.6 * on + 0.4 * off, 0.6 * off + 0.4 * on,
                                                off, off], rtol=1e-6)


def test_soft_target_ce_equals_the_hand_value():
  logits = jnp.asarray([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  targets = jnp.asarray([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
  lse = math.log(math.e ** 2 + math.e + 1.0)
  hand = [0.7 * (lse - 2.0) + 0.3 * (lse - 1.0), math.log(3.0)]
  np.testing.assert_allclose(np.asarray(soft_target_cross_entropy(logits, targets, "none")),
                             hand, rtol=1e-6)
  np.testing.assert_allclose(float(soft_target_cross_entropy(logits, targets)), np.mean(hand),
                             rtol=1e-6)
  # The attack objective 'ce' takes soft targets; one-hot targets are the hard CE.
  np.testing.assert_allclose(np.asarray(ce_loss(logits, targets)), hand, rtol=1e-6)
  y = jnp.asarray([0, 2])
  np.testing.assert_allclose(np.asarray(ce_loss(logits, jax.nn.one_hot(y, 3))),
                             np.asarray(cross_entropy(logits, y, reduction="none")), rtol=1e-6)
