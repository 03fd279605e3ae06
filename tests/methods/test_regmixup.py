"""RegMixup: the 2B batch, the lambda draw, the loss against a NumPy hand computation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.methods import ModelFns, method_config, method_from_config
from jaxrobust.methods.regmixup import MIX_KEY, regmixup_batch, regmixup_loss
from jaxrobust.models import create_model
from jaxrobust.train import create_train_state, make_train_step
from jaxrobust.train.state import split_model

MODEL = "simple_cnn_tiny"
PGD = dict(name="pgd", eps=8 / 255, step_size=2 / 255, num_steps=2, random_start="uniform")


@functools.lru_cache(maxsize=None)
def _setup():
  graphdef, params, bs = split_model(create_model(MODEL, seed=0))
  return ModelFns(graphdef), params, bs


def _batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.random((n, 32, 32, 3)), jnp.float32),
          jnp.asarray(rng.integers(0, 10, n), jnp.int32))


def test_batch_is_clean_rows_then_their_mixup_with_a_permuted_partner():
  x, y = _batch()
  x2, y_a, y_b, lam = regmixup_batch(jax.random.PRNGKey(3), x, y, 20.0, 20.0)
  x2, y_a, y_b, lam, xn, yn = map(np.asarray, (x2, y_a, y_b, lam, x, y))
  assert x2.shape == (16, 32, 32, 3) and 0 < lam < 1
  np.testing.assert_array_equal(x2[:8], xn)
  np.testing.assert_array_equal(y_a, np.concatenate([yn, yn]))
  np.testing.assert_array_equal(y_b[:8], yn)
  # Each mixed row is lam * x_i + (1 - lam) * x_j for a permutation j(i), y_b = y[j].
  partners = []
  for i in range(8):
    errs = [np.abs(x2[8 + i] - (lam * xn[i] + (1 - lam) * xn[j])).max() for j in range(8)]
    j = int(np.argmin(errs))
    assert errs[j] < 1e-6
    partners.append(j)
    assert y_b[8 + i] == yn[j]
  assert sorted(partners) == list(range(8))


def test_lambda_is_beta_distributed_and_alpha_zero_is_plain_ce():
  x, y = _batch(4)
  draw = jax.jit(jax.vmap(lambda k: regmixup_batch(k, x, y, 20.0, 20.0)[3]))
  lams = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 4000)))
  # Beta(20, 20): mean 1/2, variance a b / ((a + b)^2 (a + b + 1)) = 1 / 164.
  assert abs(lams.mean() - 0.5) < 0.005
  assert lams.var() == pytest.approx(1 / 164, rel=0.1)
  lams = np.asarray(jax.vmap(lambda k: regmixup_batch(k, x, y, 2.0, 5.0)[3])(
      jax.random.split(jax.random.PRNGKey(1), 4000)))
  assert abs(lams.mean() - 2 / 7) < 0.01  # Beta(alpha, beta) mean alpha / (alpha + beta).
  x2, _, _, lam = regmixup_batch(jax.random.PRNGKey(0), x, y, 0.0, 0.0)
  assert float(lam) == 1.0
  np.testing.assert_array_equal(np.asarray(x2[4:]), np.asarray(x))


def _np_ce(logits, y):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(y)), y]


@pytest.mark.parametrize("eta", [1.0, 0.5, 2.0])
def test_loss_equals_the_official_criterion_by_hand(eta):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(12, 10)).astype(np.float32) * 3
  y = rng.integers(0, 10, 6)
  perm = rng.permutation(6)
  y_a, y_b, lam = np.concatenate([y, y]), np.concatenate([y, y[perm]]), 0.3
  got = float(regmixup_loss(jnp.asarray(logits), jnp.asarray(y_a), jnp.asarray(y_b),
                            jnp.float32(lam), eta))
  ce_clean = _np_ce(logits[:6], y).mean()
  ce_mix = (lam * _np_ce(logits[6:], y) + (1 - lam) * _np_ce(logits[6:], y[perm])).mean()
  assert got == pytest.approx((ce_clean + eta * ce_mix) / 2, rel=1e-5)
  if eta == 1.0:  # the official one CE over 2B: lam CE(., y_a) + (1 - lam) CE(., y_b).
    official = lam * _np_ce(logits, y_a).mean() + (1 - lam) * _np_ce(logits, y_b).mean()
    assert got == pytest.approx(official, rel=1e-5)


@pytest.mark.parametrize("name", ["regmixup", "regmixup_at"])
def test_method_loss_is_one_train_pass_over_the_2b_batch(name):
  fns, params, bs = _setup()
  x, y = _batch()
  cfg = dict(name=name) if name == "regmixup" else dict(name=name, attack=PGD)
  method = method_from_config(cfg)
  rng = jax.random.PRNGKey(7)
  x_train = method.perturb(fns, params, bs, x, y, rng)
  if name == "regmixup":
    assert x_train is x
  else:
    assert float(jnp.max(jnp.abs(x_train - x))) <= 8 / 255 + 1e-6
    assert float(jnp.max(jnp.abs(x_train - x))) > 0
  loss, (new_bs, sums) = method.loss(params, bs, fns, x, y, x_train, rng)
  x2, y_a, y_b, lam = regmixup_batch(jax.random.fold_in(rng, MIX_KEY), x_train, y, 20.0, 20.0)
  logits, want_bs = fns.apply(params, bs, x2, train=True)
  assert float(loss) == pytest.approx(float(regmixup_loss(logits, y_a, y_b, lam)), rel=1e-6)
  for a, b in zip(jax.tree.leaves(new_bs), jax.tree.leaves(want_bs)):  # stats of all 2B rows.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  assert float(sums["mix_lambda"]) == pytest.approx(8 * float(lam), rel=1e-6)


def test_train_step_and_settings():
  assert dict(method_config("regmixup")) == dict(name="regmixup", alpha=20.0, beta=20.0,
                                                 eta=1.0)
  assert method_config("regmixup_at").attack.num_steps == 10
  tx = optax.sgd(0.1)
  graphdef, state = create_train_state(create_model(MODEL), tx, seed=0)
  x, y = _batch()
  step = jax.jit(make_train_step(ModelFns(graphdef), method_from_config(
      dict(name="regmixup")), tx))
  new, metrics = step(state, {"image": (x * 255).astype(jnp.uint8), "label": y})
  assert np.isfinite(float(metrics["loss"])) and 0 < float(metrics["mix_lambda"]) / 8 < 1
  assert not np.array_equal(np.asarray(jax.tree.leaves(new.params)[0]),
                            np.asarray(jax.tree.leaves(state.params)[0]))
  with pytest.raises(ConfigError, match="config.method.alpha must be >= 0"):
    method_from_config(dict(name="regmixup", alpha=-1.0))
  with pytest.raises(ConfigError, match="not settings of method 'regmixup'"):
    method_from_config(dict(name="regmixup", attack=PGD))
