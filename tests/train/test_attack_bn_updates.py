"""config.train.attack_bn_updates='official': train-mode attack passes update BatchNorm, as PyTorch.

The running average of every BatchNorm layer after passes on batches b_1..b_n from r_0 is
``m^n r_0 + sum_i m^(n-i) s_i`` where ``s_i = (1 - m) mu_i`` is what ONE pass on b_i does to a
zero running average; the tests compute that closed form and compare it with the trainer's step.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import parallel
from jaxrobust.attacks import attack_from_config, pgd, project, random_init, stochastic
from jaxrobust.data import to_float
from jaxrobust.errors import ConfigError
from jaxrobust.methods import AttackBNUpdates, ModelFns, attack_bn_updates, method_from_config
from jaxrobust.models import create_model
from jaxrobust.train import (create_train_state, default_config, jit_train_step, make_optimizer,
                             make_train_step, split_model, validate_config)

EPS, STEP = 8 / 255, 2 / 255


def _linear(w):
  return lambda v: v.reshape(v.shape[0], -1) @ w


@pytest.mark.parametrize("unroll", [1, None])  # the fori_loop and the straight-line code
def test_pgd_trace_is_the_point_of_every_gradient_evaluation(unroll):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(4, 3, 3, 2)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 0], jnp.int32)
  w = jnp.asarray(rng.normal(size=(18, 3)), jnp.float32)
  key = jax.random.PRNGKey(1)
  x_adv, trace = pgd(_linear(w), key, x, y, eps=EPS, step_size=STEP, num_steps=3,
                     unroll=unroll, return_trace=True)
  assert trace.shape == (3,) + x.shape
  np.testing.assert_array_equal(x_adv, pgd(_linear(w), key, x, y, eps=EPS, step_size=STEP,
                                           num_steps=3, unroll=unroll))
  # By hand: start, then signed CE-gradient steps, each projected.
  ce = lambda v: -jnp.sum(jax.nn.log_softmax(_linear(w)(v))[jnp.arange(4), y])  # noqa: E731
  point = project(x + random_init(key, x, EPS, "linf", "uniform"), x, EPS, "linf")
  for i in range(3):
    np.testing.assert_allclose(trace[i], point, atol=1e-7)
    point = project(point + STEP * jnp.sign(jax.grad(ce)(point)), x, EPS, "linf")
  np.testing.assert_allclose(x_adv, point, atol=1e-7)
  # A KL attack that computes its own reference runs one more pass, on the clean x, first.
  _, kl_trace = pgd(_linear(w), key, x, y, eps=EPS, step_size=STEP, num_steps=2, loss="kl",
                    random_start="normal", return_trace=True)
  assert kl_trace.shape[0] == 3
  np.testing.assert_array_equal(kl_trace[0], x)
  with pytest.raises(ValueError, match="num_restarts"):
    pgd(_linear(w), key, x, y, eps=EPS, step_size=STEP, num_steps=2, num_restarts=2,
        return_trace=True)


def _closed_form(fns, params, r0, passes, m):
  """``m^n r0 + sum_i m^(n-1-i) s_i`` with ``s_i`` one pass on ``passes[i]`` from zeros."""
  zeros = jax.tree.map(jnp.zeros_like, r0)
  out = jax.tree.map(lambda r: m ** len(passes) * r, r0)
  for i, xb in enumerate(passes):
    s_i = fns.apply(params, zeros, xb, train=True)[1]
    out = jax.tree.map(lambda o, s: o + m ** (len(passes) - 1 - i) * s, out, s_i)
  return out


@pytest.mark.parametrize("name,attack,extra", [
    ("pgd_at", dict(name="pgd", eps=EPS, step_size=STEP, num_steps=3), 1),
    ("fgsm_at", dict(name="fgsm", eps=EPS, step_size=10 / 255, random_start="uniform"), 0)])
def test_train_step_running_averages_follow_the_official_pass_sequence(name, attack, extra):
  tx = make_optimizer(default_config().train, 10, 10)
  graphdef, state = create_train_state(create_model("simple_cnn_tiny"), tx, seed=0)
  fns = ModelFns(graphdef)
  m = fns.bn_momentum(state.params, state.batch_stats)
  assert m == pytest.approx(0.9)
  cfg = dict(name=name, attack=attack, attack_bn="train")
  official = method_from_config(cfg, attack_bn_updates="official")
  assert isinstance(official, AttackBNUpdates) and official.extra_passes == extra
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, 8).astype(np.int32)}
  new_state, _ = jax.jit(make_train_step(fns, official, tx))(state, batch)

  # The attack's passes (its trace), attack_pgd's final pass on x_adv (pgd_at), the loss pass.
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0)
  logits_fn = fns.logits_fn(state.params, state.batch_stats, bn="train")
  from jaxrobust.attacks import attack_from_config  # pylint: disable=g-import-not-at-top
  x_adv, trace = attack_from_config(attack)(logits_fn, key, to_float(batch["image"]),
                                             batch["label"], return_trace=True)
  assert trace.shape[0] == attack.get("num_steps", 1)
  passes = list(trace) + [x_adv] * extra + [x_adv]
  want = _closed_form(fns, state.params, state.batch_stats, passes, m)
  for a, b in zip(jax.tree.leaves(new_state.batch_stats), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)

  # The same x_adv as with 'none' (the option), whose running averages see the loss pass only.
  assert isinstance(method_from_config(cfg), AttackBNUpdates)  # 'official' is the default.
  plain = method_from_config(cfg, attack_bn_updates="none")
  assert not isinstance(plain, AttackBNUpdates)
  np.testing.assert_array_equal(
      x_adv, plain.perturb(fns, state.params, state.batch_stats, to_float(batch["image"]),
                           batch["label"], jax.random.fold_in(state.rng, state.step)))
  once, _ = jax.jit(make_train_step(fns, plain, tx))(state, batch)
  want_once = _closed_form(fns, state.params, state.batch_stats, [x_adv], m)
  for a, b, c in zip(jax.tree.leaves(once.batch_stats), jax.tree.leaves(want_once),
                     jax.tree.leaves(new_state.batch_stats)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    assert not np.allclose(np.asarray(a), np.asarray(c))  # the attack passes do count
  # The weights take the same step either way (train-mode logits ignore running averages).
  for a, b in zip(jax.tree.leaves(once.params), jax.tree.leaves(new_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_which_methods_are_wrapped():
  pgd_cfg = dict(name="pgd", eps=EPS, step_size=STEP, num_steps=2)
  kw = dict(attack_bn_updates="official")
  awp = method_from_config(dict(name="awp", attack=pgd_cfg), **kw)
  assert isinstance(awp.base, AttackBNUpdates) and awp.base.extra_passes == 1
  for name in ("ard_distill", "iad"):  # AttackPGD: num_steps passes, then the loss passes.
    m = method_from_config(dict(name=name, attack=pgd_cfg), **kw)
    assert isinstance(m, AttackBNUpdates) and m.extra_passes == 0 and m.name == name
  # Eval-view attacks (model.eval() in the official code) update nothing: not wrapped.
  kl = dict(pgd_cfg, loss="kl", random_start="normal")
  assert not isinstance(method_from_config(dict(name="trades", attack=kl), **kw),
                        AttackBNUpdates)
  assert not isinstance(method_from_config(dict(name="pgd_at", attack=pgd_cfg,
                                                attack_bn="eval"), **kw), AttackBNUpdates)
  with pytest.raises(ConfigError, match="attack_bn_updates"):
    method_from_config(dict(name="pgd_at", attack=pgd_cfg), attack_bn_updates="always")
  c = default_config()
  c.train.attack_bn_updates = "always"
  with pytest.raises(ConfigError, match="config.train.attack_bn_updates='always'"):
    validate_config(c)


def _bn_model():
  graphdef, params, batch_stats = split_model(create_model("simple_cnn_tiny"))
  return ModelFns(graphdef), params, batch_stats


@pytest.mark.parametrize("attack,extra", [
    (dict(name="pgd", eps=EPS, step_size=STEP, num_steps=3, unroll=1), 1),  # fori_loop
    (dict(name="pgd", eps=EPS, step_size=STEP, num_steps=3), 1),  # straight-line code
    (dict(name="pgd", eps=EPS, step_size=STEP, num_steps=3, unroll=2), 0),  # loop + remainder
    (dict(name="pgd", eps=EPS, step_size=STEP, num_steps=2, loss="kl", random_start="normal",
          unroll=1), 0),  # its own reference pass on the clean x comes first
    (dict(name="fgsm", eps=EPS, step_size=10 / 255, random_start="uniform"), 0)])
def test_threaded_running_averages_equal_the_replay_of_the_trace(attack, extra):
  # The attack's own passes carry the running averages (no trace, no pass run twice); the
  # replay runs the attack, stores each pass's input and re-runs one train-mode pass per input.
  fns, params, batch_stats = _bn_model()
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(size=(8, 16, 16, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
  atk = attack_from_config(attack)

  def run(replay):
    fn = lambda p, bs, x, y, k: attack_bn_updates(atk, fns, p, bs, x, y, k,  # noqa: E731
                                                  extra_passes=extra, replay=replay)
    return jax.jit(fn)(params, batch_stats, x, y, jax.random.PRNGKey(2))

  x_adv, threaded = run(False)
  x_rep, replayed = run(True)
  np.testing.assert_array_equal(x_adv, x_rep)  # the same attack, bit for bit
  for a, b, r0 in zip(jax.tree.leaves(threaded), jax.tree.leaves(replayed),
                      jax.tree.leaves(batch_stats)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(a), np.asarray(r0))  # the passes did update them


def test_model_state_needs_one_deterministic_run():
  fns, params, batch_stats = _bn_model()
  x = jnp.zeros((2, 16, 16, 3), jnp.float32)
  y = jnp.zeros((2,), jnp.int32)
  fwd = lambda v, s: fns.apply(params, s, v, train=True)  # noqa: E731
  with pytest.raises(ValueError, match="num_restarts"):
    pgd(fwd, jax.random.PRNGKey(0), x, y, eps=EPS, step_size=STEP, num_steps=2, num_restarts=2,
        model_state=batch_stats)
  noisy = stochastic(lambda v, key: fns.apply(params, batch_stats, v, train=True)[0])
  with pytest.raises(ValueError, match="deterministic"):
    pgd(noisy, jax.random.PRNGKey(0), x, y, eps=EPS, step_size=STEP, num_steps=2,
        model_state=batch_stats)


def _step_pair(num_devices, attack, name):
  """One train step with the threaded and with the replayed running averages."""
  tx = make_optimizer(default_config().train, 10, 10)
  graphdef, state = create_train_state(create_model("simple_cnn_tiny"), tx, seed=0)
  fns = ModelFns(graphdef)
  state = jax.device_get(state)  # host copy: each step gets (and donates) its own
  official = method_from_config(dict(name=name, attack=attack, attack_bn="train"),
                                attack_bn_updates="official")
  mesh = parallel.make_mesh(num_devices)
  rng = np.random.default_rng(0)
  batch = parallel.global_batch({"image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
                                 "label": rng.integers(0, 10, 16).astype(np.int32)}, mesh)
  out = []
  for method in (official, dataclasses.replace(official, replay=True)):
    step = jit_train_step(make_train_step(fns, method, tx), mesh)  # donates its state
    out.append(jax.device_get(step(parallel.replicate(state, mesh), batch)))
  return state, out


@pytest.mark.parametrize("num_devices", [1, 8])
@pytest.mark.parametrize("name,attack", [
    ("pgd_at", dict(name="pgd", eps=EPS, step_size=STEP, num_steps=3, unroll=1)),
    ("fgsm_at", dict(name="fgsm", eps=EPS, step_size=10 / 255, random_start="uniform"))])
def test_train_step_is_unchanged_by_threading_the_running_averages(num_devices, name, attack):
  assert jax.device_count() == 8, "conftest forces 8 CPU devices"
  state, ((s_new, m_new), (s_rep, m_rep)) = _step_pair(num_devices, attack, name)
  np.testing.assert_allclose(m_new["loss"], m_rep["loss"], rtol=1e-6)
  np.testing.assert_array_equal(m_new["adv_accuracy"], m_rep["adv_accuracy"])
  # One SGD step (lr 0.1) from the same weights: the same weights after it, the same gradients.
  for a, b, w0 in zip(jax.tree.leaves(s_new.params), jax.tree.leaves(s_rep.params),
                      jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(a, w0, rtol=0, atol=1e-5)  # the step moved every weight
  for a, b, r0 in zip(jax.tree.leaves(s_new.batch_stats), jax.tree.leaves(s_rep.batch_stats),
                      jax.tree.leaves(state.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(a, r0)


@pytest.mark.parametrize("name,attack", [
    ("pgd_at", dict(name="pgd", eps=EPS, step_size=STEP, num_steps=3, unroll=1)),
    ("fgsm_at", dict(name="fgsm", eps=EPS, step_size=10 / 255, random_start="uniform"))])
def test_loss_gradients_and_running_averages_equal_the_replay(name, attack):
  fns, params, batch_stats = _bn_model()
  official = method_from_config(dict(name=name, attack=attack, attack_bn="train"),
                                attack_bn_updates="official")
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(size=(8, 16, 16, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)

  @functools.partial(jax.jit, static_argnums=1)
  def loss_and_grads(key, replay):
    method = dataclasses.replace(official, replay=replay)
    aux = method.perturb(fns, params, batch_stats, x, y, key)
    return jax.value_and_grad(method.loss, has_aux=True)(params, batch_stats, fns, x, y, aux,
                                                         key)

  key = jax.random.PRNGKey(4)
  (loss, (stats, _)), grads = loss_and_grads(key, False)
  (loss_r, (stats_r, _)), grads_r = loss_and_grads(key, True)
  np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert np.any(np.abs(a) > 1e-4)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_r)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
