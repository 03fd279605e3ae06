"""jaxrobust: adversarial robustness of image classifiers in JAX.

Subpackages: ``attacks`` (FGSM, PGD), ``methods`` (standard, PGD-AT, FGSM-AT),
``models`` (NNX PreAct-ResNet, ResNet, WideResNet, MobileNetV2, SmallCNN),
``data``, ``train``, ``evaluate``, plus ``checkpoint`` and ``parallel``.

On CPU the library adds its measured-best XLA:CPU flags to ``XLA_FLAGS`` when
it is imported before JAX (see :mod:`jaxrobust.cli` and BENCHMARKS.md); set
``JAXROBUST_XLA_DEFAULTS=0`` to opt out. Flags already in ``XLA_FLAGS`` win.
"""
import os as _os
import sys as _sys

if "jax" not in _sys.modules and _os.environ.get("JAXROBUST_XLA_DEFAULTS", "1") != "0":
  from jaxrobust.cli import apply_cpu_defaults as _apply
  _apply()

__version__ = "0.1.0"
