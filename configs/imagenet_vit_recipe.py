r"""Mo et al.'s ImageNet setting: eps 4/255, PGD-5 of 1/255, batch 512, 10 epochs, n_w = 2.

``mo666666/When-Adversarial-Training-Meets-Vision-Transformers:
train_imagenet.py, parser_imagenet.py, run_imagenet.sh``: the Imagenette
setting (``configs/imagenette_vit_recipe.py``: 224 px, ViT / DeiT patch 16,
PRM masks of 16 x 16 pixels, ImageNet normalisation, Swin momentum 0.5 and
drop path 0.1, ImageNet-pretrained timm weights required unless
``--config.model.scratch=True``) with the ImageNet budget: eps 4/255, training
attack PGD-5 of 1/255, batch 512, 10 epochs with the LR decays at epochs 5
and 8 (E - 5, E - 2), ARD / PRM warm-up n_w = 2 epochs; validation PGD-10
and test PGD-20 of 1/255 at eps 4/255.

Data: TFDS ``imagenet2012``, which TFDS prepares only from the ILSVRC-2012
archives downloaded by hand into its ``manual_dir``; without them the trainer
stops with one DataError. The data pipeline holds a split in host memory
(about 190 GB for the 1.28M training images at 224 px): the full run needs
such a host.

Arguments: ``model=deit_s`` (default, the official parser), ``deit_ti``,
``vit_b``, ``vit_small_patch16_224``, ``swin_t``, ``swin_s``, ``swin_b``;
``ard=``, ``prm=``, ``mixup=``, ``objective=``.

``:local`` / ``:smoke`` — as ``imagenette_vit_recipe.py`` (64 / 32 px CPU
models from scratch), with this config's eps 4/255 and step 1/255.
"""
import importlib.util
import os

from jaxrobust.attacks.threat import attack_config
from jaxrobust.errors import ConfigError
from jaxrobust.train.defaults import parse_arg


def _sibling(name: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  a = parse_arg(arg, local=False, smoke=False, model="deit_s", ard=True, prm=True, mixup=True,
                objective="at", epochs=0)
  imagenette = _sibling("imagenette_vit_recipe")
  if a.model not in imagenette.MODELS:
    raise ConfigError(f"unknown model {a.model!r} for the ImageNet setting; choose one of "
                      f"{imagenette.MODELS}")
  epochs = a.epochs or (5 if a.local else 10)
  flags = [f"{k}={a[k]}" for k in ("ard", "prm", "mixup", "objective")] + [f"epochs={epochs}"]
  flags += [k for k in ("local",) if a[k]]
  c = imagenette._recipe(",".join(flags))  # pylint: disable=protected-access
  c.data.name = "imagenet2012"
  c.eps = 4 / 255
  c.method.attack.update(num_steps=5, step_size=1 / 255)
  c.method.warmup_epochs = 2.0
  c.train.batch_size = 512
  c.eval.val_attack = attack_config("pgd", step_size=1 / 255, num_steps=10, loss="ce",
                                    random_start="uniform")
  c.eval.test_attack = attack_config("pgd", step_size=1 / 255, num_steps=20, loss="ce",
                                     random_start="uniform", early_stop=True)
  if a.local:
    c.train.batch_size = 64
    c.method.attack.update(num_steps=3)
    c.method.warmup_epochs = epochs / 5  # n_w = 2 of 10 epochs.
  imagenette.configure(c, a, image_size=224)
  return c
