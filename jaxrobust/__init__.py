"""jaxrobust: adversarial robustness of image classifiers in JAX.

Subpackages: ``attacks`` (FGSM, PGD), ``methods`` (standard, PGD-AT, FGSM-AT),
``models`` (NNX PreAct-ResNet, ResNet, WideResNet, MobileNetV2, SmallCNN),
``data``, ``train``, ``evaluate``, plus ``checkpoint`` and ``parallel``.

On CPU the library adds its measured-best XLA:CPU flags to ``XLA_FLAGS`` when
it is imported before JAX's backend starts -- after ``import jax`` is fine,
after the first JAX computation is too late and warns (see
:mod:`jaxrobust.cli` and BENCHMARKS.md). Set ``JAXROBUST_XLA_DEFAULTS=0`` to
opt out. Flags already in ``XLA_FLAGS`` win.
"""
from jaxrobust.cli import apply_cpu_defaults as _apply_cpu_defaults

if not _apply_cpu_defaults():
  from jaxrobust.cli import warn_if_cpu_defaults_missing as _warn

  _warn()

__version__ = "0.1.0"
