"""The attack registry: one spelling with aliases, and a toy attack registered from outside."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrobust import parallel
from jaxrobust.attacks import (ATTACKS, AttackSpec, apgd, apgd_targeted, attack_from_config,
                               attack_names, fab_targeted, fgsm, get_attack, register_attack,
                               resolve_attack_name, trades_l2_inner_max, unregister_attack)
from jaxrobust.data import ArrayDataset
from jaxrobust.errors import ConfigError
from jaxrobust.evaluate import evaluate_model
from jaxrobust.methods import ModelFns
from jaxrobust.models import create_model


def test_one_spelling_with_aliases():
  assert resolve_attack_name("fab-t") == resolve_attack_name("fab_targeted") == "fab_t"
  assert resolve_attack_name("APGD-CE") == "apgd_ce"
  assert ATTACKS["apgd_t"] is apgd_targeted and ATTACKS["fab_t"] is fab_targeted
  assert ATTACKS["apgd_ce"] is apgd and get_attack("apgd-dlr").fixed == {"loss": "dlr"}
  assert ATTACKS["trades_l2"] is trades_l2_inner_max
  assert set(attack_names(autoattack=True)) == {"apgd_ce", "apgd_dlr", "apgd_t", "fab",
                                                "fab_t", "square"}
  with pytest.raises(ConfigError) as e:
    attack_from_config(dict(name="pgd1000", eps=0.1))
  for name in ("pgd", "fgsm", "apgd_t", "fab_t", "square", "trades_l2"):
    assert name in str(e.value)


def test_trades_l2_takes_exactly_its_settings():
  attack = attack_from_config(dict(name="trades_l2", eps=0.5, step_size=0.1, num_steps=2))
  w = jax.random.normal(jax.random.PRNGKey(0), (48, 10))
  f = lambda z: z.reshape(z.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 4, 4, 3))
  k = jax.random.PRNGKey(2)
  np.testing.assert_array_equal(
      attack(f, k, x, None), trades_l2_inner_max(f, k, x, eps=0.5, step_size=0.1, num_steps=2))
  with pytest.raises(ConfigError, match="step_size must be > 0"):
    attack_from_config(dict(name="trades_l2", eps=0.5))
  with pytest.raises(ConfigError, match="unknown setting"):
    attack_from_config(dict(name="trades_l2", eps=0.5, step_size=0.1, num_steps=2,
                            norm="linf"))
  with pytest.raises(ConfigError, match="step_size"):
    attack_from_config(dict(name="trades_l2", eps=0.5, step_size=0.0, num_steps=2))


def _sign_step(logits_fn, rng, x, y, *, eps):
  """A toy one-step sign attack written outside the package (no random start)."""
  del rng
  g = jax.grad(lambda z: jnp.sum(jax.nn.logsumexp(logits_fn(z), -1) - jnp.take_along_axis(
      logits_fn(z), y[:, None], -1)[:, 0]))(x)
  return jnp.clip(x + eps * jnp.sign(g), 0.0, 1.0)


def test_a_toy_attack_registered_from_outside_evaluates_like_fgsm():
  spec = register_attack(AttackSpec("toy_sign_step", _sign_step, settings=("eps",)))
  try:
    model = create_model("simple_cnn_tiny", num_classes=10, seed=0)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    fns = ModelFns(graphdef)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    data = ArrayDataset(images, labels, np.ones(16, bool), name="toy")
    eps = 8 / 255
    acc = evaluate_model(fns, params, batch_stats, data,
                         {"toy": dict(name="toy_sign_step", eps=eps),
                          "fgsm": dict(name="fgsm", eps=eps), "clean": None}, 16,
                         parallel.make_mesh(1))
    # The toy attack is FGSM (one sign step of eps on the CE, no random start).
    assert acc["toy"] == acc["fgsm"] <= acc["clean"]
    x = jnp.asarray(images, jnp.float32) / 255.0
    f = fns.logits_fn(params, batch_stats)
    x_toy = attack_from_config(dict(name="toy_sign_step", eps=eps))(
        f, jax.random.PRNGKey(0), x, jnp.asarray(labels))
    x_fgsm = fgsm(f, jax.random.PRNGKey(0), x, jnp.asarray(labels), eps=eps)
    np.testing.assert_allclose(x_toy, x_fgsm, atol=1e-6)
    assert float(jnp.max(jnp.abs(x_toy - x))) == pytest.approx(eps, abs=1e-6)
    with pytest.raises(ConfigError, match="already registered"):
      register_attack(spec)
    with pytest.raises(ConfigError, match="unknown setting"):
      attack_from_config(dict(name="toy_sign_step", eps=eps, num_steps=3))
  finally:
    unregister_attack("toy_sign_step")
  with pytest.raises(ConfigError, match="unknown attack"):
    attack_from_config(dict(name="toy_sign_step", eps=0.1))
