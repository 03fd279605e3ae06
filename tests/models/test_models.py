"""Model registry: shapes, BatchNorm views, normalisation, parameter counts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.models import MODELS, Normalize, create_model
from jaxrobust.models.layers import CIFAR10_MEAN, CIFAR10_STD
from jaxrobust.models.small_cnn import _max_pool

from ..numpy_models import numpy_initialised

MNIST_MODELS = ("small_cnn", "small_cnn_tiny")
# The CNNs (the ViTs, e.g. vit_cifar_tiny, need >= 4x4 tokens: tests/models/test_vit.py).
# One small variant per architecture class; wrappers (noisy_*), ViTs and Swins have their own
# tests (tests/models/test_vit.py, test_swin.py).
SMALL_MODELS = sorted([k for k in MODELS
                       if k.endswith("_tiny") and not k.startswith(("vit_", "swin_", "noisy_"))]
                      + ["wrn_10_1", "small_cnn", "simple_cnn"])


def _kwargs(name):
  if name in MNIST_MODELS:
    return dict(in_channels=1, normalize="mnist")
  return {}


def _input_shape(name, batch=2):
  return (batch, 28, 28, 1) if name in MNIST_MODELS else (batch, 32, 32, 3)


def _num_params(name, **kwargs):
  model = nnx.eval_shape(lambda: create_model(name, **kwargs))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@functools.lru_cache(maxsize=None)
def _model(name, normalize=None, seed=0):
  """Model ``name`` split into (ModelFns, params, batch_stats), NumPy weights
  (real initialisation is covered by :func:`test_seed_determinism`)."""
  kwargs = _kwargs(name)
  if normalize is not None:
    kwargs["normalize"] = normalize
  return numpy_initialised(name, seed=seed, **kwargs)


def _stateful(name, **kwargs):
  fns, params, batch_stats = _model(name, **kwargs)
  return nnx.merge(fns.graphdef, params, batch_stats, copy=True)


def _x(name, seed=0):
  """NumPy test images (each new jax.random shape costs an XLA compile).

  The CIFAR models get 16 x 8 x 8 x 3, the shape of tests/attacks/test_pgd.py,
  so the compiled ops are shared; the MNIST models 4 x 28 x 28 x 1.
  """
  shape = (4, 28, 28, 1) if name in MNIST_MODELS else (16, 8, 8, 3)
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


# --- registry and shapes --------------------------------------------------------------


def test_small_models_listed():
  assert len(SMALL_MODELS) == 8
  assert set(MNIST_MODELS) <= set(SMALL_MODELS)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_logits_shape_and_dtype(name):
  # Abstract evaluation: the whole init + forward is traced (shape errors surface)
  # without paying XLA compilation for every model.
  x = jax.ShapeDtypeStruct(_input_shape(name, 3), jnp.float32)
  for train in (False, True):
    out = jax.eval_shape(
        lambda x: create_model(name, num_classes=7, **_kwargs(name))(
            x, train=train, key=jax.random.PRNGKey(0)), x)
    assert out.shape == (3, 7) and out.dtype == jnp.float32, (name, train)


def test_bf16_compute_keeps_float32_logits():
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  out = jax.eval_shape(lambda x: create_model("preact_resnet_tiny", dtype=jnp.bfloat16)(x), x)
  assert out.dtype == jnp.float32


def test_real_forward_small_cnn_tiny_and_simple_cnn_tiny():
  for name in ("simple_cnn_tiny", "small_cnn_tiny"):
    fns, params, bs = _model(name)
    x = _x(name)
    logits, _ = fns.apply(params, bs, x, train=False)
    assert logits.shape == (x.shape[0], 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("name, count", [
    ("preact_resnet18", 11_172_170),  # Rice et al. / AWP PreActResNet-18 (final BN)
    ("mobilenet_v2", 2_296_922),      # kuangliu/pytorch-cifar MobileNetV2
    ("resnet18", 11_173_962),         # kuangliu/pytorch-cifar ResNet18
    ("wrn_28_10", 36_479_194),
    ("wrn_34_10", 46_160_474),        # TRADES WRN-34-10
])
def test_parameter_counts(name, count):
  assert _num_params(name) == count


def test_small_cnn_parameter_count():
  # TRADES SmallCNN: convs 1->32->32->64->64 (3x3, bias), fc 1024->200->200->10.
  by_hand = ((9 * 1 + 1) * 32 + (9 * 32 + 1) * 32 + (9 * 32 + 1) * 64 + (9 * 64 + 1) * 64
             + (64 * 4 * 4 + 1) * 200 + (200 + 1) * 200 + (200 + 1) * 10)
  assert by_hand == 312_202
  assert _num_params("small_cnn", in_channels=1, normalize="mnist") == 312_202


def test_unknown_model_and_normalization():
  with pytest.raises(ConfigError, match="unknown model 'nope'"):
    create_model("nope")
  with pytest.raises(ConfigError, match="unknown normalize 'imagenet21k'"):
    create_model("simple_cnn_tiny", normalize="imagenet21k")


def test_seed_determinism():
  # one conv stage: each kernel shape costs an XLA compile of its initialiser
  make = lambda seed: create_model("simple_cnn_tiny", widths=(8,), seed=seed)
  a, b, c = (nnx.state(make(s), nnx.Param) for s in (0, 0, 1))
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert all(np.array_equal(u, v) for u, v in zip(leaves_a, leaves_b))
  kernels = lambda s: [v for p, v in jax.tree_util.tree_flatten_with_path(s)[0]
                       if "kernel" in str(p)]
  assert len(kernels(a)) == 2  # conv, linear
  assert not any(np.array_equal(u, v) for u, v in zip(kernels(a), kernels(c)))
  # PyTorch-like init: BN scale 1 / bias 0, running stats 0 / 1.
  bs = nnx.state(make(0), nnx.BatchStat)
  means = [v for p, v in jax.tree_util.tree_flatten_with_path(bs)[0] if "mean" in str(p)]
  variances = [v for p, v in jax.tree_util.tree_flatten_with_path(bs)[0] if "var" in str(p)]
  assert len(means) == len(variances) == 1
  assert all(np.all(np.asarray(m) == 0) for m in means)
  assert all(np.all(np.asarray(v) == 1) for v in variances)


# --- BatchNorm views ------------------------------------------------------------------


def _stats_equal(a, b):
  return all(np.array_equal(np.asarray(u), np.asarray(v))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_eval_view_keeps_batch_stats_train_view_updates():
  fns, params, bs = _model("simple_cnn_tiny")
  copy = jax.tree.map(np.array, bs)
  x = _x("simple_cnn_tiny")
  _, bs_eval = fns.apply(params, bs, x, train=False)
  assert bs_eval is bs
  _, bs_train = fns.apply(params, bs, x, train=True)
  assert jax.tree.structure(bs_train) == jax.tree.structure(bs)
  assert not _stats_equal(bs_train, bs)
  assert _stats_equal(bs, copy)  # the input state is not mutated by either view


def test_stateful_model_views():
  model = _stateful("simple_cnn_tiny")
  x = _x("simple_cnn_tiny")
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  model(x, train=False)
  assert _stats_equal(nnx.state(model, nnx.BatchStat), before)
  model(x, train=True)
  assert not _stats_equal(nnx.state(model, nnx.BatchStat), before)


def test_running_average_momentum():
  # PyTorch momentum 0.1: running = 0.9 running + 0.1 batch (biased variance in flax).
  model = _stateful("simple_cnn_tiny")
  x = _x("simple_cnn_tiny", seed=3)
  bn = model.bns[0]
  mean0, var0 = np.array(bn.mean[...]), np.array(bn.var[...])
  h = np.asarray(model.convs[0](model.normalize(x)))
  model(x, train=True)
  np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.9 * mean0 + 0.1 * h.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 * var0 + 0.1 * h.var((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_eval_view_is_per_example_train_view_is_not():
  fns, params, bs = _model("simple_cnn_tiny")
  x = _x("simple_cnn_tiny", seed=1)
  # a batch of identical examples would have zero-variance batch statistics;
  # random inputs differ.
  # the first 4 examples with two different sets of batch mates
  other = jnp.concatenate([x[:4], _x("simple_cnn_tiny", seed=7)[4:]])
  ev, _ = fns.apply(params, bs, x, train=False)
  ev_other, _ = fns.apply(params, bs, other, train=False)
  np.testing.assert_allclose(np.asarray(ev[:4]), np.asarray(ev_other[:4]), rtol=1e-5,
                             atol=1e-6)
  tr, _ = fns.apply(params, bs, x, train=True)
  tr_other, _ = fns.apply(params, bs, other, train=True)
  assert not np.allclose(np.asarray(tr[:4]), np.asarray(tr_other[:4]), atol=1e-4)
  # logits_fn views agree with apply
  np.testing.assert_array_equal(np.asarray(fns.logits_fn(params, bs)(x)), np.asarray(ev))
  np.testing.assert_array_equal(np.asarray(fns.logits_fn(params, bs, bn="train")(x)),
                                np.asarray(tr))
  with pytest.raises(ValueError, match="unknown BatchNorm mode"):
    fns.logits_fn(params, bs, bn="frozen")


# --- normalisation ----------------------------------------------------------------------


def test_normalize_by_hand():
  x = jnp.array([[[[0.5, 0.25, 1.0]]]])
  out = Normalize((0.5, 0.0, 0.2), (0.25, 0.5, 0.4))(x)
  # (x - mean) / std per channel
  np.testing.assert_allclose(np.asarray(out), [[[[0.0, 0.5, 2.0]]]], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(Normalize()(x)), np.asarray(x))


def test_normalize_cifar_constants():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 3, 3, 3)), jnp.float32)
  out = Normalize(CIFAR10_MEAN, CIFAR10_STD)(x)
  expected = (np.asarray(x) - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


def test_normalisation_lives_inside_model():
  x = _x("simple_cnn_tiny", seed=2)
  with_norm = _stateful("simple_cnn_tiny", normalize="cifar10")
  without = _stateful("simple_cnn_tiny", normalize="none")
  pre = (x - jnp.asarray(CIFAR10_MEAN)) / jnp.asarray(CIFAR10_STD)
  np.testing.assert_allclose(np.asarray(with_norm(x)), np.asarray(without(pre)),
                             rtol=1e-4, atol=1e-5)


# --- SmallCNN ------------------------------------------------------------------------------


def test_small_cnn_dropout():
  fns, params, bs = _model("small_cnn_tiny")
  x = _x("small_cnn_tiny")
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  run = lambda train, key: np.asarray(fns.apply(params, bs, x, train=train, key=key)[0])
  a, b = run(True, k1), run(True, k2)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(run(True, k1), a)          # same key, same mask
  evaluation = run(False, None)
  np.testing.assert_array_equal(run(False, k1), evaluation)  # eval ignores the key
  np.testing.assert_array_equal(run(True, None), evaluation)  # no key: no dropout


@pytest.mark.parametrize("shape", [(16, 8, 8, 8), (2, 7, 9, 4)])
def test_reshape_max_pool_equals_nnx_max_pool(shape):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  ref = nnx.max_pool(x, (2, 2), strides=(2, 2))
  out = _max_pool(x)
  assert out.shape == ref.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  w = jnp.asarray(np.random.default_rng(1).normal(size=ref.shape), jnp.float32)
  g = jax.grad(lambda x: jnp.sum(_max_pool(x) * w))(x)
  g_ref = jax.grad(lambda x: jnp.sum(nnx.max_pool(x, (2, 2), strides=(2, 2)) * w))(x)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(g_ref))
