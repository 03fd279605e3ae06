"""Vision Transformers: sizes, checkpoint names, features, and the ARD attention-gradient gate."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.models import VIT_MODELS, ModelFns, create_model
from jaxrobust.models.vit import MultiHeadDotProductAttention, token_grid

# A tiny ViT: 16x16 images, patch 4 (4x4 tokens), width 16, 2 blocks of 2 heads.
TINY = dict(image_size=16, patch_size=4, width=16, depth=2, num_heads=2)


@functools.lru_cache(maxsize=None)
def _tiny(seed=0):
  model = create_model("vit_cifar_tiny", seed=seed, **TINY)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return ModelFns(graphdef), params, rest


def _x(n=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 16, 16, 3)), jnp.float32)


def _call(params, rest, x, **kw):
  fns = _tiny()[0]
  return nnx.merge(fns.graphdef, params, rest, copy=True)(x, **kw)


def _input_grad(x, y, **kw):
  _, params, rest = _tiny()
  loss = lambda xx: jnp.sum(jax.nn.log_softmax(_call(params, rest, xx, **kw))[
      jnp.arange(xx.shape[0]), y])
  return jax.grad(loss)(x)


# --- sizes and names ------------------------------------------------------------------


def test_too_few_tokens_is_a_config_error():
  with pytest.raises(ConfigError, match="2x2 token grid"):
    create_model("vit_b", image_size=32)  # patch 16 on CIFAR: repo issue #6
  with pytest.raises(ConfigError, match="not a multiple of patch size"):
    token_grid(32, 5)
  assert token_grid(32, 4) == (8, 8) and token_grid((224, 160), 16) == (14, 10)
  _, params, rest = _tiny()
  with pytest.raises(ConfigError, match="built for 16x16 images"):
    _call(params, rest, jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("name", sorted(VIT_MODELS))
def test_every_vit_builds_and_returns_features(name):
  kw = dict(image_size=32, patch_size=4)

  def run(x):
    model = create_model(name, **kw)
    return model(x, return_features=True), model(x)

  (logits, feats), plain = jax.eval_shape(run, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  width = {"vit_ti": 192, "deit_ti": 192, "deit_tiny_patch16_224": 192, "vit_s": 384,
           "deit_s": 384, "deit_small_patch16_224": 384, "vit_cifar_tiny": 128}.get(name, 768)
  assert logits.shape == plain.shape == (2, 10) and logits.dtype == jnp.float32
  assert feats.shape == (2, width) and feats.dtype == jnp.float32


def test_features_are_the_head_input():
  fns, params, rest = _tiny()
  x = _x()
  model = nnx.merge(fns.graphdef, params, rest, copy=True)
  logits, feats = model(x, return_features=True)
  want = np.asarray(feats, np.float64) @ np.asarray(model.head.kernel[...], np.float64)
  np.testing.assert_allclose(np.asarray(logits), want + np.asarray(model.head.bias[...]),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(logits))


def _count(name, **kw):
  model = nnx.eval_shape(lambda: create_model(name, **kw))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_parameter_counts_against_timm():
  # timm deit_small_patch16_224 has 22,050,664 parameters (224 px, 1000 classes). At 32 px,
  # patch 4, 10 classes: 1 + 64 tokens instead of 1 + 196, a 4x4x3 patch kernel, a 10-way head.
  d = 384
  want = (22_050_664 - (196 - 64) * d - (16 * 16 - 4 * 4) * 3 * d - 990 * (d + 1))
  assert _count("deit_s", image_size=32, patch_size=4) == want == 21_342_346
  # timm's old vit_small_patch16_224 (Mo et al.): 768 wide, 8 blocks, MLP 3x, no qkv bias.
  d, h = 768, 3 * 768
  block = 4 * d + 3 * d * d + (d * d + d) + (d * h + h) + (h * d + d)
  want = 16 * 16 * 3 * d + d + d + 197 * d + 8 * block + 2 * d + (d * 1000 + 1000)
  assert _count("vit_small_patch16_224", num_classes=1000) == want == 48_754_408  # timm: 48.75M


def test_augreg_parameter_names_and_layouts():
  model = create_model("vit_cifar_tiny", **TINY)
  flat = {".".join(str(getattr(k, "key", k)) for k in path): v.shape for path, v in
          jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]}
  blk = "Transformer.encoderblock_1."
  want = {
      "embedding.kernel": (4, 4, 3, 16), "embedding.bias": (16,), "cls": (1, 1, 16),
      "Transformer.posembed_input.pos_embedding": (1, 17, 16),
      blk + "LayerNorm_0.scale": (16,), blk + "LayerNorm_2.bias": (16,),
      blk + "MultiHeadDotProductAttention_1.query.kernel": (16, 2, 8),
      blk + "MultiHeadDotProductAttention_1.value.bias": (2, 8),
      blk + "MultiHeadDotProductAttention_1.out.kernel": (2, 8, 16),
      blk + "MlpBlock_3.Dense_0.kernel": (16, 32), blk + "MlpBlock_3.Dense_1.bias": (16,),
      "Transformer.encoder_norm.scale": (16,), "head.kernel": (16, 10),
  }
  for name, shape in want.items():
    assert flat[name] == shape, name


def test_old_vit_small_attention_scale_and_no_qkv_bias():
  model = nnx.eval_shape(lambda: create_model("vit_small_patch16_224"))
  attn = model.Transformer.encoderblock_0.MultiHeadDotProductAttention_1
  assert isinstance(attn, MultiHeadDotProductAttention)
  assert attn.scale == 768 ** -0.5 and attn.query.bias is None and attn.out.bias is not None
  assert model.Transformer.encoder_norm.epsilon == 1e-5
  deit = nnx.eval_shape(lambda: create_model("deit_s", image_size=32, patch_size=4))
  attn = deit.Transformer.encoderblock_0.MultiHeadDotProductAttention_1
  assert attn.scale == 64 ** -0.5 and attn.query.bias is not None
  assert deit.Transformer.encoder_norm.epsilon == 1e-6


def _numpy_forward(params, x):
  """An independent NumPy float64 ViT forward (timm semantics) from the parameter dict."""
  from math import erf
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.to_pure_dict(params))
  mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2471, 0.2435, 0.2616])
  x = (np.asarray(x, np.float64) - mean) / std
  b = x.shape[0]
  patches = x.reshape(b, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 16, 48)
  t = patches @ p["embedding"]["kernel"].reshape(48, 16) + p["embedding"]["bias"]
  t = np.concatenate([np.repeat(p["cls"], b, 0), t], 1)
  t = t + p["Transformer"]["posembed_input"]["pos_embedding"]

  def ln(v, q, eps=1e-6):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + eps) * q["scale"] + q["bias"]

  gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
  for i in range(2):
    q = p["Transformer"][f"encoderblock_{i}"]
    a = q["MultiHeadDotProductAttention_1"]
    h = ln(t, q["LayerNorm_0"])
    qq, kk, vv = (np.einsum("bnd,dhk->bhnk", h, a[n]["kernel"]) + a[n]["bias"].reshape(
        1, 2, 1, 8) for n in ("query", "key", "value"))
    logits = qq @ kk.transpose(0, 1, 3, 2) / np.sqrt(8)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhnk,hkd->bnd", w @ vv, a["out"]["kernel"]) + a["out"]["bias"]
    t = t + o
    m = q["MlpBlock_3"]
    t = t + gelu(ln(t, q["LayerNorm_2"]) @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"]) @ m[
        "Dense_1"]["kernel"] + m["Dense_1"]["bias"]
  feats = ln(t, p["Transformer"]["encoder_norm"])[:, 0]
  return feats @ p["head"]["kernel"] + p["head"]["bias"]


def test_forward_matches_an_independent_numpy_vit():
  _, params, rest = _tiny()
  x = _x()
  np.testing.assert_allclose(np.asarray(_call(params, rest, x)), _numpy_forward(params, x),
                             rtol=1e-4, atol=1e-5)


# --- ARD: the attention-gradient gate -----------------------------------------------


def test_logits_identical_under_any_gate_mask():
  _, params, rest = _tiny()
  x = _x()
  plain = np.asarray(_call(params, rest, x))
  for keep in itertools.product([False, True], repeat=2):
    gated = _call(params, rest, x, attention_grad_keep=jnp.asarray(keep))
    np.testing.assert_array_equal(np.asarray(gated), plain)


def _stop_gradient_reference(x, y, dropped):
  """Input gradient of a model whose attention branches in ``dropped`` are stop_gradient,
  built from the blocks' sub-modules without the gate."""
  fns, params, rest = _tiny()

  def loss(xx):
    m = nnx.merge(fns.graphdef, params, rest, copy=True)
    t = m.embedding(m.normalize(xx))
    t = jnp.concatenate([jnp.broadcast_to(m.cls[...], (t.shape[0], 1, 16)), t], 1)
    t = m.Transformer.posembed_input(t)
    for i, blk in enumerate(m.Transformer.blocks()):
      a = blk.MultiHeadDotProductAttention_1(blk.LayerNorm_0(t))
      t = t + (jax.lax.stop_gradient(a) if i in dropped else a)
      t = t + blk.MlpBlock_3(blk.LayerNorm_2(t))
    logits = m.head(m.Transformer.encoder_norm(t)[:, 0])
    return jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(xx.shape[0]), y])

  return jax.grad(loss)(x)


def test_input_gradient_all_kept_is_plain_and_dropped_is_stop_gradient():
  x, y = _x(), jnp.asarray([0, 3, 5, 9])
  plain = np.asarray(_input_grad(x, y))
  kept = np.asarray(_input_grad(x, y, attention_grad_keep=jnp.ones(2, bool)))
  np.testing.assert_array_equal(kept, plain)
  for keep, dropped in (((False, False), {0, 1}), ((True, False), {1}), ((False, True), {0})):
    got = np.asarray(_input_grad(x, y, attention_grad_keep=jnp.asarray(keep)))
    want = np.asarray(_stop_gradient_reference(x, y, dropped))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    assert np.abs(got - plain).max() > 1e-3 * np.abs(plain).max()  # the gate did something
  # Every attention branch cut: only attention mixes tokens and the logits read the class
  # token, so no gradient reaches the image at all (sign(0) = 0: a PGD step does nothing).
  np.testing.assert_array_equal(
      np.asarray(_input_grad(x, y, attention_grad_keep=jnp.zeros(2, bool))), 0.0)


def test_gate_shape_is_checked():
  _, params, rest = _tiny()
  with pytest.raises(ValueError, match=r"shape \(2,\)"):
    _call(params, rest, _x(), attention_grad_keep=jnp.ones(3, bool))
