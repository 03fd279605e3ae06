"""The ViT recipe configs: pretrained weights required for the published setting, the
Imagenette / ImageNet budgets, Swin's momentum, and a clear DataError without the data."""
import numpy as np
import pytest

from jaxrobust.errors import ConfigError, DataError
from jaxrobust.train.builders import build_splits
from jaxrobust.train.defaults import resolve_config, validate_config

from .helpers import load_config


@pytest.mark.parametrize("name", ["cifar10_vit_recipe", "imagenette_vit_recipe",
                                  "imagenet_vit_recipe"])
def test_published_setting_needs_pretrained_weights_or_scratch(name, tmp_path):
  c = load_config(name)
  with pytest.raises(ConfigError, match="init_from_pretrained=PATH.*scratch=True"):
    validate_config(c)
  c.model.init_from_pretrained = str(tmp_path / "absent.npz")
  with pytest.raises(ConfigError, match="is not a file"):
    validate_config(c)
  np.savez(tmp_path / "w.npz", x=np.zeros(1))
  c.model.init_from_pretrained = str(tmp_path / "w.npz")
  validate_config(c)  # the file's content is checked when the trainer converts it.
  c.model.init_from_pretrained = ""
  c.model.scratch = True
  validate_config(c)
  for arg in ("local", "smoke"):  # CPU-sized models from scratch: no weights needed.
    validate_config(load_config(name, arg))


def test_imagenette_and_imagenet_settings():
  c = load_config("imagenette_vit_recipe", "model=swin_t")
  assert (c.data.name, c.data.source, c.data.image_size) == ("imagenette", "tfds", 224)
  assert c.model.normalize == "imagenet" and c.model.kwargs.drop_path_rate == 0.1
  assert c.train.momentum == 0.5 and c.method.attack.patch_size == 16
  assert load_config("imagenette_vit_recipe").model.kwargs.patch_size == 16
  assert load_config("imagenette_vit_recipe").train.momentum == 0.9
  c = resolve_config(load_config("imagenet_vit_recipe"))
  assert c.data.name == "imagenet2012" and c.train.batch_size == 512
  assert c.train.num_epochs == 10 and tuple(c.train.boundaries_epochs) == (5.0, 8.0)
  assert c.method.warmup_epochs == 2.0
  for attack in (c.method.attack, c.eval.val_attack, c.eval.test_attack):
    assert attack.eps == 4 / 255 and attack.step_size == 1 / 255
  assert c.method.attack.num_steps == 5


def test_smoke_without_the_dataset_is_one_data_error(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  class Unprepared:  # what TFDS offers for a dataset nobody prepared, without downloading.
    data_dir = str(tmp_path)

    def is_prepared(self):
      return False

    def download_and_prepare(self, **kwargs):
      raise ConnectionError("downloads are not allowed here")

  monkeypatch.setattr(tfds, "builder", lambda *a, **k: Unprepared())
  for name in ("imagenette_vit_recipe", "imagenet_vit_recipe"):
    c = load_config(name, "smoke")
    validate_config(c)
    with pytest.raises(DataError, match=f"TFDS could not provide {c.data.name}"):
      build_splits(c)
