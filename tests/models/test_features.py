"""``model(x, return_features=True) -> (logits, features)`` for every model class."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrobust.models import (MODELS, MobileNetV2, PreActResNet, ResNet, SimpleCNN, SmallCNN,
                              WideResNet)

from .test_models import SMALL_MODELS, _model, _stateful, _x


def _final_layer(model):
  return model.fc3 if isinstance(model, SmallCNN) else model.linear


def test_small_models_cover_every_model_class():
  classes = {type(_stateful(name)) for name in SMALL_MODELS}
  assert classes == {PreActResNet, ResNet, WideResNet, MobileNetV2, SmallCNN, SimpleCNN}
  assert set(SMALL_MODELS) <= set(MODELS)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_logits_are_the_final_layer_of_the_features(name, train):
  model = _stateful(name)
  x = _x(name)
  key = jax.random.PRNGKey(3)
  logits, feats = model(x, train=train, key=key, return_features=True)
  fc = _final_layer(model)
  assert feats.dtype == jnp.float32 and logits.dtype == jnp.float32
  assert feats.shape == (x.shape[0], fc.kernel[...].shape[0])
  want = np.asarray(feats, np.float64) @ np.asarray(fc.kernel[...], np.float64) + np.asarray(
      fc.bias[...], np.float64)
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)
  # The default call gives the same logits (a fresh copy: train mode updates BN in place).
  plain = _stateful(name)(x, train=train, key=key)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(logits))


def test_model_fns_features_fn_matches_the_module_call():
  fns, params, batch_stats = _model("preact_resnet_tiny")
  x = _x("preact_resnet_tiny")
  logits, feats = fns.features_fn(params, batch_stats)(x)
  np.testing.assert_array_equal(np.asarray(logits),
                                np.asarray(fns.logits_fn(params, batch_stats)(x)))
  want = nnx.merge(fns.graphdef, params, batch_stats, copy=True)(x, return_features=True)[1]
  np.testing.assert_array_equal(np.asarray(feats), np.asarray(want))
  # train-mode BN view: batch statistics, running averages untouched.
  before = jax.tree.map(np.asarray, batch_stats)
  lt, _ = fns.features_fn(params, batch_stats, bn="train")(x)
  np.testing.assert_array_equal(np.asarray(lt),
                                np.asarray(fns.logits_fn(params, batch_stats, bn="train")(x)))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(batch_stats)):
    np.testing.assert_array_equal(a, np.asarray(b))
  with pytest.raises(ValueError, match="BatchNorm mode"):
    fns.features_fn(params, batch_stats, bn="test")
