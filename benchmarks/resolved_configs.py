r"""The EFFECTIVE settings of every config file and variant, key by key (JSON).

For each ``configs/*.py`` variant (``''``, ``local``, ``smoke`` and the
parameterised ones, e.g. ``cifar10_pgd_at.py:local,pgd_steps=3``) this prints:

* ``attacks``: the attack of every branch (training ``train``, validation
  ``val``, test ``test``; RiFT: ``mrc``, ``val``, ``test``) as the attack
  function will run it: the branch's settings with the threat model filled in
  (``config.eps`` / ``config.norm``) over the attack function's own keyword
  defaults, so an omitted key and an explicit default compare equal;
* ``method``: the hyperparameters of the method the trainer builds
  (``method_from_config(config.method, steps_per_epoch=100, weight_decay=...)``;
  a wrapped base method under ``base``), its number of teachers and the
  ``teacher_*`` keys;
* ``config``: every other key of the config, flattened.

``tests/train/test_resolved_configs.py`` compares the output with
``tests/train/resolved_configs.json`` (written by this script from the code
before the method registry / one-``eps`` refactor; configs added later were
written by the code that added them, with ``--configs NAME --merge``), so a
refactor that changes any effective value fails.

Configs added after that refactor (``cifar10_vit_pgd_at``) are pinned as
today's code resolves them (every key, compared exactly); ``--configs NAME --merge``
writes only that config's variants into an existing ``--out`` file, leaving
the other entries as they are.

Usage::

    python benchmarks/resolved_configs.py > resolved.json
    python benchmarks/resolved_configs.py --configs cifar10_iad_teacher --merge \
        --out tests/train/resolved_configs.json   # add one config, keep the other entries
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

# config file -> variants (the get_config argument).
VARIANTS = {
    "cifar10_pgd_at": ["", "local", "smoke", "local,pgd_steps=3", "smoke,pgd_steps=3",
                       "local,standard"],
    "cifar10_trades": ["", "local", "smoke"],
    "cifar10_mart": ["", "local", "smoke", "resnet18", "resnet18,local"],
    "cifar10_awp": ["", "local", "smoke", "trades", "trades,local", "trades,smoke",
                    "model=wrn_34_10"],
    "cifar10_ard": ["", "local", "smoke"],
    "cifar10_iad": ["", "local", "smoke", "iad2", "iad2,local", "iad2,smoke"],
    "cifar10_iad_teacher": ["", "local", "smoke"],
    "cifar10_rslad": ["", "local", "smoke", "mobilenet", "mobilenet,local"],
    "mnist_pgd_at": ["", "local", "smoke"],
    "cifar10_rift": ["", "local", "smoke"],
    "cifar10_vit_pgd_at": ["", "local", "smoke", "ard=false,prm=false", "local,ard=false",
                           "local,prm=false", "local,ard=false,prm=false",
                           "model=vit_small_patch16_224", "local,eps_warmup=2",
                           "local,mixup=false", "objective=trades", "objective=mart",
                           "local,objective=trades", "smoke,objective=mart"],
    "cifar10_vit_recipe": ["", "local", "smoke", "model=deit_s", "model=vit_small_patch16_224"],
    "imagenette_vit_recipe": ["", "local", "smoke", "model=swin_t", "local,model=swin_t"],
    "imagenet_vit_recipe": ["", "local", "smoke", "model=swin_b"],
    "cifar10_ema": ["", "local", "smoke"],
    "cifar10_swa": ["", "local", "smoke", "bn=adversarial", "bn=none", "local,bn=adversarial",
                    "local,bn=none"],
    "cifar10_regmixup": ["", "local", "smoke", "clean", "local,clean"],
    "cifar10_rotation_ssl": ["", "local", "smoke"],
    "cifar10_rst": ["", "local", "smoke", "teacher", "teacher,local", "teacher,smoke",
                    "supervised", "supervised,local"],
    "cifar10_uat": ["", "local", "smoke", "ft", "ft,local", "ft,smoke", "supervised",
                    "supervised,local"],
}
STEPS_PER_EPOCH = 100  # resolves epoch settings (AWP warm-up, IAD begin) to steps.
_SKIP_FIELDS = ("attack", "teacher", "natural_teacher")


def load_config(name: str, arg: str):
  path = os.path.join(REPO_ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _plain(v):
  if isinstance(v, (list, tuple)):
    return [_plain(u) for u in v]
  if hasattr(v, "to_dict"):
    v = v.to_dict()
  if isinstance(v, dict):
    return {k: _plain(u) for k, u in sorted(v.items())}
  return v


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = _plain(v)
  return out


def _attack_fns():
  from jaxrobust import attacks  # pylint: disable=g-import-not-at-top
  fns = dict(attacks.ATTACKS)
  if "trades_l2" not in fns:
    from jaxrobust.methods import trades_l2_inner_max  # pylint: disable=g-import-not-at-top
    fns["trades_l2"] = trades_l2_inner_max
  return fns


def effective_attack(cfg) -> dict:
  """The settings ``cfg`` runs with: the attack function's keyword defaults, then ``cfg``."""
  cfg = _plain(dict(cfg))
  fn = _attack_fns()[cfg["name"]]
  out = {k: p.default for k, p in inspect.signature(fn).parameters.items()
         if p.default is not inspect.Parameter.empty and k not in ("unroll", "ref_logits", "y", "return_trace",
                                                                   "model_state")}
  out.update({k: v for k, v in cfg.items() if v is not None})
  return {k: _plain(v) for k, v in sorted(out.items())}


def method_settings(method) -> dict:
  out = {}
  for f in dataclasses.fields(method):
    if f.name in _SKIP_FIELDS:
      continue
    v = getattr(method, f.name)
    out[f.name] = method_settings(v) if dataclasses.is_dataclass(v) else _plain(v)
  return out


def _resolve(config):
  """The config with its threat model filled in (identity before ``config.eps`` existed)."""
  from jaxrobust.train import defaults  # pylint: disable=g-import-not-at-top
  if hasattr(defaults, "resolve_config"):
    return defaults.resolve_config(config)
  return config


def train_settings(config) -> dict:
  from jaxrobust.methods import method_from_config, num_teachers  # pylint: disable=g-import-not-at-top
  config = _resolve(config)
  rest = _flatten(config.to_dict())
  for key in list(rest):
    if key.startswith(("method.", "eval.val_attack.", "eval.test_attack.")):
      del rest[key]
  m = config.method
  # The method itself; config.train.attack_bn_updates (in `config`) says whether its
  # train-view attack passes also update the BatchNorm running averages.
  method = method_from_config(m, steps_per_epoch=STEPS_PER_EPOCH,
                              weight_decay=config.train.weight_decay, attack_bn_updates="none")
  msettings = method_settings(method)
  msettings["num_teachers"] = num_teachers(m)
  for key in sorted(m.keys()):
    if key.startswith("teacher"):
      msettings[key] = _plain(m[key])
  attacks = {"val": effective_attack(config.eval.val_attack),
             "test": effective_attack(config.eval.test_attack)}
  if "attack" in m:  # methods that attack (not standard, regmixup).
    attacks["train"] = effective_attack(m.attack)
  return {"attacks": attacks, "method": msettings, "config": rest}


def rift_settings(config) -> dict:
  from jaxrobust.rift import config as rift_config  # pylint: disable=g-import-not-at-top
  if hasattr(rift_config, "resolve_rift_config"):
    config = rift_config.resolve_rift_config(config)
  rest = _flatten(config.to_dict())
  for key in list(rest):
    if key.startswith(("mrc.attack.", "eval.val_attack.", "eval.test_attack.")):
      del rest[key]
  attacks = {"mrc": effective_attack(config.mrc.attack),
             "val": effective_attack(config.eval.val_attack),
             "test": effective_attack(config.eval.test_attack)}
  return {"attacks": attacks, "config": rest}


def all_settings(names=None) -> dict:
  """``{'<config>.py[:<arg>]': settings}`` for every variant of ``names`` (default: all)."""
  out = {}
  for name, variants in VARIANTS.items():
    if names and name not in names:
      continue
    for arg in variants:
      config = load_config(name, arg)
      key = f"{name}.py:{arg}" if arg else f"{name}.py"
      out[key] = rift_settings(config) if name == "cifar10_rift" else train_settings(config)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="", help="write the JSON here (default: stdout)")
  parser.add_argument("--configs", default="",
                      help="comma-separated config names (default: every one in VARIANTS)")
  parser.add_argument("--merge", action="store_true",
                      help="update the entries of --out, keeping its other entries as they are")
  args = parser.parse_args()
  names = [n for n in args.configs.split(",") if n]
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    parser.error(f"unknown config(s) {unknown}; known: {sorted(VARIANTS)}")
  if args.merge and not args.out:
    parser.error("--merge needs --out")
  settings = all_settings(names)
  if args.merge and os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      settings = {**json.load(f), **settings}
  text = json.dumps(settings, indent=1, sort_keys=True)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  else:
    print(text)


if __name__ == "__main__":
  main()
