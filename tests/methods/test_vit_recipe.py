"""Mo et al.'s ViT recipe: the r(t) schedule, ARD inside the attack only, the jitted train step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import is_stochastic, pgd, pgd_prm
from jaxrobust.data.mixup import MixupSettings, mixup_cutmix
from jaxrobust.errors import ConfigError
from jaxrobust.losses import mart_loss, trades_loss
from jaxrobust.methods import ModelFns, method_config, method_from_config
from jaxrobust.methods.adversarial import AdversarialTraining
from jaxrobust.methods.vit_recipe import (ViTAdversarialTraining,
                                          attention_random_drop_logits_fn, eps_warmup,
                                          mo_keep_prob)
from jaxrobust.models import create_model
from jaxrobust.train import create_train_state, default_config, make_optimizer, make_train_step
from jaxrobust.train.state import split_model

TINY = dict(image_size=16, patch_size=4, width=16, depth=2, num_heads=2)
EPS, ALPHA = 8 / 255, 2 / 255


@functools.lru_cache(maxsize=None)
def _setup(seed=0):
  graphdef, params, bs = split_model(create_model("vit_cifar_tiny", seed=seed, **TINY))
  return ModelFns(graphdef), params, bs


def _batch(n=4, seed=0, size=16):
  gen = np.random.default_rng(seed)
  return (jnp.asarray(gen.uniform(size=(n, size, size, 3)), jnp.float32),
          jnp.asarray(gen.integers(0, 10, n), jnp.int32))


def test_keep_prob_schedule_at_fractional_epochs():
  # t = (step + 1) / steps_per_epoch (official epoch_now); r = min(t / n_w, 1) * keep_final.
  spe = 100
  for step, want in ((0, 0.001), (49, 0.05), (499, 0.5), (998, 0.999), (999, 1.0),
                     (5000, 1.0)):
    np.testing.assert_allclose(float(mo_keep_prob(step, spe, 10.0, 1.0)), want, rtol=1e-6)
  np.testing.assert_allclose(float(mo_keep_prob(199, spe, 2.0, 0.8)), 0.8, rtol=1e-6)
  np.testing.assert_allclose(float(mo_keep_prob(99, spe, 2.0, 0.8)), 0.4, rtol=1e-6)
  assert float(mo_keep_prob(0, spe, 0.0, 0.7)) == np.float32(0.7)
  traced = jax.jit(lambda s: mo_keep_prob(s, spe))(jnp.int32(499))
  np.testing.assert_allclose(float(traced), 0.5, rtol=1e-6)


def test_ard_logits_fn_values_and_its_keep_prob_limits():
  fns, params, bs = _setup()
  x, y = _batch()
  plain = fns.logits_fn(params, bs)
  key = jax.random.PRNGKey(3)
  for r in (0.0, 0.5, 1.0):
    ard = attention_random_drop_logits_fn(fns, params, bs, r)
    assert is_stochastic(ard)
    np.testing.assert_array_equal(np.asarray(ard(x, key)), np.asarray(plain(x)))
  # r = 1: every block kept, so PGD through the ARD logits is PGD on the plain model, bit for bit.
  ard = attention_random_drop_logits_fn(fns, params, bs, 1.0)
  kw = dict(eps=EPS, step_size=ALPHA, num_steps=2)
  np.testing.assert_array_equal(np.asarray(pgd(ard, key, x, y, **kw)),
                                np.asarray(pgd(plain, key, x, y, **kw)))
  # r = 0: every attention branch cut: no input gradient reaches the image (class-token
  # pooling; sign(0) = 0, PGD stays at its random start).
  ard0 = attention_random_drop_logits_fn(fns, params, bs, 0.0)
  g = jax.grad(lambda xx: jnp.sum(ard0(xx, key)[:, 0]))(x)
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_ard_needs_a_vit():
  graphdef, params, bs = split_model(create_model("simple_cnn_tiny"))
  with pytest.raises(ConfigError, match="needs a Vision Transformer"):
    attention_random_drop_logits_fn(ModelFns(graphdef), params, bs, 0.5)


def _method(**over):
  cfg = method_config("vit_pgd_at", **over).to_dict()
  cfg["attack"].update(eps=EPS, norm="linf", num_steps=2)
  return method_from_config(cfg, steps_per_epoch=10)


def test_parameter_gradient_does_not_depend_on_ard_or_prm():
  fns, params, bs = _setup()
  x, y = _batch()
  x_adv = jnp.clip(x + 0.01, 0, 1)
  rng = jax.random.PRNGKey(1)
  plain = AdversarialTraining(attack=None, attack_bn="eval")
  want = jax.grad(lambda p: plain.loss(p, bs, fns, x, y, x_adv, rng)[0])(params)
  for over in (dict(), dict(attention_random_drop=False), dict(keep_final=0.3),
               dict(attack=dict(name="pgd", step_size=ALPHA, num_steps=2))):
    method = _method(**over)
    assert isinstance(method, ViTAdversarialTraining)
    got = jax.grad(lambda p: method.loss(p, bs, fns, x, y, x_adv, rng, step=jnp.int32(3))[0])(
        params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_perturb_uses_the_schedule_for_prm_and_ard():
  fns, params, bs = _setup()
  x, y = _batch()
  rng = jax.random.PRNGKey(2)
  method = _method(attention_random_drop=False, warmup_epochs=1.0,  # spe 10: r = (s+1)/10
                   mixup_prob=0.0)
  step = jnp.int32(4)  # r = 0.5
  got = method.perturb(fns, params, bs, x, y, rng, step=step)
  want = pgd_prm(fns.logits_fn(params, bs), jax.random.fold_in(rng, 0), x, y, eps=EPS,
                 step_size=ALPHA, num_steps=2, patch_size=4, keep_prob=0.5, loss="ce",
                 random_start="uniform", norm="linf", prm_mode="faithful")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-7)
  assert float(method.keep_prob(None)) == 1.0  # outside the trainer: schedule fully active


def test_config_errors():
  with pytest.raises(ConfigError, match="keep_prob is set by the method"):
    _method(attack=dict(name="pgd_prm", step_size=ALPHA, num_steps=2, keep_prob=0.5))
  with pytest.raises(ConfigError, match="keep_final"):
    _method(keep_final=1.5)
  with pytest.raises(ConfigError, match="attack.name"):
    _method(attack=dict(name="fgsm", step_size=ALPHA))
  # PRM's mask grid must be the model's patch grid (TINY: patch 4).
  fns, params, bs = _setup()
  x, y = _batch()
  method = _method(attack=dict(name="pgd_prm", step_size=ALPHA, num_steps=1, patch_size=8))
  with pytest.raises(ConfigError, match="patch_size=8 masks another grid"):
    method.perturb(fns, params, bs, x, y, jax.random.PRNGKey(0))


def test_train_step_of_vit_cifar_tiny_runs_under_jit():
  tx = make_optimizer(default_config().train, 10, 10)
  graphdef, state = create_train_state(create_model("vit_cifar_tiny"), tx, seed=0)
  method = _method()
  step = jax.jit(make_train_step(ModelFns(graphdef), method, tx))
  x, y = _batch(n=4, size=32)
  batch = {"image": (x * 255).astype(jnp.uint8), "label": y}
  p0 = jax.tree.map(jnp.copy, state.params)
  state, metrics = step(state, batch)
  assert int(state.step) == 1 and float(metrics["nonfinite"]) == 0
  assert np.isfinite(float(metrics["loss"]))
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p0),
                                                   jax.tree.leaves(state.params)))


def test_eps_warmup_is_the_hand_schedule():
  # Debenedetti et al.'s linear schedule: eps * e / n in 0-based epoch e < n, then eps.
  spe, n = 10, 4
  hand = {0: 0.0, 9: 0.0, 10: 0.25, 19: 0.25, 20: 0.5, 35: 0.75, 39: 0.75, 40: 1.0, 400: 1.0}
  for step, frac in hand.items():
    np.testing.assert_allclose(float(eps_warmup(step, spe, EPS, n)), frac * EPS, rtol=1e-6)
  traced = jax.jit(lambda s: eps_warmup(s, spe, EPS, n))(jnp.int32(25))
  np.testing.assert_allclose(float(traced), 0.5 * EPS, rtol=1e-6)
  method = _method(eps_warmup_epochs=4.0)  # steps_per_epoch 10
  np.testing.assert_allclose(float(method.attack_eps(jnp.int32(25))), 0.5 * EPS, rtol=1e-6)
  assert method.attack_eps(None) == EPS  # outside the trainer: the full budget
  assert _method().attack_eps(jnp.int32(0)) == EPS  # off (Mo et al.'s default): fixed eps


def test_perturb_runs_at_the_warmed_up_eps_under_jit():
  fns, params, bs = _setup()
  x, y = _batch()
  rng = jax.random.PRNGKey(4)
  with_prm = _method(attention_random_drop=False, warmup_epochs=0.0, eps_warmup_epochs=4.0,
                     mixup_prob=0.0)
  plain = _method(attention_random_drop=False, eps_warmup_epochs=4.0, mixup_prob=0.0,
                  attack=dict(name="pgd", step_size=ALPHA, num_steps=2))
  f, key = fns.logits_fn(params, bs), jax.random.fold_in(rng, 0)

  @jax.jit
  def run(step):  # one compile: both methods and the direct calls at eps / 2.
    half = jnp.float32(0.5 * EPS)
    return (with_prm.perturb(fns, params, bs, x, y, rng, step=step),
            plain.perturb(fns, params, bs, x, y, rng, step=step),
            pgd_prm(f, key, x, y, eps=half, step_size=ALPHA, num_steps=2, patch_size=4),
            pgd(f, key, x, y, eps=half, step_size=ALPHA, num_steps=2))

  # Epoch 0: eps 0, the attack cannot move (clean training), with or without PRM.
  for got in run(jnp.int32(3))[:2]:
    np.testing.assert_array_equal(np.asarray(got), np.asarray(x))
  # Epoch 2 (step 25): eps / 2, as direct calls of the attacks at that eps.
  got_prm, got_plain, want_prm, want_plain = run(jnp.int32(25))
  np.testing.assert_allclose(np.asarray(got_prm), np.asarray(want_prm), rtol=0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(got_plain), np.asarray(want_plain), rtol=0, atol=1e-7)
  dist = float(jnp.max(jnp.abs(got_prm - x)))
  assert 0.5 * EPS - 1e-3 < dist <= 0.5 * EPS + 1e-6


def test_mixup_before_the_attack_and_soft_target_ce():
  # Official AT branch: mix the clean batch, attack the soft-target CE, train on it.
  fns, params, bs = _setup()
  x, y = _batch()
  rng = jax.random.PRNGKey(7)
  always = dict(attention_random_drop=False, warmup_epochs=0.0, mixup_prob=1.0)
  method = _method(**always)
  assert method.mixup == MixupSettings(0.8, 1.0, 1.0, 0.5, 0.0)
  assert _method(mixup_prob=0.0).mixup is None and _method().mixup.prob == 0.3
  f = fns.logits_fn(params, bs)

  @jax.jit
  def run():
    out = method.perturb(fns, params, bs, x, y, rng, step=jnp.int32(5))
    x_mix, targets, lam = mixup_cutmix(jax.random.fold_in(rng, 2), x, y, 10, method.mixup)
    want = pgd_prm(f, jax.random.fold_in(rng, 0), x_mix, targets, eps=EPS, step_size=ALPHA,
                   num_steps=2, patch_size=4)
    loss, (_, sums) = method.loss(params, bs, fns, x, y, out, rng)
    return out, want, targets, lam, loss, sums, f(out["x_adv"])

  out, want, targets, lam, loss, sums, logits = run()
  assert float(lam) < 1.0
  np.testing.assert_array_equal(np.asarray(out["targets"]), np.asarray(targets))
  np.testing.assert_allclose(np.asarray(out["x_adv"]), np.asarray(want), rtol=0, atol=1e-7)
  logp = np.asarray(jax.nn.log_softmax(logits))  # the ViT has one view: eval = train logits
  hand = -np.mean(np.sum(np.asarray(targets) * logp, axis=1))
  np.testing.assert_allclose(float(loss), hand, rtol=1e-5)
  assert float(sums["adv_accuracy"]) == float(np.sum(logp.argmax(1) == np.asarray(
      targets).argmax(1)))
  with pytest.raises(ConfigError, match="mixup_prob must be in"):
    _method(mixup_prob=1.5)


def _vit_method(name, **over):
  cfg = method_config(name, **over).to_dict()
  cfg["attack"].update(eps=EPS, norm="linf", num_steps=2)
  return method_from_config(cfg, steps_per_epoch=10)


@pytest.mark.parametrize("name", ["vit_trades", "vit_mart"])
def test_trades_and_mart_of_a_vit_one_train_step(name):
  # The official --method TRADES / MART branches: the ARD / PRM inner max (TRADES: KL to the
  # clean output; MART: CE; both from x + 0.001 N(0, 1)), the method's own outer loss.
  method = _vit_method(name)
  assert method.prm and method.attention_random_drop and method.mixup is None
  assert method.objective.beta == 6.0 and method.objective.attack is None
  model = create_model("vit_cifar_tiny", depth=2, width=32, num_heads=2)
  tx = make_optimizer(default_config().train, 10, 10)
  graphdef, state = create_train_state(model, tx, seed=0)
  fns = ModelFns(graphdef)
  x, y = _batch(n=4, size=32)
  batch = {"image": (x * 255).astype(jnp.uint8), "label": y}
  x = batch["image"].astype(jnp.float32) / 255.0
  rng = jax.random.PRNGKey(5)
  plain = _vit_method(name, attention_random_drop=False, warmup_epochs=1.0)  # spe 10
  kl = name == "vit_trades"

  @jax.jit
  def run(state):
    p, bs = state.params, state.batch_stats
    f = fns.logits_fn(p, bs)
    x_adv = plain.perturb(fns, p, bs, x, y, rng, step=jnp.int32(4))  # r = 0.5
    want = pgd_prm(f, jax.random.fold_in(rng, 0), x, y, eps=EPS, step_size=ALPHA, num_steps=2,
                   patch_size=4, keep_prob=0.5, loss="kl" if kl else "ce",
                   random_start="normal")
    loss, _ = method.loss(p, bs, fns, x, y, x_adv, rng)
    ref = (trades_loss(f(x), f(x_adv), y, beta=6.0) if kl
           else mart_loss(f(x), f(x_adv), y, beta=6.0))
    new_state, metrics = make_train_step(fns, method, tx)(state, batch)
    return x_adv, want, loss, ref, new_state, metrics

  p0 = jax.tree.map(jnp.copy, state.params)
  x_adv, want, loss, ref, state, metrics = run(state)
  np.testing.assert_allclose(np.asarray(x_adv), np.asarray(want), rtol=0, atol=1e-7)
  assert float(jnp.max(jnp.abs(x_adv - x))) <= EPS + 1e-6
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  assert int(state.step) == 1 and float(metrics["nonfinite"]) == 0
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p0),
                                                   jax.tree.leaves(state.params)))


def test_trades_needs_the_kl_inner_max_and_no_mixup():
  with pytest.raises(ConfigError, match="loss='kl'"):
    _vit_method("vit_trades", attack=dict(name="pgd_prm", step_size=ALPHA, num_steps=2,
                                          loss="ce", patch_size=4))
  with pytest.raises(ConfigError, match="not settings of method 'vit_mart'"):
    method_config("vit_mart", mixup_prob=0.3)
