r"""Mo et al.'s Imagenette setting: ViTs / DeiTs / Swins at 224 px, patch 16, eps 8/255.

``mo666666/When-Adversarial-Training-Meets-Vision-Transformers:
train_imagenette.py, parser_imagenette.py, run_imagenette.sh``: the CIFAR
recipe (PGD-10 of 2/255 in eval mode, ARD + PRM with n_w = 10, Mixup/CutMix,
SGD lr 0.1 with decays at E - 5 and E - 2, weight decay 1e-4, clipping 1.0,
batch 64, 40 epochs) on 224 x 224 Imagenette with ImageNet normalisation,
ImageNet-pretrained timm weights (``--config.model.init_from_pretrained=``
the ``.npz`` of the timm state dict; ``--config.model.scratch=True``
otherwise), ViT / DeiT patch 16 and PRM masks of 16 x 16 pixels
(``--patch 16``). Swin (``model=swin_t|swin_s|swin_b``): SGD momentum 0.5
(``train_imagenette.py:86-101``) and stochastic depth 0.1 on the attention
branch (their Swin's default ``drop_path_rate``); PRM still masks 16 x 16
pixels (the 14 x 14 token grid of Swin's third stage).

Data: TFDS ``imagenette`` (``config.data.source='tfds'``), resized and
center-cropped to 224 by the loader, random crop with 4 pixels of zero
padding and flips. TFDS serves Imagenette **v2** (``full-size-v2``, the 2019
re-split: 9,469 train / 3,925 validation images), not the v1 split of the
paper's runs, so numbers are not directly comparable; the official loader
also resizes to 224 x 224 without keeping the aspect ratio. The test split is
TFDS's ``validation``. Nothing is downloaded by the tests: without a prepared
dataset the trainer stops with one DataError naming ``tfds build imagenette``.

    python -m jaxrobust.train --config configs/imagenette_vit_recipe.py:model=swin_t \
        --config.model.init_from_pretrained=swin_tiny_patch4_window7_224.npz --workdir runs/in_swin

Arguments: ``model=deit_ti`` (default, ``run_imagenette.sh``), ``deit_s``,
``vit_b``, ``vit_small_patch16_224``, ``swin_t``, ``swin_s``, ``swin_b``;
``ard=``, ``prm=``, ``mixup=``, ``objective=`` as ``cifar10_vit_pgd_at.py``.

``:local`` — CPU scale: 64 x 64 images, ``vit_cifar_tiny`` with patch 8 (or
``swin_cifar_tiny`` with patch 4 for a Swin) from scratch, PGD-3 of 3/255, 5
epochs. ``:smoke`` — 32 x 32, ``vit_cifar_tiny`` patch 4, 4 steps (tests;
needs the prepared dataset).
"""
import importlib.util
import os

from jaxrobust.errors import ConfigError
from jaxrobust.train.defaults import apply_smoke, parse_arg

MODELS = ("deit_ti", "deit_s", "vit_b", "vit_small_patch16_224", "swin_t", "swin_s", "swin_b")
PRM_PATCH = 16  # --patch 16 (parser_imagenette.py).


def _recipe(arg: str):
  """``configs/cifar10_vit_pgd_at.py``'s get_config(arg) (the shared recipe)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_vit_pgd_at.py")
  spec = importlib.util.spec_from_file_location("_cifar10_vit_pgd_at", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def configure(c, a, *, image_size: int, local_image_size: int = 64):
  """The ImageNet-family settings shared with ``imagenet_vit_recipe.py``, in place."""
  swin = a.model.startswith("swin")
  c.data.source = "tfds"
  c.data.pad, c.data.pad_mode, c.data.flip = 4, "constant", True
  c.model.normalize = "imagenet"
  c.model.scratch = False
  if a.local or a.smoke:
    size = 32 if a.smoke else local_image_size
    c.data.image_size = size
    c.model.scratch = True  # CPU-sized models from scratch.
    c.model.name = "swin_cifar_tiny" if swin and not a.smoke else "vit_cifar_tiny"
    patch = 4 if a.smoke or swin else 8
    c.model.kwargs = dict(patch_size=patch)
    prm_patch = 4 if a.smoke else 8
  else:
    c.data.image_size = image_size
    c.model.name = a.model
    c.model.kwargs = dict(drop_path_rate=0.1) if swin else dict(patch_size=16)
    prm_patch = PRM_PATCH
  if c.method.attack.name == "pgd_prm":
    c.method.attack.patch_size = prm_patch
  if swin:
    c.train.momentum = 0.5  # train_imagenette.py / train_imagenet.py for every Swin.
    c.train.cyclic_base_momentum = -1.0  # unused (piecewise schedule); below 0.5.
  if a.smoke:
    apply_smoke(c, model=c.model.name)


def get_config(arg=None):
  a = parse_arg(arg, local=False, smoke=False, model="deit_ti", ard=True, prm=True, mixup=True,
                objective="at", epochs=0)
  if a.model not in MODELS:
    raise ConfigError(f"unknown model {a.model!r} for the Imagenette setting; choose one of "
                      f"{MODELS}")
  flags = [f"{k}={a[k]}" for k in ("ard", "prm", "mixup", "objective", "epochs")]
  flags += [k for k in ("local",) if a[k]]
  c = _recipe(",".join(flags))
  c.data.name = "imagenette"
  configure(c, a, image_size=224)
  return c
