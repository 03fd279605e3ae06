"""jaxrobust: adversarial robustness of image classifiers in JAX.

Conventions: images are float32 NHWC in [0, 1]; ``eps`` and step sizes are in
pixel units (8/255); attack objectives are maximised; normalisation lives
inside the model.

Subpackages and modules (imported on first use, so ``import jaxrobust`` is
cheap), from the bottom of the dependency order to the top -- no package
imports one above it:

==========================  =====================================================
``jaxrobust.errors``        the exceptions every entry point turns into one line
``jaxrobust.parallel``      device mesh, sharding helpers, ``jax.distributed``
``jaxrobust.data``          bundled ``.npz`` / TFDS sources, metadata, splits,
                            augmentation, iterators, corrupted test sets
``jaxrobust.models``        Flax NNX models (``get_model``/``create_model``,
                            ``ModelFns``); logits or penultimate features
``jaxrobust.losses``        TRADES / MART / ARD / IAD / RSLAD objectives
``jaxrobust.attacks``       FGSM, PGD, APGD, FAB, Square, TRADES-L2 as pure
                            functions; the attack registry
``jaxrobust.accuracy``      accuracy of a model under named attacks (jitted,
                            sharded), shared by validation and evaluation
``jaxrobust.methods``       training objectives; the method registry
``jaxrobust.checkpoint``    Orbax checkpoints: latest-N, best, digests
``jaxrobust.train``         config schema, optimisers, the jitted train step,
                            the trainer, restoring trained runs
``jaxrobust.weights``       weight averaging: interpolation (WiSE-FT), model
                            soups, SWA, Fisher merging, BatchNorm recalibration
``jaxrobust.evaluate``      AutoAttack (``run_autoattack``), the evaluation suite
                            and CLI
``jaxrobust.rift``          RiFT: module robust criticality, fine-tuning,
                            interpolation
==========================  =====================================================

Entry points: ``python -m jaxrobust.train``, ``python -m jaxrobust.evaluate``,
``python -m jaxrobust.rift``,
``python -m jaxrobust.weights``.

On CPU the library adds its measured-best XLA:CPU flags to ``XLA_FLAGS`` when
it is imported before JAX's backend starts -- after ``import jax`` is fine,
after the first JAX computation is too late and warns (see
:mod:`jaxrobust.cli` and BENCHMARKS.md). Set ``JAXROBUST_XLA_DEFAULTS=0`` to
opt out. Flags already in ``XLA_FLAGS`` win.
"""
import importlib as _importlib

from jaxrobust.cli import apply_cpu_defaults as _apply_cpu_defaults

if not _apply_cpu_defaults():
  from jaxrobust.cli import warn_if_cpu_defaults_missing as _warn

  _warn()

__version__ = "0.1.0"

_SUBMODULES = ("accuracy", "attacks", "checkpoint", "data", "errors", "evaluate", "losses",
               "methods", "models", "parallel", "rift", "train", "weights")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name):
  """Imports ``jaxrobust.<name>`` on first access (PEP 562)."""
  if name in _SUBMODULES:
    return _importlib.import_module(f"jaxrobust.{name}")
  raise AttributeError(f"module 'jaxrobust' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_SUBMODULES))
