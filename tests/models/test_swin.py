"""Swin Transformer: sizes, the shifted-window mask, and the ARD attention-gradient gate."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.methods.vit_recipe import attention_random_drop_logits_fn
from jaxrobust.models import SWIN_MODELS, ModelFns, create_model
from jaxrobust.models.swin import (SwinTransformerBlock, relative_position_index,
                                   shifted_window_mask, window_and_shift)

# A tiny Swin: 16x16 images, patch 2 (8x8 tokens), window 4, two stages of 2 blocks.
TINY = dict(image_size=16, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(2, 2),
            window_size=4)


@functools.lru_cache(maxsize=None)
def _tiny(seed=0):
  model = create_model("swin_cifar_tiny", seed=seed, **TINY)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return ModelFns(graphdef), params, rest


def _x(n=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 16, 16, 3)), jnp.float32)


def _call(params, rest, x, **kw):
  return nnx.merge(_tiny()[0].graphdef, params, rest, copy=True)(x, **kw)


# --- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SWIN_MODELS))
def test_every_swin_builds_and_returns_features(name):
  size = 32 if name == "swin_cifar_tiny" else 224

  def run(x):
    model = create_model(name, image_size=size)
    return model(x, return_features=True), model(x)

  (logits, feats), plain = jax.eval_shape(
      run, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  width = {"swin_cifar_tiny": 192, "swin_b": 1024, "swin_base_patch4_window7_224": 1024}.get(
      name, 768)
  assert logits.shape == plain.shape == (2, 10) and logits.dtype == jnp.float32
  assert feats.shape == (2, width)


def _count(name, **kw):
  model = nnx.eval_shape(lambda: create_model(name, **kw))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_parameter_counts_against_timm():
  # timm: swin_tiny_patch4_window7_224 28,288,354 and swin_small 49,606,258 parameters
  # (1000 classes; relative_position_index / attn_mask are buffers, not parameters).
  assert _count("swin_t", num_classes=1000) == 28_288_354
  assert _count("swin_s", num_classes=1000) == 49_606_258


def test_small_cifar_shapes_and_windows():
  # 32 px, patch 4, window 4: stages of 8x8 (shifted windows), 4x4 and 2x2 tokens (one
  # window of the whole grid, no shift: timm's _calc_window_shift).
  build = lambda: create_model("swin_cifar_tiny", image_size=32, patch_size=4, depths=(2, 2, 2))
  model = nnx.eval_shape(build)
  got = [(b.resolution, b.window, b.shift) for b in model.blocks()]
  assert got == [((8, 8), 4, 0), ((8, 8), 4, 2), ((4, 4), 4, 0), ((4, 4), 4, 0),
                 ((2, 2), 2, 0), ((2, 2), 2, 0)]
  out = jax.eval_shape(lambda x: build()(x), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert out.shape == (1, 10)
  assert window_and_shift((56, 56), 7, 3) == (7, 3) and window_and_shift((7, 7), 7, 3) == (7, 0)


def test_bad_sizes_are_config_errors():
  with pytest.raises(ConfigError, match="not a multiple of window"):
    create_model("swin_cifar_tiny", image_size=24, patch_size=2, window_size=5, depths=(2,),
                 num_heads=(3,))
  with pytest.raises(ConfigError, match="token grid"):
    create_model("swin_t", image_size=32, patch_size=16)
  with pytest.raises(ConfigError, match="divisible by 2"):
    create_model("swin_cifar_tiny", image_size=20, patch_size=2, window_size=5)
  _, params, rest = _tiny()
  with pytest.raises(ConfigError, match="built for 16x16 images"):
    _call(params, rest, jnp.zeros((1, 32, 32, 3)))


def test_relative_position_index_by_hand():
  # window 2: tokens (0,0), (0,1), (1,0), (1,1); offset (dh, dw) -> (dh + 1) * 3 + dw + 1.
  want = np.array([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
  np.testing.assert_array_equal(relative_position_index(2), want)


# --- the shifted-window mask -----------------------------------------------------------------


def _region(coord, size, shift):
  """After roll(-shift), a token at coordinate ``coord`` came from across the border iff
  ``coord >= size - shift``."""
  return coord >= size - shift


def test_shifted_window_mask_separates_wrapped_regions():
  h, window, shift = 8, 4, 2
  mask = shifted_window_mask((h, h), window, shift)
  assert mask.shape == (4, 16, 16) and shifted_window_mask((h, h), window, 0) is None
  for wi, i, j in itertools.product(range(4), range(16), range(16)):
    rows = [(wi // 2) * window + t // window for t in (i, j)]
    cols = [(wi % 2) * window + t % window for t in (i, j)]
    same = (_region(rows[0], h, shift) == _region(rows[1], h, shift) and
            _region(cols[0], h, shift) == _region(cols[1], h, shift))
    assert mask[wi, i, j] == (0.0 if same else -100.0), (wi, i, j)


def test_tokens_interact_only_within_their_window_and_region():
  # d(attention branch at token q) / d(input at token k): nonzero only when, after the
  # cyclic shift, q and k share a window AND a region (the -100 offset is e^-100 ~ 0).
  h, shift, window = 8, 2, 4
  block = SwinTransformerBlock(4, (h, h), 1, window, shift, 2.0, qkv_bias=True,
                               rngs=nnx.Rngs(1))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, h, h, 4))
  jac = jax.jacobian(lambda v: block.attention_branch(v).sum(-1))(x)[0]  # [h, h, 1, h, h, 4]
  influence = np.abs(np.asarray(jac)).sum(axis=(2, 5))  # [h, h, h, h]
  for qr, qc, kr, kc in itertools.product(range(h), repeat=4):
    sq = ((qr - shift) % h, (qc - shift) % h)  # position in the shifted map.
    sk = ((kr - shift) % h, (kc - shift) % h)
    same_window = sq[0] // window == sk[0] // window and sq[1] // window == sk[1] // window
    same_region = all(_region(a, h, shift) == _region(b, h, shift) for a, b in zip(sq, sk))
    got = influence[qr, qc, kr, kc]
    if same_window and same_region:
      assert got > 1e-6, (qr, qc, kr, kc)
    else:
      assert got < 1e-30, (qr, qc, kr, kc, got)


# --- ARD: the attention-gradient gate --------------------------------------------------------


def test_logits_identical_under_any_gate_mask():
  _, params, rest = _tiny()
  x = _x()
  plain = np.asarray(_call(params, rest, x))
  for keep in itertools.product([False, True], repeat=4):
    gated = _call(params, rest, x, attention_grad_keep=jnp.asarray(keep))
    np.testing.assert_array_equal(np.asarray(gated), plain)


def _input_grad(x, y, **kw):
  _, params, rest = _tiny()
  loss = lambda xx: jnp.sum(jax.nn.log_softmax(_call(params, rest, xx, **kw))[
      jnp.arange(xx.shape[0]), y])
  return jax.grad(loss)(x)


def _stop_gradient_reference(x, y, dropped):
  """Input gradient with the attention branches of blocks ``dropped`` stop_gradient, built
  from the sub-modules without the gate."""
  fns, params, rest = _tiny()

  def loss(xx):
    m = nnx.merge(fns.graphdef, params, rest, copy=True)
    t = m.patch_embed(m.normalize(xx)).reshape(xx.shape[0], 8, 8, -1)
    i = 0
    for stage in m.layers:
      if stage.downsample is not None:
        t = stage.downsample(t)
      for blk in stage.blocks:
        a = blk.attention_branch(t)
        t = t + (jax.lax.stop_gradient(a) if i in dropped else a)
        t = t + blk.mlp(blk.norm2(t))
        i += 1
    logits = m.head(m.norm(t).mean(axis=(1, 2)))
    return jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(xx.shape[0]), y])

  return jax.grad(loss)(x)


def test_input_gradient_all_kept_is_plain_and_dropped_is_stop_gradient():
  x, y = _x(), jnp.asarray([0, 3, 9])
  plain = np.asarray(_input_grad(x, y))
  kept = np.asarray(_input_grad(x, y, attention_grad_keep=jnp.ones(4, bool)))
  np.testing.assert_array_equal(kept, plain)
  for keep in ((False,) * 4, (True, False, True, False), (False, True, True, True)):
    dropped = {i for i, k in enumerate(keep) if not k}
    got = np.asarray(_input_grad(x, y, attention_grad_keep=jnp.asarray(keep)))
    want = np.asarray(_stop_gradient_reference(x, y, dropped))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    assert np.abs(got - plain).max() > 1e-3 * np.abs(plain).max()  # the gate did something


def test_parameter_gradient_ignores_the_gate_when_off_and_random_drop_keeps_logits():
  # The weight gradient of the training loss comes from the plain call (no mask): the
  # ARD logits function only changes input gradients, never values.
  fns, params, rest = _tiny()
  x = _x()
  fn = attention_random_drop_logits_fn(fns, params, rest, 0.5)
  for seed in range(3):
    np.testing.assert_array_equal(np.asarray(fn(x, jax.random.PRNGKey(seed))),
                                  np.asarray(_call(params, rest, x)))
  with pytest.raises(ValueError, match=r"shape \(4,\)"):
    _call(params, rest, x, attention_grad_keep=jnp.ones(2, bool))


def test_drop_path_only_in_the_train_view_with_a_key():
  model = create_model("swin_cifar_tiny", drop_path_rate=0.5, **TINY)
  x = _x()
  plain = np.asarray(model(x))
  np.testing.assert_array_equal(np.asarray(model(x, train=True)), plain)
  dropped = np.asarray(model(x, train=True, key=jax.random.PRNGKey(0)))
  assert np.abs(dropped - plain).max() > 1e-4
  rates = [b.drop_path for b in model.blocks()]
  np.testing.assert_allclose(rates, np.linspace(0, 0.5, 4))
