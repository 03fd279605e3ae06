"""The RiFT config schema (``python -m jaxrobust.rift --config configs/cifar10_rift.py``).

Two protocols (``config.protocol``):

* ``'validation'`` (default, no test-set leakage): the MRC adversarial set,
  the fine-tuning epoch, the interpolation grid and the re-initialisation
  table use the validation split held out from train; fine-tuning trains on
  the rest of train; the test split is touched only for the final numbers
  (clean, PGD-20, AutoAttack, OOD on ``test[:1000]``, the exact CIFAR-10
  subset). Its figures are this library's, not comparable like for like with
  the paper's.
* ``'official'`` (``microsoft/robustlearn:RiFT``, METHODS 2.8, and the paper):
  MRC over the whole test split (``main.py:27-28``: ``train=False``), fine-tuning
  on all training images with the epoch of best clean *test* accuracy
  (``main.py:306-320``), the alpha grid on test (``utils.py`` ``interpolation``),
  PGD-10 robust accuracy as the worst of 3 runs over the whole test split
  (paper Sec. 5.1), OOD = official CIFAR-10-C, 18 corruptions x 5 severities
  (``utils.py`` ``evaluate_cifar_corruption``). Selection on test leaks; use it
  to compare with published numbers.

Every PGD here uses step 2/255: the official code's ``alpha=2/225``
(``main.py:20``, ``utils.py:77``) is a typo for 2/255.
"""
from __future__ import annotations

import ml_collections

from jaxrobust.attacks import NORMS, attack_from_config
from jaxrobust.attacks.threat import attack_config, resolve_attack
from jaxrobust.errors import ConfigError
from jaxrobust.rift.evaluation import REDUCTIONS
from jaxrobust.rift.mrc import MRCSettings
from jaxrobust.rift.ood import RIFT_CORRUPTIONS
from jaxrobust.utils.paths import compile_regex

# PGD-10 / PGD-20, step 2/255 (the official 2/225 is a typo), uniform start; eps / norm from
# config.eps / config.norm.
PGD10 = dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce", random_start="uniform")
PGD20 = dict(PGD10, num_steps=20)
ATTACK_BRANCHES = (("mrc", "attack"), ("eval", "val_attack"), ("eval", "test_attack"))
PROTOCOLS = ("validation", "official")
OOD_SOURCES = ("auto", "tfds", "generated", "official", "none")


def _pgd(settings):
  settings = dict(settings)
  return attack_config(settings.pop("name"), **settings)


def default_rift_config(protocol: str = "validation") -> ml_collections.ConfigDict:
  """RiFT defaults for a CIFAR-10 model trained by ``python -m jaxrobust.train``.

  Args:
    protocol: ``'validation'`` (leakage-free default) or ``'official'`` (the
      paper's and the official code's protocol; see the module docstring).

  Raises:
    ConfigError: an unknown protocol.
  """
  if protocol not in PROTOCOLS:
    raise ConfigError(f"protocol={protocol!r}; use one of {PROTOCOLS}")
  c = ml_collections.ConfigDict()
  # 'validation': every choice on the validation split; 'official': on test, as the official
  # code (use configs/cifar10_rift.py:official, which also sets the official evaluation).
  c.protocol = protocol
  c.seed = 0
  c.num_devices = 0  # 0: all visible devices.
  c.at_workdir = ""  # --workdir of the adversarially trained run (required).
  c.at_which = "best"  # its 'best' (validation-selected) or 'latest' checkpoint.
  # The threat model of every attack (MRC set, validation, test) that leaves eps / norm unset.
  c.eps = 8 / 255  # pixel units.
  c.norm = "linf"

  c.mrc = ml_collections.ConfigDict()
  # 'val' or 'test' (official: main.py:28 builds the set from the CIFAR test split).
  c.mrc.split = "val"
  c.mrc.num_examples = 0  # 0: the whole split (all 10,000 test images for 'test'); n: the first n.
  c.mrc.attack = _pgd(PGD10)  # official: torchattacks PGD-10, 8/255, 2/225 (typo for 2/255).
  c.mrc.attack_batch_size = 200
  c.mrc.xi = 0.1  # relative Frobenius radius of the weight perturbation.
  c.mrc.num_epochs = 10
  c.mrc.step_size = 1.0  # SGD lr of the ascent.
  c.mrc.batch_size = 512
  c.mrc.project = "epoch"  # 'epoch' (official) or 'step'.
  c.mrc.shuffle = True
  c.mrc.include = ""  # regex over module names ('' = every conv/dense layer).
  c.mrc.exclude = ""  # e.g. 'sub' as the official code does for its WideResNet.

  c.finetune = ml_collections.ConfigDict()
  c.finetune.module = ""  # '' = the lowest-MRC module.
  c.finetune.lr = 0.001
  c.finetune.num_epochs = 10
  c.finetune.num_steps = 0  # > 0 overrides num_epochs (tests).
  c.finetune.boundaries = (0.5,)  # official MultiStepLR at epochs // 2, x0.1.
  c.finetune.scales = (0.1,)
  c.finetune.momentum = 0.9
  c.finetune.weight_decay = 5e-4
  c.finetune.batch_size = 128
  c.finetune.bn = "train"  # official: train mode, running averages updated; or 'eval'.

  c.interpolation = ml_collections.ConfigDict()
  c.interpolation.alphas = tuple(round(0.1 * i, 1) for i in range(11))
  # Allowed drop of the selection split's robust accuracy vs alpha = 0 (official: picked by hand).
  c.interpolation.robust_tolerance = 0.01

  c.reinit = ml_collections.ConfigDict()
  c.reinit.modes = ("reinit", "rerandom")  # () skips the analysis.

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 200
  c.eval.val_attack = _pgd(PGD10)  # alpha grid and re-init table (official: one PGD-10 run).
  c.eval.test_attack = _pgd(PGD20)
  c.eval.test_runs = 1  # independent runs of test_attack (random starts); the paper: 3.
  # How runs combine: 'run' = the worst run's accuracy (the paper); 'point' = per-point worst.
  c.eval.test_reduce = "run"
  c.eval.test_size = 1000  # test[:1000]: the exact CIFAR-10 subset; 0: the whole test split.
  # The bundled CIFAR-10 test images 1000-9999 are JPEG-derived: a test set (or MRC set) that
  # includes them is refused unless this is True (the report then counts them).
  c.eval.allow_lossy_test = False
  c.eval.autoattack_examples = 0  # > 0: AA-standard on the first n test images (exact only).
  c.eval.ood = ml_collections.ConfigDict()
  c.eval.ood.corruptions = ()  # () = the 15 standard CIFAR-10-C corruptions.
  c.eval.ood.severities = (1, 2, 3, 4, 5)
  c.eval.ood.val_examples = 1000  # selection-split images corrupted for the alpha grid.
  c.eval.ood.test_examples = 1000  # test images corrupted for the final numbers.
  # 'auto' | 'tfds' (official files via TFDS) | 'generated' | 'official' (the official files:
  # the CIFAR-10-C folder below, else TFDS; never generated) | 'none'.
  c.eval.ood.source = "auto"
  # The CIFAR-10-C folder (<name>.npy, labels.npy); '' -> <data dir>/CIFAR-10-C.
  c.eval.ood.data_dir = ""
  c.eval.ood.cache_dir = ""  # '' -> $JAXROBUST_CACHE_DIR or ~/.cache/jaxrobust.
  if protocol == "official":
    _apply_official(c)
  c.lock()
  return c


def _apply_official(c) -> None:
  """The official protocol's settings (paper Sec. 5.1, ``microsoft/robustlearn:RiFT``)."""
  c.mrc.split, c.mrc.num_examples = "test", 0  # main.py:28: all 10,000 CIFAR test images.
  c.reinit.modes = ()  # not part of the official code.
  c.eval.val_attack = _pgd(PGD10)  # the alpha grid: one PGD-10 run per alpha (utils.py).
  c.eval.test_attack = _pgd(PGD10)  # PGD-10, 8/255, step 2/255 (official 2/225: a typo) ...
  c.eval.test_runs, c.eval.test_reduce = 3, "run"  # ... worst accuracy of 3 runs (paper 5.1).
  c.eval.test_size = 0  # the whole test split.
  c.eval.ood.source = "official"  # official CIFAR-10-C files only (eval_ood.py).
  c.eval.ood.corruptions = RIFT_CORRUPTIONS  # the 18 of utils.py evaluate_cifar_corruption.
  c.eval.ood.severities = (1, 2, 3, 4, 5)  # each .npy stacks the 5 severities.
  c.eval.ood.val_examples = 0  # the official alpha grid measures no OOD accuracy.
  c.eval.ood.test_examples = 10_000  # every image of every set.


def validate_rift_config(c) -> None:
  """Raises ConfigError naming the key and the fix."""
  if not c.at_workdir:
    raise ConfigError("set --config.at_workdir=DIR, the --workdir of an adversarial training run "
                      "(python -m jaxrobust.train)")
  if c.at_which not in ("best", "latest"):
    raise ConfigError(f"config.at_which={c.at_which!r}; use 'best' or 'latest'")
  if c.protocol not in PROTOCOLS:
    raise ConfigError(f"config.protocol={c.protocol!r}; use 'validation' (default) or "
                      f"'official' (configs/cifar10_rift.py:official)")
  if c.mrc.split not in ("val", "test"):
    raise ConfigError(f"config.mrc.split={c.mrc.split!r}; use 'val' (default) or 'test' "
                      f"(the official protocol)")
  if c.protocol == "official" and c.mrc.split != "test":
    raise ConfigError("config.protocol='official' builds the MRC set from the test split but "
                      f"config.mrc.split={c.mrc.split!r}; load the official settings with "
                      f"configs/cifar10_rift.py:official instead of setting config.protocol alone")
  if c.mrc.num_examples < 0 or c.eval.test_size < 0:
    raise ConfigError("config.mrc.num_examples and config.eval.test_size must be >= 0 "
                      "(0: the whole split)")
  if c.eval.test_runs < 1:
    raise ConfigError(f"config.eval.test_runs must be >= 1, got {c.eval.test_runs}")
  if c.eval.test_reduce not in REDUCTIONS:
    raise ConfigError(f"config.eval.test_reduce={c.eval.test_reduce!r}; use 'run' (the worst "
                      f"run's accuracy, RiFT's paper) or 'point' (per-point worst case)")
  mrc_settings(c).validate()
  compile_regex(c.mrc.include, "config.mrc.include")
  if c.mrc.exclude:
    compile_regex(c.mrc.exclude, "config.mrc.exclude")
  r = resolve_rift_config(c)
  for section, name in ATTACK_BRANCHES:
    attack_from_config(r[section][name])
  f = c.finetune
  if not f.lr > 0 or (f.num_epochs < 1 and f.num_steps < 1) or f.batch_size < 1:
    raise ConfigError("config.finetune needs lr > 0, num_epochs >= 1 and batch_size >= 1")
  if f.bn not in ("train", "eval"):
    raise ConfigError(f"config.finetune.bn={f.bn!r}; use 'train' (official) or 'eval'")
  alphas = tuple(c.interpolation.alphas)
  if 0.0 not in alphas or any(not 0 <= a <= 1 for a in alphas):
    raise ConfigError(f"config.interpolation.alphas={alphas} must lie in [0, 1] and contain 0")
  if c.interpolation.robust_tolerance < 0:
    raise ConfigError("config.interpolation.robust_tolerance must be >= 0")
  bad = set(c.reinit.modes) - {"reinit", "rerandom"}
  if bad:
    raise ConfigError(f"config.reinit.modes has {sorted(bad)}; use 'reinit' and/or 'rerandom'")
  if c.eval.ood.source not in OOD_SOURCES:
    raise ConfigError(f"config.eval.ood.source={c.eval.ood.source!r}; use one of "
                      f"{', '.join(OOD_SOURCES)}")
  if any(s not in (1, 2, 3, 4, 5) for s in c.eval.ood.severities):
    raise ConfigError(f"config.eval.ood.severities={tuple(c.eval.ood.severities)}; use 1..5")


def resolve_rift_config(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``config.eps`` / ``config.norm`` filled into every attack.

  ``config.mrc.attack``, ``config.eval.val_attack`` and ``config.eval.test_attack``
  take the top-level threat model where they leave ``eps`` / ``norm`` unset
  (:func:`jaxrobust.attacks.threat.resolve_attack`); ``config`` is unchanged.

  Raises:
    ConfigError: ``config.eps`` <= 0 or an unknown ``config.norm``.
  """
  if not config.eps > 0:
    raise ConfigError(f"config.eps must be > 0 (pixel units, e.g. 8/255), got {config.eps}")
  if config.norm not in NORMS:
    raise ConfigError(f"config.norm={config.norm!r}; use one of {NORMS}")
  c = config.copy_and_resolve_references()
  c.unlock()
  for section, name in ATTACK_BRANCHES:
    c[section][name] = resolve_attack(c[section][name], eps=float(config.eps), norm=config.norm,
                                      where=f"config.{section}.{name}")
  c.lock()
  return c


def mrc_settings(c):
  """``config.mrc`` -> :class:`jaxrobust.rift.mrc.MRCSettings`."""
  m = c.mrc
  return MRCSettings(xi=m.xi, num_epochs=m.num_epochs, step_size=m.step_size,
                     batch_size=m.batch_size, project=m.project, shuffle=m.shuffle)
