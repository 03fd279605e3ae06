"""Every config variant keeps its effective settings (attacks, method hyperparameters, the rest).

``resolved_configs.json`` was written by ``benchmarks/resolved_configs.py`` from the code
before the method registry and the one-``eps`` threat model; the only differences allowed
are the new top-level ``eps`` / ``norm`` (equal to what every branch runs with), the
``teacher_*`` keys of methods that load no such teacher (unused then, no longer keys), the
optimiser-by-name keys at values that build today's SGD, and the cyclic schedule's new
official defaults (peak 1/2, cycled momentum) where no config uses the cyclic schedule.

Deliberate changes to follow the official code, edited into the JSON by hand (each pinned below):
``data.pad_mode`` is ``'reflect'`` for PGD-AT and AT-AWP (Rice et al. / ``csdongxian/AWP:
AT_AWP/utils.py`` pad the training set with reflection), zeros for every other method; the
PGD training attack of PGD-AT and AT-AWP starts from ``random_start='uniform_radius'``
(``attack_pgd``: the same U(-eps, eps) start for L-inf, radius U(0, 1) eps for L2);
``train.attack_bn_updates`` is ``'official'``: the passes of a train-mode attack update the
BatchNorm running averages, as PyTorch's train mode does in the official code.
Configs added later (``cifar10_vit_pgd_at``) were pinned by today's code (their entries
have ``config.eps``) and must match key for key.
"""
import json
import pathlib

import pytest

from benchmarks.resolved_configs import VARIANTS, load_config, rift_settings, train_settings

EXPECTED = json.loads((pathlib.Path(__file__).parent / "resolved_configs.json").read_text())
# Keys added with the optimiser by name and the dataset metadata (shape, resize); these values
# build exactly the previous SGD optimiser and read the shape from the data.
NEW_TRAIN_KEYS = {"config.train.optimizer": "sgd", "config.train.betas": [0.9, 0.999],
                  "config.train.adam_eps": 1e-8, "config.train.clip_by_global_norm": 0.0,
                  "config.train.weight_decay_mask": "all", "config.train.boundaries_epochs": [],
                  "config.train.cyclic_base_momentum": None, "config.data.image_shape": [],
                  "config.data.image_size": 0,
                  # SWA, off (jaxrobust.train.swa): the training is unchanged.
                  "config.train.swa_start": 0, "config.train.swa_c_epochs": 1,
                  "config.train.swa_lr": 0.05, "config.train.swa_bn": "recompute_clean",
                  # No auxiliary heads: the model is unchanged.
                  "config.model.aux_heads": [],
                  # Deliberate change: train-view attack passes update the BatchNorm
                  # running averages as in the official PyTorch code (tested in
                  # test_attack_bn_updates.py); 'none' is the earlier behaviour.
                  "config.train.attack_bn_updates": "official",
                  # No timm weights; training from scratch allowed: the model starts as before.
                  "config.model.init_from_pretrained": "", "config.model.scratch": True,
                  # The lazy-training diagnostic, off: nothing is logged or computed.
                  "config.train.log_weight_distance": False}
# Keys added with RiFT's two protocols; these values are the validation protocol's previous
# behaviour (one test run, exact test images only, OOD files from the default place).
NEW_RIFT_KEYS = {"config.protocol": "validation", "config.eval.test_runs": 1,
                 "config.eval.test_reduce": "run", "config.eval.allow_lossy_test": False,
                 "config.eval.ood.data_dir": ""}
CASES = [(name, arg) for name, args in VARIANTS.items() for arg in args]
# Configs added after the refactor: their entries were written by the code that added them
# (benchmarks/resolved_configs.py --configs NAME --merge) and must match exactly.
CURRENT = {"cifar10_iad_teacher", "cifar10_vit_recipe", "imagenette_vit_recipe",
           "imagenet_vit_recipe", "cifar10_ema", "cifar10_swa", "cifar10_regmixup",
           "cifar10_rotation_ssl", "cifar10_rst", "cifar10_uat"}
# Configs that set data.pad_mode themselves instead of taking the method's.
OWN_PAD_MODE = {"mnist_pgd_at", "cifar10_iad_teacher"}


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def test_every_config_file_is_covered():
  files = {p.stem for p in (pathlib.Path(__file__).parents[2] / "configs").glob("*.py")}
  assert files - {"__init__"} == set(VARIANTS)
  assert {f"{n}.py:{a}" if a else f"{n}.py" for n, a in CASES} == set(EXPECTED)


@pytest.mark.parametrize("name,arg", CASES)
def test_effective_settings_are_unchanged(name, arg):
  config = load_config(name, arg)
  got = rift_settings(config) if name == "cifar10_rift" else train_settings(config)
  want = EXPECTED[f"{name}.py:{arg}" if arg else f"{name}.py"]
  assert got["attacks"] == want["attacks"]  # every branch, key by key, eps filled in.
  if name in CURRENT:
    assert _flat(got) == _flat(want)
    return
  g, w = _flat(got), _flat(want)
  if "config.eps" in w:  # pinned after the refactor: nothing may differ.
    assert g == w
    return
  # New: the threat model set once; it is what every branch runs with.
  new = NEW_RIFT_KEYS if name == "cifar10_rift" else NEW_TRAIN_KEYS  # RiFT's own schema.
  assert {k for k in set(g) - set(w)} == {"config.eps", "config.norm", *new}
  for k, v in new.items():
    if k != "config.train.cyclic_base_momentum":
      assert g[k] == v, (k, g[k], v)
  if name == "cifar10_rift":
    pass
  elif g["config.train.schedule"] == "cyclic":  # the :local one-cycle schedule keeps its peak and constant momentum.
    assert g["config.train.cyclic_base_momentum"] == -1.0
  else:  # unused without the cyclic schedule.
    assert (g.pop("config.train.cyclic_peak"), w.pop("config.train.cyclic_peak")) == (0.5, 0.4)
  assert {a["eps"] for a in got["attacks"].values()} == {g["config.eps"]}
  assert {a.get("norm", "linf") for a in got["attacks"].values()} == {g["config.norm"]}
  # Gone: teacher keys of methods that load no such teacher (unused before).
  gone = set(w) - set(g)
  assert all(k.startswith("method.teacher") for k in gone), gone
  if got.get("method", {}).get("name") != "iad":
    assert "method.teacher2_workdir" in gone or name == "cifar10_rift"
  if got.get("method", {}).get("num_teachers", 1) == 0:
    assert {k for k in w if k.startswith("method.teacher")} <= gone
  for k in set(g) & set(w):
    assert g[k] == w[k], (k, g[k], w[k])


# Variants whose method is pgd_at or AT-AWP (awp around pgd_at): the official code pads with
# reflection; every other training variant pads with zeros (torchvision's RandomCrop).
REFLECT = {"cifar10_pgd_at.py", "cifar10_pgd_at.py:local,pgd_steps=3",
           "cifar10_pgd_at.py:smoke,pgd_steps=3", "cifar10_awp.py", "cifar10_awp.py:local",
           "cifar10_awp.py:smoke", "cifar10_awp.py:model=wrn_34_10",
           # PGD-AT with EMA / SWA (the generalisation tools' baseline).
           *(f"cifar10_{n}.py{a}" for n in ("ema", "swa") for a in ("", ":local", ":smoke")),
           *(f"cifar10_swa.py:{a}bn={m}" for a in ("", "local,") for m in ("adversarial", "none"))}


@pytest.mark.parametrize("name,arg", [c for c in CASES if c[0] != "cifar10_rift"])
def test_random_crop_padding_is_the_methods_official_one(name, arg):
  config = load_config(name, arg)
  key = f"{name}.py:{arg}" if arg else f"{name}.py"
  got = train_settings(config)
  method, base = got["method"]["name"], got["method"].get("base", {}).get("name")
  want = "reflect" if key in REFLECT else "constant"
  assert got["config"]["data.pad_mode"] == want, (key, method)
  if name not in OWN_PAD_MODE:  # MNIST: unused (no augmentation); IAD's teacher: zeros.
    assert (want == "reflect") == (method == "pgd_at" or base == "pgd_at"), (key, method, base)


# PGD-AT / AT-AWP variants whose training attack is PGD: Rice et al.'s random start.
UNIFORM_RADIUS = {"cifar10_pgd_at.py", "cifar10_pgd_at.py:local,pgd_steps=3",
                  "cifar10_pgd_at.py:smoke,pgd_steps=3", "cifar10_awp.py",
                  "cifar10_awp.py:model=wrn_34_10",
                  *(k for k in REFLECT if k.startswith(("cifar10_ema", "cifar10_swa")))}


@pytest.mark.parametrize("name,arg", [c for c in CASES if c[0] != "cifar10_rift"])
def test_training_attack_random_start_is_the_official_one(name, arg):
  key = f"{name}.py:{arg}" if arg else f"{name}.py"
  got = train_settings(load_config(name, arg))
  start = got["attacks"].get("train", {}).get("random_start")
  assert (start == "uniform_radius") == (key in UNIFORM_RADIUS), (key, start)
