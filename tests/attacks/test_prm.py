"""PGD with perturbation random masking (``pgd_prm``): masks, update orders, limits r = 0 / 1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import (attack_from_config, num_masked_patches, patch_keep_mask, pgd,
                               pgd_prm, project)
from jaxrobust.errors import ConfigError

SHAPE = (16, 8, 8, 3)  # the shape of test_pgd.py; patch 2 -> a 4x4 grid of 16 patches
PATCH = 2
EPS, ALPHA = 8 / 255, 2 / 255
KEY = jax.random.PRNGKey(0)


def _linear(seed=0, scale=0.1):
  gen = np.random.default_rng(seed)
  d = int(np.prod(SHAPE[1:]))
  w = jnp.asarray(scale * gen.normal(size=(d, 10)), jnp.float32)
  return lambda x: x.reshape(x.shape[0], -1) @ w


def _data(seed=1):
  gen = np.random.default_rng(seed)
  x = jnp.asarray(gen.uniform(0.1, 0.9, SHAPE), jnp.float32)
  return x, jnp.asarray(gen.integers(0, 10, SHAPE[0]), jnp.int32)


def _patch_blocks(mask):
  """[1, H, W, 1] -> [gh, gw, PATCH * PATCH] pixel values per patch."""
  m = np.asarray(mask)[0, :, :, 0]
  g = m.shape[0] // PATCH
  return m.reshape(g, PATCH, g, PATCH).transpose(0, 2, 1, 3).reshape(g, g, PATCH * PATCH)


@pytest.mark.parametrize("r, masked", [(0.0, 16), (0.3, 11), (0.5, 8), (0.99, 0), (1.0, 0)])
def test_mask_count_and_grid_alignment(r, masked):
  assert int(num_masked_patches(16, r)) == masked == int(16 * (1 - r))
  mask = patch_keep_mask(jax.random.PRNGKey(7), SHAPE, PATCH, r)
  assert mask.shape == (1, 8, 8, 1) and mask.dtype == jnp.bool_  # shared by batch, channels
  blocks = _patch_blocks(mask)
  assert np.all(blocks == blocks[..., :1])  # constant on each patch: aligned to the grid
  assert int((~blocks[..., 0]).sum()) == masked


def test_masks_are_fresh_per_key_and_uniform_over_patches():
  masks = np.stack([_patch_blocks(patch_keep_mask(jax.random.PRNGKey(i), SHAPE, PATCH, 0.5))
                    [..., 0] for i in range(200)])
  assert len({m.tobytes() for m in masks}) > 150
  freq = (~masks).mean(0)  # each patch masked with probability 8/16
  assert np.all(np.abs(freq - 0.5) < 0.15)


def test_keep_prob_one_is_bit_identical_to_pgd():
  f, (x, y) = _linear(), _data()
  for unroll in (None, 1):  # straight-line and fori_loop bodies
    want = pgd(f, KEY, x, y, eps=EPS, step_size=ALPHA, num_steps=3, unroll=unroll)
    got = pgd_prm(f, KEY, x, y, eps=EPS, step_size=ALPHA, num_steps=3, patch_size=PATCH,
                  keep_prob=1.0, unroll=unroll)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_keep_prob_zero_faithful_is_one_step_from_zero_and_strict_is_clean():
  f, (x, y) = _linear(), _data()
  g = jax.grad(lambda xx: jnp.sum(
      jax.nn.log_softmax(f(xx))[jnp.arange(SHAPE[0]), y]) * -1.0)(x)
  want = project(x + ALPHA * jnp.sign(g), x, EPS, "linf")
  got = pgd_prm(f, KEY, x, y, eps=EPS, step_size=ALPHA, num_steps=4, patch_size=PATCH,
                keep_prob=0.0)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-7)
  strict = pgd_prm(f, KEY, x, y, eps=EPS, step_size=ALPHA, num_steps=4, patch_size=PATCH,
                   keep_prob=0.0, prm_mode="strict")
  np.testing.assert_array_equal(np.asarray(strict), np.asarray(x))


def _reference(f, x, y, r, steps, strict):
  """The update written out step by step with the attack's own masks (same key streams)."""
  from jaxrobust.attacks._prm import _MASK_STREAM
  delta = project(x + jax.random.uniform(KEY, x.shape, jnp.float32, -EPS, EPS), x, EPS,
                  "linf") - x
  for i in range(steps):
    m = patch_keep_mask(jax.random.fold_in(jax.random.fold_in(KEY, _MASK_STREAM), i), x.shape,
                        PATCH, r).astype(jnp.float32)
    delta = delta * m
    g = jax.grad(lambda d: -jnp.sum(jax.nn.log_softmax(f(x + d))[jnp.arange(SHAPE[0]), y]))(
        delta)
    delta = jnp.clip(delta + ALPHA * jnp.sign(g), -EPS, EPS)
    delta = jnp.clip(x + delta, 0, 1) - x
    if strict:
      delta = delta * m
  return x + delta, m


@pytest.mark.parametrize("strict", [False, True])
def test_update_order_against_the_written_out_loop(strict):
  f, (x, y) = _linear(), _data()
  got = pgd_prm(f, KEY, x, y, eps=EPS, step_size=ALPHA, num_steps=3, patch_size=PATCH,
                keep_prob=0.5, prm_mode="strict" if strict else "faithful")
  want, last_mask = _reference(f, x, y, 0.5, 3, strict)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)
  delta = np.abs(np.asarray(got - x))
  assert delta.max() <= EPS + 1e-6
  off = np.asarray(last_mask)[0, :, :, 0] == 0
  if strict:  # the last step's masked patches carry no perturbation, for every image
    assert np.all(delta[:, off] == 0)
  else:  # faithful: masked patches restarted from 0 and took one step
    assert np.all(delta[:, off] <= ALPHA + 1e-6) and delta[:, off].max() > 0


def test_registered_and_validated():
  attack = attack_from_config(dict(name="pgd_prm", eps=EPS, step_size=ALPHA, num_steps=1,
                                   patch_size=PATCH))
  f, (x, y) = _linear(), _data()
  out = attack(f, KEY, x, y, keep_prob=0.5)
  assert out.shape == x.shape
  with pytest.raises(ConfigError, match="prm_mode"):
    attack_from_config(dict(name="pgd_prm", eps=EPS, step_size=ALPHA, num_steps=1,
                            prm_mode="paper"))
  with pytest.raises(ConfigError, match="keep_prob"):
    attack_from_config(dict(name="pgd_prm", eps=EPS, step_size=ALPHA, num_steps=1,
                            keep_prob=1.5))
  with pytest.raises(ValueError, match="not a multiple of patch_size"):
    pgd_prm(f, KEY, x, y, eps=EPS, step_size=ALPHA, num_steps=1, patch_size=3)
