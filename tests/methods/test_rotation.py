"""Rotation self-supervision: exact rotations, the head, the loss and the /8 attack objective."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.methods import ModelFns, method_from_config
from jaxrobust.methods.rotation import joint_objective, joint_pgd, rotation_batch
from jaxrobust.train import create_train_state, default_config, make_train_step
from jaxrobust.train.builders import build_model, model_fingerprint
from jaxrobust.train.defaults import validate_config
from jaxrobust.train.state import split_model

MODEL = "simple_cnn_tiny"
SHAPE = (32, 32, 3)
PGD = dict(name="pgd", eps=8 / 255, step_size=2 / 255, num_steps=2, loss="ce",
           random_start="uniform")


def _config(heads=("rotation",)):
  cfg = default_config("rotation_ssl")
  cfg.model.name, cfg.model.aux_heads = MODEL, heads
  return cfg


@functools.lru_cache(maxsize=None)
def _setup():
  graphdef, params, bs = split_model(build_model(_config(), SHAPE))
  return ModelFns(graphdef), params, bs


def _batch(n=4, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.random((n, *SHAPE)), jnp.float32),
          jnp.asarray(rng.integers(0, 10, n), jnp.int32))


def _np_ce(logits, y):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(-1, keepdims=True)
  return -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(len(y)), np.asarray(y)]


def test_rotations_are_exact_and_labelled():
  x, _ = _batch(3)
  x5, r = rotation_batch(x)
  xn = np.asarray(x)
  nchw = xn.transpose(0, 3, 1, 2)  # the official code rotates NCHW over axes (2, 3).
  want = [xn, xn] + [np.rot90(nchw, k, axes=(2, 3)).transpose(0, 2, 3, 1) for k in (1, 2, 3)]
  np.testing.assert_array_equal(np.asarray(x5), np.concatenate(want))
  np.testing.assert_array_equal(np.asarray(r), np.repeat(np.arange(4), 3))
  # 90 degrees counter-clockwise: the top row becomes the left column, read bottom-up.
  np.testing.assert_array_equal(np.asarray(x5[6])[::-1, 0], xn[0][0, :])
  with pytest.raises(ValueError, match="square images"):
    rotation_batch(jnp.zeros((2, 8, 6, 3)))


def test_head_is_an_extra_layer_and_the_model_is_otherwise_unchanged():
  fns, params, bs = _setup()
  plain = split_model(build_model(_config(()), SHAPE))[1]
  kernel = params["rotation_head"]["kernel"]
  assert kernel.shape == (16, 4) and params["rotation_head"]["bias"].shape == (4,)
  flat = dict(jax.tree_util.tree_leaves_with_path(params))
  for path, leaf in jax.tree_util.tree_leaves_with_path(plain):
    np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(leaf))
  assert model_fingerprint(_config(), SHAPE).endswith("|heads=rotation")
  assert "heads" not in model_fingerprint(_config(()), SHAPE)
  x, _ = _batch()
  np.testing.assert_array_equal(np.asarray(fns.apply(params, bs, x, train=False)[0]),
                                np.asarray(ModelFns(split_model(build_model(
                                    _config(()), SHAPE))[0]).apply(plain, bs, x,
                                                                   train=False)[0]))


def _hand_terms(params, bs, fns, x5, y):
  """Class logits and rotation logits by hand: features @ W + b of the train-mode pass."""
  logits, feats = fns.features_fn(params, bs, bn="train")(x5)
  w = np.asarray(params["rotation_head"]["kernel"], np.float64)
  b = np.asarray(params["rotation_head"]["bias"], np.float64)
  return np.asarray(logits), np.asarray(feats, np.float64) @ w + b


def test_loss_and_attack_objective_equal_the_hand_values():
  fns, params, bs = _setup()
  x, y = _batch()
  x5, r = rotation_batch(x)
  x5 = jnp.clip(x5 + 0.01 * jax.random.normal(jax.random.PRNGKey(1), x5.shape), 0, 1)
  logits, rot = _hand_terms(params, bs, fns, x5, y)
  ce_class, ce_rot = _np_ce(logits[:4], y), _np_ce(rot[4:], r)
  obj = float(joint_objective(fns, params, bs, x5, y, r, 1 / 8))
  assert obj == pytest.approx(ce_class.sum() + ce_rot.sum() / 8, rel=1e-5)
  method = method_from_config(dict(name="rotation_ssl", attack=PGD))
  loss, (new_bs, sums) = method.loss(params, bs, fns, x, y, x5, jax.random.PRNGKey(0))
  assert float(loss) == pytest.approx(ce_class.mean() + 0.5 * ce_rot.mean(), rel=1e-5)
  assert float(sums["rot_accuracy"]) == pytest.approx(
      np.mean(rot[4:].argmax(-1) == np.asarray(r)) * 4, rel=1e-6)
  want_bs = fns.apply(params, bs, x5, train=True)[1]  # one pass over all 5B rows.
  for a, b in zip(jax.tree.leaves(new_bs), jax.tree.leaves(want_bs)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_joint_pgd_stays_in_the_ball_and_ascends_the_objective():
  fns, params, bs = _setup()
  x, y = _batch()
  x5, r = rotation_batch(x)
  key = jax.random.PRNGKey(2)
  start = joint_pgd(fns, params, bs, key, x5, y, r, eps=8 / 255, step_size=2 / 255,
                    num_steps=0, rotation_weight=1 / 8)
  np.testing.assert_array_equal(  # the official start: U(-eps, eps), not clipped.
      np.asarray(start), np.asarray(x5 + jax.random.uniform(key, x5.shape, x5.dtype,
                                                           -8 / 255, 8 / 255)))
  adv = joint_pgd(fns, params, bs, key, x5, y, r, eps=8 / 255, step_size=2 / 255,
                  num_steps=5, rotation_weight=1 / 8)
  assert float(jnp.max(jnp.abs(adv - x5))) <= 8 / 255 + 1e-6
  assert float(adv.min()) >= 0 and float(adv.max()) <= 1
  f = lambda z: float(joint_objective(fns, params, bs, z, y, r, 1 / 8))  # noqa: E731
  assert f(adv) > f(jnp.clip(start, 0, 1))
  method = method_from_config(dict(name="rotation_ssl", attack=PGD))
  out = method.perturb(fns, params, bs, x, y, key)
  assert out.shape == (20, *SHAPE)


def test_train_step_config_and_errors():
  cfg = _config(())
  with pytest.raises(ConfigError, match=r"config.model.aux_heads=\('rotation',\)"):
    validate_config(cfg)
  validate_config(_config())
  bad = _config()
  bad.method.attack.random_start = "normal"
  with pytest.raises(ConfigError, match="random_start='uniform'"):
    validate_config(bad)
  bad = _config(("rotation", "jigsaw"))
  with pytest.raises(ConfigError, match="aux_heads"):
    validate_config(bad)
  _, params, _ = _setup()
  graphdef, p_plain, bs_plain = split_model(build_model(_config(()), SHAPE))
  x, y = _batch()
  x5, r = rotation_batch(x)
  with pytest.raises(ConfigError, match="rotation head"):
    joint_objective(ModelFns(graphdef), p_plain, bs_plain, x5, y, r, 1 / 8)
  tx = optax.sgd(0.1)
  graphdef, state = create_train_state(build_model(_config(), SHAPE), tx, seed=0)
  step = jax.jit(make_train_step(ModelFns(graphdef), method_from_config(
      dict(name="rotation_ssl", attack=PGD)), tx))
  new, metrics = step(state, {"image": (x * 255).astype(jnp.uint8), "label": y})
  assert np.isfinite(float(metrics["loss"])) and float(metrics["count"]) == 4
  assert not np.array_equal(np.asarray(new.params["rotation_head"]["kernel"]),
                            np.asarray(params["rotation_head"]["kernel"]))
