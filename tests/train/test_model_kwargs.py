"""config.model.kwargs: extra constructor arguments, checked against the model's signature."""
import json

import jax
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.train import default_config, load_config
from jaxrobust.train.builders import (build_model, check_model_kwargs, model_fingerprint,
                                      model_kwargs)
from jaxrobust.train.defaults import validate_config


def _config(name="vit_cifar_tiny", **kwargs):
  c = default_config()
  c.model.name = name
  c.model.kwargs = dict(kwargs)
  return c


def test_unknown_kwarg_is_one_config_error_naming_it_and_the_valid_ones():
  with pytest.raises(ConfigError, match=r"config.model.kwargs.patchsize is not an argument of "
                                        r"model 'vit_cifar_tiny'; its arguments: \[.*'patch_size'"):
    validate_config(_config(patchsize=4))
  # Wrapped constructors: the noisy CNN takes its own and its base model's keywords.
  assert check_model_kwargs("noisy_simple_cnn_tiny", {"noise_std": 0.1, "widths": (4, 8)})
  with pytest.raises(ConfigError, match="not an argument of model 'noisy_simple_cnn_tiny'"):
    check_model_kwargs("noisy_simple_cnn_tiny", {"depth": 2})


@pytest.mark.parametrize("key", ["num_classes", "image_size", "dtype", "mean"])
def test_trainer_set_arguments_are_refused(key):
  with pytest.raises(ConfigError, match=f"config.model.kwargs.{key} is set by the trainer"):
    validate_config(_config(**{key: 1}))


def test_kwargs_reach_the_model_and_the_fingerprint():
  c = _config(depth=1, width=32, num_heads=2, patch_size=8)
  shape = (32, 32, 3)
  assert model_kwargs(c, shape)["depth"] == 1
  model = build_model(c, shape)
  assert model.depth == 1 and model.width == 32 and model.grid == (4, 4)
  assert jax.tree.leaves(model.Transformer.posembed_input.pos_embedding)[0].shape == (1, 17, 32)
  fp = model_fingerprint(c, shape)
  assert fp == ("vit_cifar_tiny|classes=10|in=(32, 32, 3)"
                "|kwargs=depth=1,num_heads=2,patch_size=8,width=32")
  # Without kwargs the fingerprint is the one runs always stored.
  assert model_fingerprint(_config(), shape) == "vit_cifar_tiny|classes=10|in=(32, 32, 3)"
  # A JSON round trip (tuples -> lists) keeps the fingerprint.
  assert model_fingerprint(_config(patch_size=[4, 4]), shape) == model_fingerprint(
      _config(patch_size=(4, 4)), shape)


def test_a_saved_config_with_kwargs_loads_back(tmp_path):
  c = _config(depth=1, patch_size=4)
  (tmp_path / "config.json").write_text(c.to_json_best_effort())
  loaded = load_config(str(tmp_path))
  assert loaded.model.kwargs.to_dict() == {"depth": 1, "patch_size": 4}
  # Saved configs of runs without the key load with an empty kwargs.
  saved = json.loads(default_config().to_json_best_effort())
  del saved["model"]["kwargs"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert load_config(str(tmp_path)).model.kwargs.to_dict() == {}
