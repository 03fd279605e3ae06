"""Training methods: name -> constructor from plain config data."""
from __future__ import annotations

from jaxrobust.attacks import attack_from_config
from jaxrobust.errors import ConfigError
from jaxrobust.methods.adversarial import AdversarialTraining
from jaxrobust.methods.base import ModelFns, accuracy_sum, cross_entropy
from jaxrobust.methods.standard import Standard

METHODS = ("standard", "pgd_at", "fgsm_at")


def method_from_config(cfg):
  """Builds the training method named ``cfg.name``.

  ``cfg`` fields: ``name`` in :data:`METHODS`; for ``pgd_at``/``fgsm_at`` an
  ``attack`` dict (see :func:`jaxrobust.attacks.attack_from_config`) and
  ``attack_bn`` (``'train'`` or ``'eval'``).

  Raises:
    ConfigError: unknown method or invalid attack settings.
  """
  name = cfg.get("name")
  if name == "standard":
    return Standard()
  if name in ("pgd_at", "fgsm_at"):
    attack_cfg = dict(cfg.get("attack"))
    expected = "pgd" if name == "pgd_at" else "fgsm"
    if attack_cfg.get("name") != expected:
      raise ConfigError(f"method {name!r} needs config.method.attack.name={expected!r}, "
                        f"got {attack_cfg.get('name')!r}")
    bn = cfg.get("attack_bn", "train")
    if bn not in ("train", "eval"):
      raise ConfigError(f"config.method.attack_bn must be 'train' or 'eval', got {bn!r}")
    return AdversarialTraining(attack_from_config(attack_cfg), bn, name)
  raise ConfigError(f"unknown method {name!r}; choose one of {METHODS}")


__all__ = ["AdversarialTraining", "METHODS", "ModelFns", "Standard", "accuracy_sum",
           "cross_entropy", "method_from_config"]
