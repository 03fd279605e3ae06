r"""Mo et al.'s published CIFAR-10 ViT setting: ImageNet-pretrained ViT-B / DeiT-S / old ViT-S.

The recipe of ``configs/cifar10_vit_pgd_at.py`` (PGD-10 2/255 in eval mode,
ARD + PRM with n_w = 10, Mixup/CutMix, SGD 0.9 lr 0.1 with decays at epochs
35 and 38, weight decay 1e-4 on all parameters, clipping 1.0, batch 64, 40
epochs, 32 x 32 inputs with patch 4), started as the paper does from timm's
ImageNet weights (``mo666666/When-Adversarial-Training-Meets-Vision-
Transformers:train_cifar.py``, ``pretrained=(not args.scratch)``; the
16 x 16 patch kernels block-summed to 4 x 4 and the 14 x 14 position
embeddings resized bilinearly to 8 x 8, ``model_for_cifar/deit.py:482-524``;
a fresh 10-way head). The weights are the ``.npz`` of a timm state dict or a
Google augreg ``.npz`` (README "ViT recipes"):

    python -m jaxrobust.train --config configs/cifar10_vit_recipe.py \
        --config.model.init_from_pretrained=vit_base_patch16_224.npz --workdir runs/vit_b

Without ``init_from_pretrained`` the config is refused (ConfigError) unless
``--config.model.scratch=True`` asks for the official ``--scratch`` run.

Arguments (``:arg,arg=value``): ``model=vit_b`` (default, the official
parser's ``vit_base_patch16_224``), ``deit_s`` or ``vit_small_patch16_224``
(timm's old ViT-S, width 768, depth 8, qk scale 768^-0.5 as with its
pretrained weights); ``ard=``, ``prm=``, ``mixup=``, ``objective=`` as in
``cifar10_vit_pgd_at.py``.

``:local`` — CPU scale: ``vit_cifar_tiny`` from scratch on the bundled data
(no weights needed), the recipe of ``cifar10_vit_pgd_at.py:local``.
``:smoke`` — 4 steps of ``vit_cifar_tiny`` from scratch (tests).
"""
import importlib.util
import os

from jaxrobust.errors import ConfigError
from jaxrobust.train.defaults import parse_arg

MODELS = ("vit_b", "deit_s", "vit_small_patch16_224")


def _recipe(arg: str):
  """``configs/cifar10_vit_pgd_at.py``'s get_config(arg) (the shared recipe)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_vit_pgd_at.py")
  spec = importlib.util.spec_from_file_location("_cifar10_vit_pgd_at", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  a = parse_arg(arg, local=False, smoke=False, model="vit_b", ard=True, prm=True, mixup=True,
                objective="at", epochs=0)
  if a.model not in MODELS:
    raise ConfigError(f"unknown model {a.model!r} for the published CIFAR-10 setting; choose "
                      f"one of {MODELS}")
  flags = [f"{k}={a[k]}" for k in ("model", "ard", "prm", "mixup", "objective", "epochs")]
  flags += [k for k in ("local", "smoke") if a[k]]
  c = _recipe(",".join(flags))
  # The published numbers start from ImageNet weights; :local / :smoke train vit_cifar_tiny.
  c.model.scratch = bool(a.local or a.smoke)
  return c
