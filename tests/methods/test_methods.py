"""Methods on tiny models: BN update sequences, AWP's perturbation and step, teachers, jit."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.losses import iad_loss, trades_loss
from jaxrobust.methods import (ModelFns, TRADES, method_config, method_from_config,
                               num_teachers, relative_weight_perturbation, replay_bn_updates,
                               trades_l2_inner_max, train_passes)
from jaxrobust.models import create_model
from jaxrobust.train import (create_train_state, default_config, make_optimizer, make_train_step,
                             resolve_config)
from jaxrobust.train.state import split_model

# The methods' own passes: the attack passes' BatchNorm updates (the trainer's default,
# 'official') are tested in tests/train/test_attack_bn_updates.py.
OWN_PASSES = dict(attack_bn_updates="none")
PGD = dict(name="pgd", eps=8 / 255, step_size=2 / 255, num_steps=2)
KL = dict(PGD, loss="kl", random_start="normal")
MODEL = "simple_cnn_tiny"  # conv-BN-ReLU x 2, linear: BN and kernels of both kinds.


@functools.lru_cache(maxsize=None)  # eager model init is slow on CPU; arrays are immutable.
def _setup(model=MODEL, seed=0):
  graphdef, params, bs = split_model(create_model(model, seed=seed))
  return ModelFns(graphdef), params, bs


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.random((n, 32, 32, 3)), jnp.float32)
  return x, jnp.asarray(rng.integers(0, 10, n), jnp.int32)


def _close(a, b, **kw):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw)


def _teacher():
  fns, params, bs = _setup(seed=5)
  return fns, {"params": params, "batch_stats": bs}


# --- BatchNorm replay -------------------------------------------------------------


def test_bn_momentum_is_read_from_the_graph():
  fns, params, bs = _setup()
  assert fns.bn_momentum(params, bs) == 0.9
  fns2, p2, b2 = _setup("small_cnn_tiny")  # no BatchNorm
  assert fns2.bn_momentum(p2, b2) is None


@pytest.mark.parametrize("sequence", [("clean", "adv", "clean"), ("adv", "clean", "clean"),
                                      ("adv", "adv", "clean", "clean"), ("adv",)])
def test_replay_equals_running_the_passes_one_after_another(sequence):
  fns, params, bs = _setup("resnet_tiny")
  x, _ = _batch()
  inputs = {"clean": x, "adv": jnp.clip(x + 0.03, 0, 1)}
  key = jax.random.PRNGKey(0)
  logits, stats = train_passes(fns, params, bs, inputs, key)
  replayed = replay_bn_updates(bs, stats, sequence, fns.bn_momentum(params, bs))
  threaded = bs
  for name in sequence:
    out, threaded = fns.apply(params, threaded, inputs[name], train=True)
    np.testing.assert_allclose(out, logits[name], rtol=1e-5, atol=1e-5)  # order-free logits
  _close(replayed, threaded, rtol=1e-5, atol=1e-6)
  assert replay_bn_updates(bs, stats, (), 0.9) is bs


def test_trades_loss_and_official_bn_updates():
  fns, params, bs = _setup()
  x, y = _batch()
  method = method_from_config(dict(name="trades", attack=KL))
  key = jax.random.PRNGKey(3)
  x_adv = method.perturb(fns, params, bs, x, y, key)
  # The inner max uses the eval view: with a constant model the start is kept (clipped).
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 8 / 255 + 1e-6
  loss, (new_bs, metrics) = method.loss(params, bs, fns, x, y, x_adv, key)
  # Official: model(x) [CE], model(x_adv), model(x) [KL target], all in train mode.
  l1, b1 = fns.apply(params, bs, x, train=True)
  l2, b2 = fns.apply(params, b1, x_adv, train=True)
  l3, b3 = fns.apply(params, b2, x, train=True)
  np.testing.assert_allclose(loss, trades_loss(l1, l2, y, beta=6.0), rtol=1e-5)
  np.testing.assert_allclose(l1, l3, rtol=1e-6)
  _close(new_bs, b3, rtol=1e-5, atol=1e-6)
  assert set(metrics) == {"loss", "accuracy", "adv_accuracy"}
  once = TRADES(method.attack, bn_updates="once")
  _close(once.loss(params, bs, fns, x, y, x_adv, key)[1][0], b2, rtol=1e-5, atol=1e-6)


def test_trades_gradient_flows_through_the_clean_branch():
  fns, params, bs = _setup()
  x, y = _batch()
  x_adv = jnp.clip(x + 0.02, 0, 1)
  method = method_from_config(dict(name="trades", attack=KL))
  detached = TRADES(method.attack, detach_clean=True)
  g = jax.grad(lambda p: method.loss(p, bs, fns, x, y, x_adv, jax.random.PRNGKey(0))[0])(params)
  gd = jax.grad(lambda p: detached.loss(p, bs, fns, x, y, x_adv,
                                        jax.random.PRNGKey(0))[0])(params)
  diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g),
                                                         jax.tree.leaves(gd)))
  assert diff > 1e-6


def test_trades_l2_inner_max_stays_in_the_ball_and_handles_zero_gradients():
  fns, params, bs = _setup()
  x, _ = _batch(4)
  x = 0.25 + 0.5 * x  # away from the box edges
  key = jax.random.PRNGKey(1)
  logits_fn = fns.logits_fn(params, bs, bn="eval")
  x_adv = trades_l2_inner_max(logits_fn, key, x, eps=0.5, step_size=0.1, num_steps=3)
  norms = jnp.sqrt(jnp.sum((x_adv - x) ** 2, axis=(1, 2, 3)))
  assert float(norms.max()) <= 0.5 * (1 + 1e-5) and float(norms.min()) > 0.05
  assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
  # A constant model has zero gradient: the official random direction, renormed to eps.
  const = lambda z: jnp.zeros((z.shape[0], 10))  # noqa: E731
  x_c = trades_l2_inner_max(const, key, x, eps=0.5, step_size=0.1, num_steps=2)
  np.testing.assert_allclose(jnp.sqrt(jnp.sum((x_c - x) ** 2, axis=(1, 2, 3))), 0.5,
                             rtol=1e-4)


def test_mart_official_bn_updates():
  fns, params, bs = _setup()
  x, y = _batch()
  method = method_from_config(dict(name="mart", attack=dict(PGD, random_start="normal")))
  assert method.attack_bn == "eval"
  x_adv = jnp.clip(x + 0.02, 0, 1)
  _, (new_bs, _) = method.loss(params, bs, fns, x, y, x_adv, jax.random.PRNGKey(0))
  _, b1 = fns.apply(params, bs, x, train=True)
  _, b2 = fns.apply(params, b1, x_adv, train=True)
  _close(new_bs, b2, rtol=1e-5, atol=1e-6)


# --- AWP --------------------------------------------------------------------------


def _kernel_norms(tree):
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[jax.tree_util.keystr(path)] = float(jnp.linalg.norm(leaf.ravel()))
  return out


@pytest.mark.parametrize("base", ["pgd_at", "trades"])
def test_awp_perturbation_has_the_relative_norm_on_kernels_only(base):
  fns, params, bs = _setup()
  x, y = _batch()
  cfg = dict(name="awp", awp_base=base, attack=KL if base == "trades" else PGD)
  method = method_from_config(cfg, **OWN_PASSES)
  gamma = 0.005 if base == "trades" else 0.01
  assert method.gamma == gamma
  x_adv, v = method.perturb(fns, params, bs, x, y, jax.random.PRNGKey(0))
  assert x_adv.shape == x.shape
  w_norms, v_norms = _kernel_norms(params), _kernel_norms(v)
  kernels = [k for k in w_norms if "kernel" in k]
  assert len(kernels) == 3  # two convs, one linear
  for k, w in w_norms.items():
    if "kernel" in k:
      np.testing.assert_allclose(v_norms[k], gamma * w, rtol=1e-5)
    else:  # BN scale/bias and the linear bias (ndim 1) are never perturbed.
      assert v_norms[k] == 0.0, k


def test_relative_weight_perturbation_direction_and_filter():
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "dense": {"kernel": jnp.ones((4, 2)),
            "bias": jnp.ones((2,))}, "bn": {"scale": jnp.ones((4,))}}
  delta = jax.tree.map(lambda a: 2.0 * jnp.arange(a.size, dtype=jnp.float32).reshape(a.shape),
                       params)
  v = relative_weight_perturbation(params, delta, 0.1)
  d = delta["dense"]["kernel"]
  np.testing.assert_allclose(v["dense"]["kernel"],
                             0.1 * jnp.linalg.norm(params["dense"]["kernel"]) / jnp.linalg.norm(d)
                             * d, rtol=1e-6)
  np.testing.assert_array_equal(v["dense"]["bias"], 0.0)
  np.testing.assert_array_equal(v["bn"]["scale"], 0.0)


@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_awp_step_is_the_gradient_at_the_perturbed_point_applied_to_w(weight_decay):
  fns, params, bs = _setup()
  x, y = _batch()
  graphdef = fns.graphdef
  lr = 0.1
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr))
  method = method_from_config(dict(name="awp", attack=PGD), weight_decay=weight_decay,
                              **OWN_PASSES)
  _, state = create_train_state(create_model(MODEL, seed=0), tx, seed=0)
  new_state, _ = jax.jit(make_train_step(ModelFns(graphdef), method, tx))(
      state, {"image": (x * 255).astype(jnp.uint8), "label": y})
  # Reference: the official perturb -> backprop -> SGD step -> restore.
  from jaxrobust.data import to_float  # pylint: disable=g-import-not-at-top
  xf = to_float((x * 255).astype(jnp.uint8))
  rng = jax.random.fold_in(state.rng, 0)
  x_adv, v = method.perturb(fns, state.params, bs, xf, y, rng, step=state.step)
  w_pert = jax.tree.map(lambda w, d: w + d, state.params, v)
  g = jax.grad(lambda p: method.base.loss(p, bs, fns, xf, y, x_adv, rng)[0])(w_pert)
  stepped = jax.tree.map(lambda w, gi: w - lr * (gi + weight_decay * w), w_pert, g)
  expected = jax.tree.map(lambda w, d: w - d, stepped, v)  # restore: w <- w - v
  _close(new_state.params, expected, rtol=2e-4, atol=2e-6)
  # The perturbation was real (the step differs from plain PGD-AT's).
  g0 = jax.grad(lambda p: method.base.loss(p, bs, fns, xf, y, x_adv, rng)[0])(state.params)
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g),
                                                         jax.tree.leaves(g0))) > 1e-6
  # Running averages come from the pass at the perturbed weights.
  _, bs_pert = fns.apply(w_pert, bs, x_adv, train=True, key=jax.random.fold_in(rng, 1))
  _close(new_state.batch_stats, bs_pert, rtol=1e-5, atol=1e-6)


def test_awp_warmup_and_gamma_zero_leave_the_base_method():
  fns, params, bs = _setup()
  x, y = _batch()
  method = method_from_config(dict(name="awp", awp_base="trades", attack=KL),
                              steps_per_epoch=10)
  assert method.warmup_steps == 90  # official TRADES-AWP: AWP from (1-indexed) epoch 10.
  key = jax.random.PRNGKey(0)
  _, v = method.perturb(fns, params, bs, x, y, key, step=jnp.int32(89))
  assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(v))
  _, v = method.perturb(fns, params, bs, x, y, key, step=jnp.int32(90))
  assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(v)) > 0
  off = method_from_config(dict(name="awp", attack=PGD, awp_gamma=0.0))
  _, v = off.perturb(fns, params, bs, x, y, key)
  assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(v))
  unresolved = method_from_config(dict(name="awp", awp_base="trades", attack=KL))
  with pytest.raises(ValueError, match="steps_per_epoch"):
    unresolved.perturb(fns, params, bs, x, y, key, step=jnp.int32(0))


# --- Distillation -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["ard_distill", "iad", "rslad"])
def test_teacher_receives_no_gradient_and_runs_in_eval_mode(name):
  fns, params, bs = _setup()
  tfns, frozen = _teacher()
  x, y = _batch()
  attack = KL if name == "rslad" else PGD
  method = method_from_config(dict(name=name, attack=attack), teachers=(tfns,))
  key = jax.random.PRNGKey(0)
  aux = method.perturb(fns, params, bs, x, y, key, frozen=frozen)

  def loss_of(f):
    return method.loss(params, bs, fns, x, y, aux, key, frozen=f)[0]

  g = jax.grad(loss_of)(frozen)
  assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g))
  # Eval mode: the teacher's logits of one example do not depend on the rest of the batch.
  from jaxrobust.methods.distill import teacher_logits  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(teacher_logits(tfns, frozen, x)[:1],
                             teacher_logits(tfns, frozen, x[:1]), rtol=1e-5, atol=1e-6)
  gs = jax.grad(lambda p: method.loss(p, bs, fns, x, y, aux, key, frozen=frozen)[0])(params)
  assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(gs)) > 0


def test_distillation_without_teacher_fails_clearly():
  fns, params, bs = _setup()
  x, y = _batch()
  method = method_from_config(dict(name="ard_distill", attack=PGD), **OWN_PASSES)
  with pytest.raises(ValueError, match="no teacher"):
    method.loss(params, bs, fns, x, y, x, jax.random.PRNGKey(0))


def test_ard_official_passes_and_alpha_one():
  fns, params, bs = _setup()
  tfns, frozen = _teacher()
  x, y = _batch()
  x_adv = jnp.clip(x - 0.02, 0, 1)
  method = method_from_config(dict(name="ard_distill", attack=PGD), teachers=(tfns,),
                              **OWN_PASSES)
  assert (method.temperature, method.alpha, method.kl_reduction) == (30.0, 1.0, "mean")
  _, (new_bs, m) = method.loss(params, bs, fns, x, y, x_adv, jax.random.PRNGKey(0),
                               frozen=frozen)
  _, b1 = fns.apply(params, bs, x_adv, train=True)
  _, b2 = fns.apply(params, b1, x, train=True)  # the (1 - alpha) CE pass runs anyway
  _close(new_bs, b2, rtol=1e-5, atol=1e-6)
  once = method_from_config(dict(name="ard_distill", attack=PGD, bn_updates="once"),
                            teachers=(tfns,), **OWN_PASSES)
  _, (bs_once, m_once) = once.loss(params, bs, fns, x, y, x_adv, jax.random.PRNGKey(0),
                                   frozen=frozen)
  _close(bs_once, b1, rtol=1e-5, atol=1e-6)
  assert "accuracy" in m and "accuracy" not in m_once
  np.testing.assert_allclose(m["loss"], m_once["loss"], rtol=1e-6)


@pytest.mark.parametrize("two", [False, True])
def test_iad_begin_switches_loss_and_bn_sequence(two):
  fns, params, bs = _setup()
  tfns, frozen = _teacher()
  nfns, nat = _teacher()
  frozen = dict(frozen, natural=nat) if two else frozen
  x, y = _batch()
  x_adv = jnp.clip(x + 0.02, 0, 1)
  cfg = dict(name="iad", attack=PGD, iad_begin_epochs=2, teacher2_workdir="n" if two else "")
  assert num_teachers(cfg) == (2 if two else 1)
  method = method_from_config(cfg, steps_per_epoch=5, teachers=(tfns, nfns)[:1 + two],
                              **OWN_PASSES)
  assert method.begin_step == 10
  key = jax.random.PRNGKey(0)
  logits, _ = train_passes(fns, params, bs, {"adv": x_adv, "clean": x}, key)
  t_adv = tfns.apply(frozen["params"], frozen["batch_stats"], x_adv, train=False)[0]
  t_clean = tfns.apply(frozen["params"], frozen["batch_stats"], x, train=False)[0]
  _, b_adv = fns.apply(params, bs, x_adv, train=True)
  _, b_adv2 = fns.apply(params, b_adv, x_adv, train=True)
  for step, intro in ((9, False), (10, True)):
    loss, (new_bs, _) = method.loss(params, bs, fns, x, y, x_adv, key, frozen=frozen,
                                    step=jnp.int32(step))
    if two:
      n_adv = nfns.apply(nat["params"], nat["batch_stats"], x_adv, train=False)[0]
      want = iad_loss(logits["adv"], logits["clean"], t_adv, t_adv, y, introspect=intro,
                      natural_teacher_logits=n_adv)
      seq = [x_adv, x] if intro else [x_adv]
      ref = bs
    else:
      want = iad_loss(logits["adv"], logits["clean"], t_clean, t_adv, y, introspect=intro)
      seq = [x, x] if intro else [x]
      ref = b_adv2
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for inp in seq:
      _, ref = fns.apply(params, ref, inp, train=True)
    _close(new_bs, ref, rtol=1e-5, atol=1e-6)
  unresolved = method_from_config(cfg, teachers=(tfns, nfns)[:1 + two], **OWN_PASSES)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    unresolved.loss(params, bs, fns, x, y, x_adv, key, frozen=frozen, step=jnp.int32(0))


def test_rslad_attack_targets_the_teacher_and_returns_its_logits():
  fns, params, bs = _setup()
  tfns, frozen = _teacher()
  x, y = _batch()
  method = method_from_config(dict(name="rslad", attack=KL), teachers=(tfns,))
  assert method.attack_bn == "eval" and abs(method.alpha - 5 / 6) < 1e-12
  x_adv, t_clean = method.perturb(fns, params, bs, x, y, jax.random.PRNGKey(0), frozen=frozen)
  np.testing.assert_allclose(t_clean, tfns.apply(frozen["params"], frozen["batch_stats"], x,
                                                 train=False)[0], rtol=1e-6)
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 8 / 255 + 1e-6
  assert float(jnp.max(jnp.abs(x_adv - x))) > 4 / 255  # two steps of 2/255 were taken


# --- Config errors ----------------------------------------------------------------


def test_config_errors():
  with pytest.raises(ConfigError, match="loss='kl'"):
    method_from_config(dict(name="trades", attack=PGD))
  with pytest.raises(ConfigError, match="loss='kl'"):
    method_from_config(dict(name="awp", awp_base="trades", attack=PGD))
  with pytest.raises(ConfigError, match="kl_reduction"):
    method_from_config(dict(name="ard_distill", attack=PGD, kl_reduction="avg"))
  with pytest.raises(ConfigError, match="awp_base"):
    method_from_config(dict(name="awp", attack=PGD, awp_base="mart"))
  with pytest.raises(ConfigError, match="alpha"):
    method_from_config(dict(name="rslad", attack=KL, alpha=2.0))
  with pytest.raises(ConfigError, match="trades_l2"):
    method_from_config(dict(name="trades", attack=dict(name="trades_l2", eps=0.5)))
  assert num_teachers(dict(name="trades")) == 0
  assert num_teachers(dict(name="rslad")) == 1
  # A method's config section holds its official values; unset keys take them too.
  c = default_config("ard_distill")
  assert (c.method.temperature, c.method.alpha, c.method.kl_reduction) == (30.0, 1.0, "mean")
  m = method_from_config(resolve_config(c).method)
  assert (m.temperature, m.alpha, m.kl_reduction) == (30.0, 1.0, "mean")
  m = method_from_config(dict(name="ard_distill", attack=PGD))
  assert (m.temperature, m.alpha, m.kl_reduction) == (30.0, 1.0, "mean")
  # A key that is not a setting of the method is refused, naming the valid ones.
  with pytest.raises(ConfigError, match=r"not settings of method 'pgd_at'.*attack_bn"):
    method_from_config(dict(name="pgd_at", attack=PGD, beta=6.0))
  with pytest.raises(ConfigError, match="awp_gamma"):
    method_config("trades", awp_gamma=0.1)
  with pytest.raises(ConfigError, match="unknown method 'nope'"):
    method_config("nope")
  with pytest.raises(ConfigError, match="eps is unset"):
    method_from_config(default_config().method)  # the threat model is filled by resolve_config


def test_awp_official_settings_depend_on_the_base():
  at, tr = method_config("awp"), method_config("awp", awp_base="trades")
  assert (at.awp_gamma, at.awp_warmup_epochs, at.proxy_lr, at.attack_bn) == (
      0.01, 0.0, 0.01, "train")
  assert (tr.awp_gamma, tr.awp_warmup_epochs, tr.proxy_lr, tr.attack_bn, tr.beta,
          tr.kl_reduction) == (0.005, 9.0, 0.1, "eval", 6.0, "batchmean")
  assert "beta" not in at and tr.attack.loss == "kl" and at.attack.loss == "ce"
  m = method_from_config(dict(tr.to_dict(), attack=KL), steps_per_epoch=10)
  assert isinstance(m.base, TRADES) and m.base.bn_sequence == ("adv", "clean", "clean")
  assert (m.gamma, m.proxy_lr, m.warmup_steps) == (0.005, 0.1, 90)
  assert method_config("iad", teacher2_workdir="n").iad_begin_epochs == 40.0
  assert method_config("iad").iad_begin_epochs == 60.0


# --- Every method under jit -------------------------------------------------------

CONFIGS = {
    "trades": dict(name="trades", attack=KL),
    "trades_l2": dict(name="trades", attack=dict(name="trades_l2", eps=0.5, step_size=0.1,
                                                 num_steps=2)),
    "mart": dict(name="mart", attack=dict(PGD, random_start="normal")),
    "awp_at": dict(name="awp", attack=PGD),
    "awp_trades": dict(name="awp", awp_base="trades", attack=KL, awp_warmup_epochs=0.1),
    "ard_distill": dict(name="ard_distill", attack=PGD),
    "iad": dict(name="iad", attack=PGD, iad_begin_epochs=0.1),
    "iad2": dict(name="iad", attack=PGD, iad_begin_epochs=0.1, teacher2_workdir="n"),
    "rslad": dict(name="rslad", attack=KL),
}


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_train_step_runs_under_jit(key):
  cfg = CONFIGS[key]
  tx = make_optimizer(default_config().train, 10, 10)
  tfns, frozen = _teacher()
  n = num_teachers(cfg)
  if n == 2:
    frozen = dict(frozen, natural=_teacher()[1])
  graphdef, state = create_train_state(create_model(MODEL), tx, seed=0,
                                       frozen=frozen if n else None)
  method = method_from_config(cfg, steps_per_epoch=10, teachers=(tfns,) * n)
  inner, traces = make_train_step(ModelFns(graphdef), method, tx), []

  def counted(s, b):
    traces.append(1)
    return inner(s, b)

  step = jax.jit(counted)
  x, y = _batch()
  batch = {"image": (x * 255).astype(jnp.uint8), "label": y}
  p0 = jax.tree.map(jnp.copy, state.params)
  for _ in range(2):  # step 1 crosses the 0.1-epoch switches (IAD begin, AWP warm-up).
    state, metrics = step(state, batch)
  assert int(state.step) == 2 and len(traces) == 1  # the step counter is traced, not static
  assert float(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss"]))
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p0),
                                                   jax.tree.leaves(state.params)))
  if n:  # the teacher passes through the step untouched
    _close(state.frozen, frozen, rtol=0, atol=0)


def _has_loop(fn, *args) -> bool:
  """Whether ``fn`` traces to a loop (``fori_loop`` with static bounds is a ``scan``)."""
  jaxpr = str(jax.make_jaxpr(fn)(*args))
  return "scan[" in jaxpr or "while[" in jaxpr


@pytest.mark.parametrize("name,attack", [("pgd_at", PGD), ("trades", KL)])
def test_training_attack_runs_its_loop_unrolled_train_unroll_times(name, attack):
  # config.method.attack.unroll unset: TRAIN_UNROLL (1, a fori_loop) in the train step, where
  # the standalone attack would run straight-line code on CPU; an explicit unroll wins.
  from jaxrobust.methods.registry import TRAIN_UNROLL  # pylint: disable=g-import-not-at-top
  assert TRAIN_UNROLL == 1
  fns, params, bs = _setup()
  x, y = _batch(4)
  attack = dict(attack, num_steps=3)

  def perturb(cfg):
    method = method_from_config(dict(name=name, attack=cfg), **OWN_PASSES)
    return lambda p, b, x, y, k: method.perturb(fns, p, b, x, y, k)

  args = (params, bs, x, y, jax.random.PRNGKey(0))
  assert _has_loop(perturb(attack), *args)
  assert not _has_loop(perturb(dict(attack, unroll=3)), *args)
  official = method_from_config(dict(name="pgd_at", attack=attack), attack_bn_updates="official")
  assert _has_loop(lambda *a: official.perturb(fns, *a), *args)  # the threaded BN passes too
