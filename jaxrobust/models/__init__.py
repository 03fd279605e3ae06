"""Flax NNX models and the name -> constructor registry.

Every model maps float32 NHWC images in [0, 1] to float32 logits ``[B, K]``
and is called as ``model(x, train=..., key=...)``: ``train=False`` is the eval
view (BatchNorm running averages; nothing is updated), ``train=True`` uses batch
statistics and updates the running averages in place. Both views share the
same weights. Mean/std normalisation lives inside the model.

Penultimate features (linear probes, rotation heads, feature distillation)::

    logits, features = model(x, train=..., key=..., return_features=True)

``features`` is float32 ``[B, D]``, the input of the final classifier layer
(after global pooling / the last hidden layer), so ``logits == features @ W +
b`` for that layer's kernel ``W`` ``[D, K]`` and bias ``b``; the logits are
those of the default call. Every registered model supports it (the shared
:func:`jaxrobust.models.layers.classifier_head`); functionally, use
:meth:`ModelFns.features_fn`.

:class:`ModelFns` (:mod:`jaxrobust.models.functional`) evaluates a model as
pure functions of its weights; ``ModelFns.logits_fn`` is what attacks call.
A new model is one file plus :func:`register_model`; :func:`get_model`
(= :func:`create_model`) builds one by name.
"""
from __future__ import annotations

import functools
from typing import Callable

from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.models.functional import ModelFns
from jaxrobust.models.layers import (CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD,
                                     MNIST_MEAN, MNIST_STD, Normalize)
from jaxrobust.models.mobilenet import CIFAR_CFG, MobileNetV2
from jaxrobust.models.noisy import NOISY_MODELS
from jaxrobust.models.resnet import PreActResNet, ResNet
from jaxrobust.models.small_cnn import SimpleCNN, SmallCNN
from jaxrobust.models.swin import SWIN_MODELS, SwinTransformer
from jaxrobust.models.vit import VIT_MODELS, VisionTransformer
from jaxrobust.models.wide_resnet import WideResNet

_TINY_MBV2 = ((1, 8, 1, 1), (6, 16, 1, 2), (6, 24, 1, 2))

MODELS: dict[str, Callable[..., nnx.Module]] = {
    "preact_resnet18": functools.partial(PreActResNet, num_blocks=(2, 2, 2, 2)),
    "preact_resnet18_w16": functools.partial(PreActResNet, num_blocks=(2, 2, 2, 2),
                                             widths=(16, 32, 64, 128)),
    "preact_resnet_tiny": functools.partial(PreActResNet, num_blocks=(1, 1),
                                            widths=(8, 16)),
    "resnet18": functools.partial(ResNet, num_blocks=(2, 2, 2, 2)),
    "resnet34": functools.partial(ResNet, num_blocks=(3, 4, 6, 3)),
    "resnet_tiny": functools.partial(ResNet, num_blocks=(1, 1), widths=(8, 16)),
    "wrn_28_10": functools.partial(WideResNet, depth=28, width=10),
    "wrn_34_10": functools.partial(WideResNet, depth=34, width=10),
    "wrn_70_16": functools.partial(WideResNet, depth=70, width=16),
    "wrn_16_4": functools.partial(WideResNet, depth=16, width=4),
    "wrn_10_1": functools.partial(WideResNet, depth=10, width=1),
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v2_tiny": functools.partial(MobileNetV2, cfg=_TINY_MBV2, stem=8, head=32),
    "small_cnn": SmallCNN,
    "small_cnn_tiny": functools.partial(SmallCNN, channels=(4, 4, 8, 8), hidden=16),
    "simple_cnn": SimpleCNN,
    "simple_cnn_tiny": functools.partial(SimpleCNN, widths=(8, 16), convs_per_stage=1),
    **NOISY_MODELS,  # stochastic: Gaussian input noise in every forward pass
}

NORMALIZATIONS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "mnist": (MNIST_MEAN, MNIST_STD),
                  "imagenet": (IMAGENET_MEAN, IMAGENET_STD), "none": (None, None)}


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3,
                 normalize: str = "cifar10", dtype=None, seed: int = 0, **kwargs
                 ) -> nnx.Module:
  """Builds registered model ``name``.

  Args:
    name: a key of :data:`MODELS`.
    num_classes: K, the number of logits.
    in_channels: C of the NHWC input (3 for CIFAR, 1 for MNIST).
    normalize: ``'cifar10'``, ``'mnist'``, ``'imagenet'`` (timm's
      IMAGENET_DEFAULT_MEAN / STD, the DeiT / Swin weights) or ``'none'``: the
      mean/std applied inside the model.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32,
      logits are float32.
    seed: initialisation seed.
    **kwargs: extra constructor arguments (e.g. ``image_size`` for SmallCNN).

  Raises:
    ConfigError: unknown model or normalisation name.
  """
  if name not in MODELS:
    raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
  if normalize not in NORMALIZATIONS:
    raise ConfigError(f"unknown normalize {normalize!r}; choose one of "
                      f"{sorted(NORMALIZATIONS)}")
  mean, std = NORMALIZATIONS[normalize]
  return MODELS[name](num_classes=num_classes, in_channels=in_channels, mean=mean,
                      std=std, dtype=dtype, rngs=nnx.Rngs(seed), **kwargs)


def register_model(name: str, constructor: Callable[..., nnx.Module], *,
                   replace: bool = False) -> Callable[..., nnx.Module]:
  """Adds model ``name`` to :data:`MODELS` (a new model = one file + this call).

  Args:
    name: the ``config.model.name``.
    constructor: ``constructor(num_classes=, in_channels=, mean=, std=, dtype=,
      rngs=, **kwargs) -> nnx.Module`` whose ``__call__(x, train=, key=,
      return_features=)`` follows the conventions of this module. A module with
      random parts at evaluation time sets ``stochastic = True``.
    replace: allow replacing an existing entry.

  Returns:
    ``constructor`` (usable as a decorator via ``functools.partial``).

  Raises:
    ConfigError: ``name`` is taken and ``replace`` is False.
  """
  if name in MODELS and not replace:
    raise ConfigError(f"model {name!r} is already registered; pass replace=True to override")
  MODELS[name] = constructor
  return constructor


get_model = create_model

# Vision Transformers (jaxrobust.models.vit): ViT-Ti/S/B, DeiT-Ti/S, timm's old ViT-S of Mo et
# al., and the CPU-sized vit_cifar_tiny. Their constructors take ``image_size`` (H, W), which
# the trainer fills from the data (jaxrobust.train.builders.model_kwargs).
for _name, _ctor in VIT_MODELS.items():
  register_model(_name, _ctor)
# Swin Transformers (jaxrobust.models.swin): Swin-T/S/B (timm's configurations) and the
# CPU-sized swin_cifar_tiny; ``image_size`` filled from the data like the ViTs.
for _name, _ctor in SWIN_MODELS.items():
  register_model(_name, _ctor)


__all__ = ["CIFAR_CFG", "MODELS", "MobileNetV2", "ModelFns", "Normalize", "PreActResNet",
           "ResNet", "SWIN_MODELS", "SimpleCNN", "SmallCNN", "SwinTransformer", "VIT_MODELS",
           "VisionTransformer", "WideResNet", "create_model", "get_model", "register_model"]
