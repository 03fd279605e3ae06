"""Optimisers, weight-decay masks, clipping and schedules by name (jaxrobust.train.optim)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.models import create_model
from jaxrobust.train import default_config, validate_config
from jaxrobust.train.optim import make_momentum_schedule, make_optimizer, make_schedule
from jaxrobust.utils.paths import named_leaves

from .helpers import load_config


def _train(**kw):
  t = default_config().train
  t.unlock()
  t.update(kw)
  return t


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          "bn": {"scale": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
                 "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}


def _grads(params, seed):
  rng = np.random.default_rng(100 + seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def _run(tx, params, n=3):
  state = tx.init(params)
  for i in range(n):
    updates, state = tx.update(_grads(params, i), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _values(sched, steps):
  return np.asarray([float(sched(s)) for s in steps])


# ---------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_is_the_previous_chain_exactly(nesterov):
  t = _train(nesterov=nesterov)  # the published default: piecewise, wd 5e-4, momentum 0.9.
  old_sched = optax.piecewise_constant_schedule(0.1, {5: 0.1, 8: 0.1})  # 0.5, 0.75 of 10.
  old = optax.chain(optax.add_decayed_weights(5e-4),
                    optax.sgd(old_sched, momentum=0.9, nesterov=nesterov))
  p = _params()
  for a, b in zip(jax.tree.leaves(_run(make_optimizer(t, 10, 5), p, 7)),
                  jax.tree.leaves(_run(old, p, 7))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _numpy_adam(params, lr, wd, decoupled, n=3, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam(weight_decay=wd) / AdamW(weight_decay=wd), float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  m = jax.tree.map(np.zeros_like, p)
  v = jax.tree.map(np.zeros_like, p)
  for i in range(n):
    g = jax.tree.map(lambda a: np.asarray(a, np.float64), _grads(params, i))
    if decoupled:
      p = jax.tree.map(lambda w: w * (1 - lr * wd), p)
    else:
      g = jax.tree.map(lambda gg, w: gg + wd * w, g, p)
    m = jax.tree.map(lambda mm, gg: b1 * mm + (1 - b1) * gg, m, g)
    v = jax.tree.map(lambda vv, gg: b2 * vv + (1 - b2) * gg * gg, v, g)
    k = i + 1
    p = jax.tree.map(lambda w, mm, vv: w - lr * (mm / (1 - b1**k))
                     / (np.sqrt(vv / (1 - b2**k)) + eps), p, m, v)
  return p


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_variants_match_the_torch_update_rule(name):
  t = _train(optimizer=name, lr=1e-2, weight_decay=0.05, schedule="constant")
  p = _params()
  got = _run(make_optimizer(t, 10, 5), p)
  want = _numpy_adam(p, 1e-2, 0.05, decoupled=name == "adamw")
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
  ref = optax.adamw(1e-2, weight_decay=0.05) if name == "adamw" else optax.chain(
      optax.add_decayed_weights(0.05), optax.adam(1e-2))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(_run(ref, p))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _norm_and_bias_names(model):
  """Dotted names of normalisation-layer parameters and biases, from the module graph."""
  out = set()
  for path, module in nnx.iter_graph(model):
    prefix = ".".join(str(k) for k in path)
    if isinstance(module, (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)):
      out.update(f"{prefix}.{n}" for n in ("scale", "bias")
                 if getattr(module, n, None) is not None)
    elif isinstance(module, (nnx.Linear, nnx.Conv)) and module.bias is not None:
      out.add(f"{prefix}.bias")
  return out


@pytest.mark.parametrize("name", ["preact_resnet_tiny", "small_cnn_tiny"])
def test_no_norm_bias_mask_excludes_exactly_norm_and_bias_leaves(name):
  model = create_model(name, in_channels=1 if name.startswith("small") else 3)
  params = nnx.state(model, nnx.Param)
  excluded = _norm_and_bias_names(model)
  assert excluded  # the model has some.
  # AdamW with zero gradients: the update is exactly -lr * wd * w where decayed, 0 elsewhere.
  t = _train(optimizer="adamw", lr=0.5, weight_decay=0.1, schedule="constant",
             weight_decay_mask="no_norm_bias")
  tx = make_optimizer(t, 10, 5)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  seen = set()
  for (n, u), (_, w) in zip(named_leaves(updates), named_leaves(params)):
    seen.add(n)
    want = np.zeros_like(w) if n in excluded else -0.05 * np.asarray(w)
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, err_msg=n)
  assert excluded <= seen and len(seen) > len(excluded)


def test_regex_mask_and_coupled_sgd():
  t = _train(lr=1.0, momentum=0.0, weight_decay=0.1, schedule="constant",
             weight_decay_mask=r"^conv\.kernel$")
  p = _params()
  tx = make_optimizer(t, 10, 5)
  zeros = jax.tree.map(jnp.zeros_like, p)
  updates, _ = tx.update(zeros, tx.init(p), p)
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * p["conv"]["kernel"], rtol=1e-6)
  for leaf in (updates["conv"]["bias"], updates["bn"]["scale"], updates["bn"]["bias"]):
    np.testing.assert_array_equal(leaf, 0.0)
  bad = _train(weight_decay_mask="nothing_matches")
  tx = make_optimizer(bad, 10, 5)
  with pytest.raises(ConfigError, match="weight_decay_mask.*matches no parameter"):
    tx.init(p)


def test_clip_by_global_norm_bounds_the_gradient():
  t = _train(lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant",
             clip_by_global_norm=0.5)
  p = _params()
  tx = make_optimizer(t, 10, 5)
  g = _grads(p, 0)
  norm = float(optax.tree.norm(g))
  assert norm > 0.5
  updates, _ = tx.update(g, tx.init(p), p)
  assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)
  for u, gg in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):  # same direction.
    np.testing.assert_allclose(np.asarray(u), -np.asarray(gg) * 0.5 / norm, rtol=1e-5,
                               atol=1e-7)
  small = jax.tree.map(lambda a: a * 0.01 / norm, g)  # under the bound: unchanged.
  updates, _ = tx.update(small, tx.init(p), p)
  for u, gg in zip(jax.tree.leaves(updates), jax.tree.leaves(small)):
    np.testing.assert_allclose(np.asarray(u), -np.asarray(gg), rtol=1e-6)


def test_trainable_still_freezes_with_adamw():
  t = _train(optimizer="adamw", schedule="constant", trainable=r"^bn\.")
  p = _params()
  got = _run(make_optimizer(t, 10, 5), p)
  np.testing.assert_array_equal(got["conv"]["kernel"], p["conv"]["kernel"])
  np.testing.assert_array_equal(got["conv"]["bias"], p["conv"]["bias"])
  assert not np.array_equal(got["bn"]["scale"], p["bn"]["scale"])


# ---------------------------------------------------------------------------- schedules


def test_piecewise_fractions_of_training():
  sched = make_schedule(_train(lr=0.1), 200, 10)  # x0.1 at step 100, x0.01 at 150.
  np.testing.assert_allclose(_values(sched, [0, 99, 100, 149, 150, 199]),
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_piecewise_in_fractional_epochs_changes_within_an_epoch():
  # 10 steps per epoch; boundaries at epoch 1.5 and 2.25: steps 15 and 22.5.
  t = _train(lr=0.2, boundaries_epochs=(1.5, 2.25), scales=(0.1, 0.5))
  validate_config(_full(t))
  sched = make_schedule(t, 40, 10)
  np.testing.assert_allclose(_values(sched, [0, 14, 15, 16, 22, 23, 39]),
                             [0.2, 0.2, 0.02, 0.02, 0.02, 0.01, 0.01], rtol=1e-6)
  # Counted from the start of training also with a warm-up of 1 epoch (10 steps).
  t.warmup_epochs = 1.0
  sched = make_schedule(t, 40, 10)
  np.testing.assert_allclose(_values(sched, [0, 5, 10, 14, 15, 23]),
                             [0.0, 0.1, 0.2, 0.2, 0.02, 0.01], rtol=1e-6, atol=1e-9)


def test_cosine_and_constant_and_warmup():
  sched = make_schedule(_train(lr=0.1, schedule="cosine"), 100, 10)
  steps = [0, 25, 50, 75, 100]
  want = [0.05 * (1 + math.cos(math.pi * s / 100)) for s in steps]
  np.testing.assert_allclose(_values(sched, steps), want, rtol=1e-5, atol=1e-8)
  sched = make_schedule(_train(lr=0.3, schedule="constant"), 100, 10)
  np.testing.assert_allclose(_values(sched, [0, 50, 99]), 0.3, rtol=1e-6)
  # 2 warm-up epochs (20 steps) 0 -> lr, then cosine over the remaining 80.
  sched = make_schedule(_train(lr=0.1, schedule="cosine", warmup_epochs=2.0), 100, 10)
  want = [0.0, 0.05, 0.1, 0.05 * (1 + math.cos(math.pi * 40 / 80)), 0.0]
  np.testing.assert_allclose(_values(sched, [0, 10, 20, 60, 100]), want, rtol=1e-5,
                             atol=1e-8)


def _torch_cyclic(k, lr_max, up, down, base_m=None, max_m=None):
  """torch.optim.lr_scheduler.CyclicLR ('triangular', base_lr 0) at iteration k."""
  total = up + down
  cycle = math.floor(1 + k / total)
  x = 1.0 + k / total - cycle
  ratio = up / total
  scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
  if base_m is None:
    return lr_max * scale
  return max_m - (max_m - base_m) * scale


def test_cyclic_default_is_the_official_fast_fgsm_schedule():
  # locuslab/fast_adversarial CIFAR10/train_fgsm.py: lr_max 0.2, 15 epochs of 391
  # batches (odd lr_steps), step_size_up = step_size_down = lr_steps / 2, stepped per
  # iteration; momentum cycled 0.9 -> 0.8 (CyclicLR defaults).
  t = _train(lr=0.2, schedule="cyclic")
  assert t.cyclic_peak == 0.5 and t.cyclic_base_momentum == 0.8
  lr_steps = 15 * 391
  sched = make_schedule(t, lr_steps, 391)
  mom = make_momentum_schedule(t, lr_steps, 391)
  steps = [0, 1, 1000, 2932, 2933, 4000, lr_steps - 1]
  want = [_torch_cyclic(k, 0.2, lr_steps / 2, lr_steps / 2) for k in steps]
  np.testing.assert_allclose(_values(sched, steps), want, rtol=1e-5, atol=1e-7)
  want_m = [_torch_cyclic(k, 0.2, lr_steps / 2, lr_steps / 2, 0.8, 0.9) for k in steps]
  np.testing.assert_allclose(_values(mom, steps), want_m, rtol=1e-5)
  assert float(sched(0)) == 0.0 and max(_values(sched, range(2920, 2945))) < 0.2


def test_cycled_momentum_drives_sgd_like_torch():
  t = _train(lr=0.5, schedule="cyclic", weight_decay=0.01)  # momentum 0.9 -> 0.8.
  n = 7
  p = _params()
  got = _run(make_optimizer(t, n, n), p, n)
  w = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  buf = None
  for k in range(n):  # torch SGD: buf = m * buf + (g + wd w); w -= lr * buf.
    lr = _torch_cyclic(k, 0.5, n / 2, n / 2)
    m = _torch_cyclic(k, 0.5, n / 2, n / 2, 0.8, 0.9)
    g = jax.tree.map(lambda gg, ww: np.asarray(gg, np.float64) + 0.01 * ww, _grads(p, k), w)
    buf = g if buf is None else jax.tree.map(lambda b, gg, m=m: m * b + gg, buf, g)
    w = jax.tree.map(lambda ww, b, lr=lr: ww - lr * b, w, buf)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(w)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, steps_per_epoch, epochs", [
    ("cifar10_pgd_at", 382, None), ("cifar10_trades", 382, 2), ("cifar10_awp", 382, 3),
    ("mnist_pgd_at", 460, None), ("mnist_pgd_at", 461, None)])
def test_local_budget_schedule_is_unchanged(name, steps_per_epoch, epochs):
  # The CPU :local runs (49000 / 128 = 382 and 59000 / 128 = 460 steps per epoch; 2 epochs
  # for the six-student comparison) keep the one-cycle lr peaking at the step nearest to
  # 2/5 of training (as before) and a constant momentum 0.9.
  c = load_config(name, "local")
  t = c.train
  assert (t.schedule, t.cyclic_peak, t.cyclic_base_momentum) == ("cyclic", 0.4, -1.0)
  t.num_epochs = epochs or t.num_epochs
  total = t.num_epochs * steps_per_epoch
  peak = int(round(0.4 * total))
  assert make_momentum_schedule(t, total, steps_per_epoch) is None
  sched = make_schedule(t, total, steps_per_epoch)
  steps = [0, 1, 17, peak - 1, peak, peak + 1, total - 3, total - 1, total]
  want = [t.lr * k / peak if k <= peak else t.lr * (total - k) / (total - peak) for k in steps]
  np.testing.assert_allclose(_values(sched, steps), want, rtol=1e-6, atol=3e-8)  # float32.
  old = optax.join_schedules([optax.linear_schedule(0.0, t.lr, peak),
                              optax.linear_schedule(t.lr, 0.0, total - peak)], [peak])
  all_steps = jnp.arange(total + 1)
  np.testing.assert_array_equal(np.asarray(jax.vmap(sched)(all_steps)),
                                np.asarray(jax.vmap(old)(all_steps)))
  # And the optimiser is the previous SGD chain.
  p = _params()
  want_tx = optax.chain(optax.add_decayed_weights(t.weight_decay),
                        optax.sgd(old, momentum=t.momentum, nesterov=False))
  for a, b in zip(jax.tree.leaves(_run(make_optimizer(t, total, steps_per_epoch), p)),
                  jax.tree.leaves(_run(want_tx, p))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------- errors


def _full(t):
  c = default_config()
  c.unlock()
  c.train = t
  return c


@pytest.mark.parametrize("key, value, match", [
    ("optimizer", "lamb", r"config.train.optimizer='lamb' is unknown.*sgd.*adamw.*adam"),
    ("schedule", "step", r"config.train.schedule='step' is unknown.*piecewise"),
    ("weight_decay_mask", "(", r"config.train.weight_decay_mask.*no_norm_bias"),
    ("clip_by_global_norm", -1.0, r"config.train.clip_by_global_norm"),
    ("betas", (0.9, 1.5), r"config.train.betas"),
    ("cyclic_peak", 1.0, r"config.train.cyclic_peak"),
    ("boundaries_epochs", (100.0,), r"config.train.boundaries_epochs"),
])
def test_bad_optimizer_settings_are_config_errors(key, value, match):
  t = _train(**{key: value})
  with pytest.raises(ConfigError, match=match):
    validate_config(_full(t))


def test_cyclic_momentum_above_the_momentum_is_a_config_error():
  t = _train(schedule="cyclic", momentum=0.0)
  with pytest.raises(ConfigError, match="cyclic_base_momentum.*-1"):
    validate_config(_full(t))
  t.cyclic_base_momentum = -1.0
  validate_config(_full(t))
  with pytest.raises(ConfigError, match="optimizer='lamb'"):
    make_optimizer(_train(optimizer="lamb"), 10, 5)
