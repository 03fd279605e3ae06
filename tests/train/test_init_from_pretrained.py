"""The trainer's ``config.model.init_from_pretrained``: a Google augreg .npz starts the ViT recipe,
and a resumed run restores its own checkpoint over the pretrained weights."""
import jax
import numpy as np
import pytest
from flax import nnx

from jaxrobust.models import create_model
from jaxrobust.models.convert_big_vision import to_big_vision_params
from jaxrobust.train import train_and_evaluate
from jaxrobust.train.builders import build_model
from jaxrobust.train.defaults import resolve_config
from jaxrobust.train.restore import load_trained

from .helpers import load_config

# The :smoke ViT shrunk (width / depth) so that two runs stay short; the real recipe otherwise.
KWARGS = dict(patch_size=4, width=32, depth=1, num_heads=2)


def _config(num_steps, pretrained):
  # ARD, PRM and Mixup shape the attack and the loss, not the initialisation: off, to compile less.
  c = load_config("cifar10_vit_recipe", "smoke,ard=false,prm=false,mixup=false")
  c.model.kwargs = dict(KWARGS)
  c.model.init_from_pretrained = str(pretrained)
  # An update of 1e-30 x a clipped gradient leaves any weight of magnitude > 1e-22 unchanged
  # in float32 (the config refuses lr = 0): the saved weights are the initial ones.
  c.train.lr, c.train.weight_decay = 1e-30, 0.0
  c.train.num_steps = num_steps
  c.data.val_size = c.data.test_size = 40
  for attack in (c.method.attack, c.eval.val_attack, c.eval.test_attack):
    attack.num_steps = 1
  return c


def _pretrained(path, num_classes, seed):
  """An augreg .npz of the :smoke ViT's architecture with random values everywhere."""
  model = create_model("vit_cifar_tiny", num_classes=num_classes, normalize="cifar10",
                       image_size=32, seed=seed, **KWARGS)
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), state))
  arrays = to_big_vision_params(model)
  np.savez(path, **arrays)
  return arrays


def _saved(workdir):
  """The latest checkpoint's (non-EMA) parameters, ``{augreg name: array}``."""
  params = load_trained(str(workdir), "latest", use_ema=False).params
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  # Dict keys name the parameter; the Variable's '.value' attribute is not part of the name.
  return {"/".join(str(k.key) for k in path if hasattr(k, "key")): np.asarray(v)
          for path, v in flat}


@pytest.mark.slow  # two short trainer runs (about 40 s of CPU, mostly compilation).
def test_recipe_starts_from_an_augreg_npz_and_a_resume_keeps_its_checkpoint(tmp_path, data_dir):
  del data_dir
  # ImageNet-like weights with another class count (7): the backbone is loaded, the head is
  # the model's own initialisation.
  first = _pretrained(tmp_path / "a.npz", num_classes=7, seed=1)
  config = _config(2, tmp_path / "a.npz")
  workdir = tmp_path / "run"
  assert train_and_evaluate(config, str(workdir))["last"]["step"] == 2
  saved = _saved(workdir)
  init = build_model(resolve_config(config), (32, 32, 3))  # the trainer's own initial head.
  init_head = {f"head/{k}": np.asarray(v) for k, v in nnx.to_pure_dict(
      nnx.state(init.head, nnx.Param)).items()}
  assert set(saved) == set(first)
  for name, value in saved.items():
    if name.startswith("head/"):
      assert value.shape != first[name].shape
      np.testing.assert_allclose(value, init_head[name], rtol=0, atol=1e-20)
    else:
      np.testing.assert_array_equal(value, first[name], err_msg=name)
  # Resumed with another file (10 classes: its head would fit): the checkpoint wins.
  _pretrained(tmp_path / "b.npz", num_classes=10, seed=2)
  assert train_and_evaluate(_config(3, tmp_path / "b.npz"), str(workdir))["last"]["step"] == 3
  resumed = _saved(workdir)
  for name, value in resumed.items():
    np.testing.assert_allclose(value, saved[name], rtol=0, atol=1e-20, err_msg=name)
