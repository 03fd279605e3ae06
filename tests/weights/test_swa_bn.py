"""SWA schedule and running mean; BatchNorm recomputation against the cumulative average."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.checkpoint import Checkpointer
from jaxrobust.errors import ConfigError, DataError
from jaxrobust.weights import (SWAState, collects_after_epoch, ema_decay_for_batch_size,
                               recompute_batch_stats, swa_init, swa_learning_rate, swa_schedule,
                               swa_update)
from tests.weights.toy import toy


def test_swa_learning_rate_matches_the_official_schedule():
  # timgaripov/swa train.py: t = epoch / swa_start; 1 until 0.5, linear to swa_lr/lr_init by
  # 0.9, then constant. Hand values for lr_init 0.1, swa_lr 0.01, swa_start 10.
  want = {0: 0.1, 3: 0.1, 5: 0.1, 6: 0.1 * (1 - 0.9 * 0.1 / 0.4), 7: 0.055,
          8: 0.1 * (1 - 0.9 * 0.3 / 0.4), 9: 0.01, 10: 0.01, 50: 0.01}
  for epoch, lr in want.items():
    assert swa_learning_rate(epoch, 0.1, 0.01, 10) == pytest.approx(lr, rel=1e-12), epoch
  # Chen et al. 2021 setting: swa_start 55 -> constant swa_lr from epoch 50 (t > 0.9).
  assert swa_learning_rate(27, 0.1, 0.05, 55) == 0.1
  assert swa_learning_rate(50, 0.1, 0.05, 55) == pytest.approx(0.05)
  # The optax form (float32): step s is in epoch s // steps_per_epoch.
  sched = swa_schedule(0.1, 0.01, 10, steps_per_epoch=3)
  for step in range(40):
    assert float(sched(step)) == pytest.approx(swa_learning_rate(step // 3, 0.1, 0.01, 10),
                                               rel=1e-5), step
  with pytest.raises(ConfigError):
    swa_learning_rate(0, 0.0, 0.01, 10)


def test_swa_collects_after_the_official_epochs():
  assert [e for e in range(10) if collects_after_epoch(e, swa_start=6)] == [5, 6, 7, 8, 9]
  assert [e for e in range(12) if collects_after_epoch(e, 6, swa_c_epochs=2)] == [5, 7, 9, 11]


def _weights(k):
  g = np.random.default_rng(k)
  return {"a": jnp.asarray(g.normal(size=(3, 2)), jnp.float32),
          "b": {"c": jnp.asarray(g.normal(size=(4,)), jnp.float32)}}


def test_swa_running_mean_is_exact_and_resumes_from_a_checkpoint(tmp_path):
  sets = [_weights(k) for k in range(5)]
  state = swa_init(sets[0])
  assert int(state.count) == 0
  state = swa_update(state, sets[0])
  for u, v in zip(jax.tree.leaves(state.params), jax.tree.leaves(sets[0])):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))  # first update: exact copy.
  state = swa_update(state, sets[1])
  # Save (as a training run saves its state), restore into a fresh target, continue.
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(2, {"swa": state}, {})
  ckpt.close()
  target = {"swa": swa_init(_weights(99))}
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  restored, _ = ckpt.restore(target, "latest")
  ckpt.close()
  resumed = restored["swa"]
  assert isinstance(resumed, SWAState) and int(resumed.count) == 2
  straight = state
  for w in sets[2:]:
    resumed, straight = swa_update(resumed, w), swa_update(straight, w)
  assert int(resumed.count) == int(straight.count) == 5
  for r, s, *xs in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params),
                       *(jax.tree.leaves(w) for w in sets)):
    np.testing.assert_array_equal(np.asarray(r), np.asarray(s))
    np.testing.assert_allclose(np.asarray(r), np.mean(np.stack(xs).astype(np.float64), 0),
                               rtol=1e-6, atol=1e-7)


def test_ema_decay_for_batch_size():
  assert ema_decay_for_batch_size(0.995, 1024) == pytest.approx(0.995)
  assert ema_decay_for_batch_size(0.995, 128) == pytest.approx(0.995 ** 0.125)
  # Same horizon in examples: 8 steps at batch 128 decay like one step at batch 1024.
  assert ema_decay_for_batch_size(0.995, 128) ** 8 == pytest.approx(0.995)
  with pytest.raises(ValueError):
    ema_decay_for_batch_size(1.0, 128)


def _layer_stats(params, x):
  """Per-layer train-mode batch mean / biased variance of ToyBN, in float64 numpy."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)

  def bn(h, layer):
    mu, var = h.mean(0), h.var(0)
    out = (h - mu) / np.sqrt(var + 1e-5) * p[layer]["scale"] + p[layer]["bias"]
    return np.maximum(out, 0), mu, var

  h1, mu1, var1 = bn(x @ p["l1"]["kernel"] + p["l1"]["bias"], "bn1")
  _, mu2, var2 = bn(h1 @ p["l2"]["kernel"] + p["l2"]["bias"], "bn2")
  return {"bn1": (mu1, var1), "bn2": (mu2, var2)}


def _check(stats, want):
  for layer in ("bn1", "bn2"):
    np.testing.assert_allclose(np.asarray(stats[layer]["mean"][...]), want[layer][0],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats[layer]["var"][...]), want[layer][1],
                               rtol=1e-4, atol=1e-5)


def test_bn_recomputation_is_the_cumulative_average_of_batch_statistics():
  fns, params, stats = toy(seed=1)
  g = np.random.default_rng(0)
  sizes = (5, 3, 8)
  xs = [(g.normal(size=(b, 3)) * 2 + 1).astype(np.float32) for b in sizes]
  batches = [{"image": x, "label": np.zeros(len(x), np.int32)} for x in xs]
  got = recompute_batch_stats(fns, params, stats, batches)
  # PyTorch bn_update: reset, then running = (1 - m) running + m s with m = b / (n + b).
  per = [_layer_stats(params, x.astype(np.float64)) for x in xs]
  want = {}
  for layer in ("bn1", "bn2"):
    mu, var, n = 0.0, 1.0, 0
    for b, s in zip(sizes, per):
      m = b / (n + b)
      mu, var, n = (1 - m) * mu + m * s[layer][0], (1 - m) * var + m * s[layer][1], n + b
    want[layer] = (mu, var)
    # ... which is the batch-size weighted mean.
    np.testing.assert_allclose(mu, sum(b * s[layer][0] for b, s in zip(sizes, per)) / 16)
  _check(got, want)
  # The result does not depend on the old statistics; the weights are unchanged.
  shifted = jax.tree.map(lambda v: v + 3.0, stats)
  for u, v in zip(jax.tree.leaves(recompute_batch_stats(fns, params, shifted, batches)),
                  jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6)


def test_bn_recomputation_on_perturbed_inputs_uses_the_perturbed_batch():
  fns, params, stats = toy(seed=2)
  x = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
  y = np.arange(6) % 3
  seen = []

  def perturb(logits_fn, key, xb, yb):
    seen.append(tuple(xb.shape))
    assert logits_fn(xb).shape == (xb.shape[0], 3) and yb.shape == (xb.shape[0],)
    del key
    return xb + 0.5

  got = recompute_batch_stats(fns, params, stats, [{"image": x, "label": y}], perturb=perturb,
                              rng=jax.random.PRNGKey(0))
  _check(got, _layer_stats(params, x.astype(np.float64) + 0.5))
  assert seen == [(6, 3)]
  with pytest.raises(DataError, match="padded"):
    recompute_batch_stats(fns, params, stats, [{"image": x, "label": y,
                                                "mask": np.array([1, 1, 1, 1, 1, 0])}])
  with pytest.raises(DataError, match="no batches"):
    recompute_batch_stats(fns, params, stats, [])
