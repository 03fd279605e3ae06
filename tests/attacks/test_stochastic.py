"""Stochastic models: every forward pass of every attack gets a fresh key."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrobust.attacks import (StochasticLogitsFn, apgd, apgd_single_run, apgd_targeted,
                               call_logits, fab, fab_targeted, fgsm, is_stochastic, pgd, square,
                               stochastic, trades_l2_inner_max)
from jaxrobust.evaluate.autoattack import AutoAttackSettings, run_autoattack, sanity_checks
from jaxrobust.methods import ModelFns
from jaxrobust.models import create_model


def _recording_model(seed=0, noise=1e-3):
  """A linear model plus key-dependent noise; records the key of every forward pass."""
  w = jax.random.normal(jax.random.PRNGKey(seed), (48, 10)) * 0.5
  seen = []

  def record(k):
    k = np.asarray(k)
    for row in k.reshape(-1, k.shape[-1]):  # vmapped (EOT) passes arrive batched
      seen.append(tuple(row.tolist()))

  def fn(x, key):
    jax.debug.callback(record, jax.random.key_data(key))
    logits = x.reshape(x.shape[0], -1) @ w
    return logits + noise * jax.random.normal(key, logits.shape)

  return stochastic(fn), seen


X = jax.random.uniform(jax.random.PRNGKey(1), (6, 4, 4, 3))
Y = jnp.arange(6, dtype=jnp.int32) % 10
KEY = jax.random.PRNGKey(5)

ATTACK_CALLS = {
    # name: (call, exact number of forward passes or None when data-dependent)
    "pgd": (lambda f: pgd(f, KEY, X, Y, eps=0.1, step_size=0.03, num_steps=3), 3),
    "pgd_restarts": (lambda f: pgd(f, KEY, X, Y, eps=0.1, step_size=0.03, num_steps=3,
                                   num_restarts=2), 2 * 3 + 2),
    "pgd_kl": (lambda f: pgd(f, KEY, X, Y, eps=0.1, step_size=0.03, num_steps=2, loss="kl",
                             random_start="normal"), 1 + 2),
    "fgsm": (lambda f: fgsm(f, KEY, X, Y, eps=0.1), 1),
    "apgd": (lambda f: apgd(f, KEY, X, Y, eps=0.1, num_steps=4), 1 + 1 + 4),
    "apgd_eot": (lambda f: apgd_single_run(f, KEY, X, Y, eps=0.1, num_steps=3,
                                           eot_iter=4)[0], (1 + 3) * 4),
    "apgd_t": (lambda f: apgd_targeted(f, KEY, X, Y, eps=0.1, num_steps=3,
                                       n_target_classes=2), 1 + 2 * (1 + 3)),
    "fab": (lambda f: fab(f, KEY, X, Y, eps=0.3, num_steps=3, num_restarts=2), None),
    "fab_t": (lambda f: fab_targeted(f, KEY, X, Y, eps=0.3, num_steps=3,
                                     n_target_classes=2), None),
    "square": (lambda f: square(f, KEY, X, Y, eps=0.1, n_queries=5), None),
    "trades_l2": (lambda f: trades_l2_inner_max(f, KEY, X, eps=0.5, step_size=0.1,
                                                num_steps=3), 1 + 3),
}


@pytest.mark.parametrize("name", sorted(ATTACK_CALLS))
def test_every_forward_pass_gets_a_distinct_key(name):
  call, n_passes = ATTACK_CALLS[name]
  f, seen = _recording_model()
  x_adv = jax.block_until_ready(call(f))
  jax.effects_barrier()
  assert x_adv.shape == X.shape and bool(jnp.all((x_adv >= 0) & (x_adv <= 1)))
  assert len(seen) >= 1
  if n_passes is not None:
    assert len(seen) == n_passes
  assert len(set(seen)) == len(seen), "a key was reused across forward passes"


def test_a_key_independent_stochastic_model_gives_the_deterministic_result():
  # The keyed convention changes nothing for a model that ignores its key.
  w = jax.random.normal(jax.random.PRNGKey(0), (48, 10))
  plain = lambda x: x.reshape(x.shape[0], -1) @ w
  keyed = stochastic(lambda x, key: plain(x))
  assert is_stochastic(keyed) and not is_stochastic(plain)
  for attack in (lambda f: pgd(f, KEY, X, Y, eps=0.1, step_size=0.03, num_steps=3),
                 lambda f: apgd(f, KEY, X, Y, eps=0.1, num_steps=4),
                 lambda f: fab_targeted(f, KEY, X, Y, eps=0.3, num_steps=3,
                                        n_target_classes=2),
                 lambda f: square(f, KEY, X, Y, eps=0.1, n_queries=5)):
    np.testing.assert_array_equal(attack(plain), attack(keyed))


def test_noisy_model_is_stochastic_through_model_fns():
  model = create_model("noisy_simple_cnn_tiny", num_classes=10, seed=0)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  f = ModelFns(graphdef).logits_fn(params, batch_stats)
  assert isinstance(f, StochasticLogitsFn)
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  np.testing.assert_array_equal(f(X, k1), f(X, k1))
  assert float(jnp.max(jnp.abs(f(X, k1) - f(X, k2)))) > 1e-4
  # Without a key the noise is off: the wrapped base model's logits.
  base = create_model("simple_cnn_tiny", num_classes=10, seed=0)
  gd, p, bs = nnx.split(base, nnx.Param, nnx.BatchStat)
  assert not is_stochastic(ModelFns(gd).logits_fn(p, bs))
  np.testing.assert_allclose(ModelFns(graphdef).apply(params, batch_stats, X, train=False)[0],
                             ModelFns(gd).apply(p, bs, X, train=False)[0], atol=1e-6)
  with pytest.raises(ValueError, match="fresh PRNG key"):
    call_logits(f, X, None)


def test_randomised_defence_check_and_aa_rand_on_a_stochastic_model():
  f, _ = _recording_model(noise=0.5)
  s = AutoAttackSettings.for_version(0.1, version="standard")
  with pytest.warns(UserWarning, match="randomized defense"):
    msgs = sanity_checks(f, X, Y, s, 10)
  assert any("randomized defense" in m for m in msgs)
  rand = AutoAttackSettings.for_version(0.1, version="rand", apgd_steps=2, eot_iter=3)
  assert not any("randomized" in m for m in sanity_checks(f, X, Y, rand, 10))
  # A deterministic model passes the check.
  w = jax.random.normal(jax.random.PRNGKey(0), (48, 10))
  assert not any("randomized" in m for m in sanity_checks(
      lambda x: x.reshape(x.shape[0], -1) @ w, X, Y, s, 10))
  # aa-rand (APGD with EOT) runs end to end on the keyed model.
  res = run_autoattack(f, np.asarray(X), np.asarray(Y), rand, batch_size=32, progress=False)
  assert set(res.robust_accuracy) == {"clean", "apgd_ce", "apgd_dlr"}
  assert 0.0 <= res.robust_accuracy["apgd_dlr"] <= res.robust_accuracy["clean"]
