"""``run_rift(config, workdir)``: RiFT end to end on a model trained by this library.

Stages (each result is written to ``workdir`` as soon as it exists, so a rerun
of the same command skips finished stages; the fine-tuning run resumes from
its own checkpoints). The *selection split* is the validation split under
``config.protocol='validation'`` and the test split under ``'official'``
(:mod:`jaxrobust.rift.config`):

1. ``mrc.json`` / ``mrc.png``: the fixed adversarial set (PGD-10 on
   ``config.mrc.split``, the whole split unless ``mrc.num_examples`` names a
   prefix) and the MRC of every selected module.
2. ``reinit.json``: clean / robust accuracy on the selection split after
   re-initialising or re-randomising each module.
3. ``finetune/``: clean fine-tuning of the lowest-MRC module only (a
   ``jaxrobust.train`` run with ``train.init_from`` and ``train.trainable``),
   the epoch of best clean accuracy on the selection split (validation: on
   train minus validation; official: on all training images).
4. ``interpolation.json`` / ``interpolation.png``: clean, robust and OOD
   (corrupted) accuracy of ``theta(alpha)`` over the grid on the selection
   split; the chosen ``alpha`` maximises clean accuracy within the robust
   tolerance.
5. ``report.json``: test numbers (clean, PGD over ``eval.test_runs`` runs,
   optional AutoAttack, OOD) of the adversarially trained model (alpha 0),
   the fine-tuned one (alpha 1) and the RiFT model (chosen alpha).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import tqdm

from jaxrobust import parallel
from jaxrobust.errors import ConfigError, DataError, StatePreempted
from jaxrobust.evaluate.autoattack import AutoAttackSettings, run_autoattack
from jaxrobust.accuracy import (attacks_from_config, evaluate_accuracy,
                                           exact_subset, make_eval_step)
from jaxrobust.train.restore import load_trained
from jaxrobust.methods import method_config
from jaxrobust.rift.config import mrc_settings, resolve_rift_config, validate_rift_config
from jaxrobust.weights import interpolate, select_alpha
from jaxrobust.rift.evaluation import evaluate_runs, make_runs_eval_step
from jaxrobust.rift.modules import list_modules, module_regex
from jaxrobust.rift.mrc import ModuleCriticality, build_adversarial_set, least_critical, mrc_sweep
from jaxrobust.rift.ood import check_official_ood, cifar10c_dir, official_ood_sets
from jaxrobust.rift.plots import plot_interpolation, plot_mrc
from jaxrobust.rift.reinit import reinit_analysis
from jaxrobust.train.builders import build_model, build_splits, image_shape_of
from jaxrobust.train.loop import train_and_evaluate
from jaxrobust.train.state import split_model

log = logging.getLogger("jaxrobust")


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.tqdm.write(msg)


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _read_stage(path: str, key: dict):
  """A finished stage's JSON if it was computed with the same settings."""
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  return data if data.get("key") == key else None


def _image_shape(config):
  return image_shape_of(config)


def finetune_config(config, at_config, module: str):
  """The ``jaxrobust.train`` config of RiFT's fine-tuning stage (METHODS 2.8).

  Clean cross-entropy (crop 4 with reflect padding + flip), SGD momentum 0.9,
  lr 0.001, wd 5e-4, 10 epochs with x0.1 at epoch 5, batch 128; only the
  parameters under ``module`` are updated; BatchNorm per
  ``config.finetune.bn``.

  ``config.protocol='validation'``: trains on the training split minus the
  adversarially trained run's validation split and keeps the epoch of best
  validation clean accuracy (the trainer's ``best`` checkpoint).
  ``'official'``: trains on every training image (``data.val_size = 0``, as
  ``main.py`` with ``use_val=False``), runs no validation and keeps a
  checkpoint of every epoch; :func:`stage_finetune` then picks the epoch of
  best clean test accuracy (``main.py:306-320``).
  """
  f = config.finetune
  r = resolve_rift_config(config)
  c = at_config.copy_and_resolve_references()
  c.unlock()
  c.seed = config.seed
  c.num_devices = config.num_devices
  c.method = method_config("standard", clean_bn=f.bn)
  c.data.augment, c.data.pad, c.data.pad_mode, c.data.flip = True, 4, "reflect", True
  c.data.test_size = config.eval.test_size
  official = config.protocol == "official"
  if official:
    c.data.val_size = 0  # all 50,000 CIFAR-10 training images (with the AT run's train_size).
  t = c.train
  t.lr, t.num_epochs, t.num_steps = f.lr, f.num_epochs, f.num_steps
  t.schedule, t.boundaries, t.scales = "piecewise", tuple(f.boundaries), tuple(f.scales)
  t.momentum, t.nesterov, t.weight_decay = f.momentum, False, f.weight_decay
  t.batch_size, t.warmup_epochs, t.ema_decay = f.batch_size, 0.0, 0.0
  t.init_from, t.init_which = os.path.abspath(config.at_workdir), config.at_which
  t.trainable = module_regex([module])
  t.log_every_steps = max(1, min(t.log_every_steps, 50))
  if official:  # every epoch's checkpoint stays for the selection on test.
    t.keep_checkpoints = max(t.keep_checkpoints, f.num_epochs + 1)
  c.eval.select = "val_clean"
  c.eval.every_epochs = 0 if official else 1
  c.eval.batch_size = config.eval.batch_size
  c.eps, c.norm = r.eps, r.norm
  c.eval.val_attack = r.eval.val_attack.to_dict()
  c.eval.test_attack = r.eval.test_attack.to_dict()
  c.lock()
  return c


def _ood_sets(config, base, n, split, official_where=None):
  """Corrupted copies of the first ``n`` images of ``base`` (or {} when off).

  ``eval.ood.source='official'`` ignores ``base``: the first ``n`` images of
  every official CIFAR-10-C set (:func:`jaxrobust.rift.ood.official_ood_sets`).
  """
  ood = config.eval.ood
  if ood.source == "none" or n <= 0:
    return {}
  if ood.source == "official":
    names = tuple(ood.corruptions) or corruptions_default()
    _say(f"OOD ({split}): official CIFAR-10-C, {len(names)} corruptions x "
         f"{len(ood.severities)} severities x {n} images")
    return official_ood_sets(names, tuple(ood.severities), n, ood.data_dir, official_where)
  # Imported when used: it needs the optional `ood` extra (imagecorruptions-imaug).
  from jaxrobust.data import corruptions  # pylint: disable=g-import-not-at-top
  names = tuple(ood.corruptions) or corruptions.CORRUPTIONS
  sub = base.take(slice(0, min(n, len(base))))
  _say(f"OOD ({split}): {len(names)} corruptions x {len(ood.severities)} severities on "
       f"{len(sub)} images")
  return corruptions.corruption_suite(sub, names, tuple(ood.severities), source=ood.source,
                                      cache_dir=ood.cache_dir or None, seed=config.seed)


def _ood_accuracy(step, params, batch_stats, sets, batch_size, mesh) -> dict | None:
  if not sets:
    return None
  accs = {name: evaluate_accuracy(step, params, batch_stats, ds, batch_size, mesh,
                                  jax.random.PRNGKey(0))["clean"] for name, ds in sets.items()}
  return {"mean": float(np.mean(list(accs.values()))), "per_set": accs}


def corruptions_default() -> tuple[str, ...]:
  """The 15 standard CIFAR-10-C corruptions (``eval.ood.corruptions=()``)."""
  from jaxrobust.data import corruptions  # pylint: disable=g-import-not-at-top
  return corruptions.CORRUPTIONS


@dataclasses.dataclass
class _Run:
  """What every RiFT stage reads: the trained model, data, evaluation steps."""
  config: Any
  workdir: str
  mesh: Any
  at: Any  # the adversarially trained run (``load_trained``)
  splits: Any  # train / validation of the AT run; .test is the whole test split.
  test: Any  # the evaluated test set: the whole split or test[:eval.test_size].
  select: Any  # the selection split: splits.val ('validation') or test ('official').
  clean_step: Callable
  val_step: Callable
  val_key: jax.Array
  at_id: dict
  official_ood: str | None = None  # 'folder' / 'tfds' for eval.ood.source='official'.
  # Polled between MRC modules: a signal name stops the sweep after saving its progress.
  should_stop: Callable[[], str | None] | None = None

  @property
  def batch_size(self) -> int:
    return self.config.eval.batch_size

  @property
  def select_name(self) -> str:
    return "test" if self.config.protocol == "official" else "validation"

  def val_eval(self, params, batch_stats=None) -> dict:
    """Selection-split clean / robust accuracy of ``params`` (default: the AT model's BN)."""
    bs = self.at.batch_stats if batch_stats is None else batch_stats
    r = evaluate_accuracy(self.val_step, params, bs, self.select, self.batch_size,
                          self.mesh, self.val_key)
    return {"clean": r["clean"], "robust": r["robust"]}


def _lossy(ds) -> int:
  return int(np.sum(~np.asarray(ds.exact, bool)))


def _check_exact(config, ds, what: str, fix: str) -> None:
  """DataError when ``ds`` holds JPEG-derived images and the config does not allow them."""
  n = _lossy(ds)
  if n and not config.eval.allow_lossy_test:
    raise DataError(
        f"{what} has {n} JPEG-derived (lossy) images out of {len(ds)} (the bundled CIFAR-10 "
        f"test images 1000-9999); {fix}, or set --config.eval.allow_lossy_test=True to use them "
        f"(the report then counts them)")


def mrc_base(config, splits):
  """The images of the MRC adversarial set: ``config.mrc.split``, whole or its first n.

  ``split='val'`` is the AT run's validation split, ``'test'`` the whole test
  split (10,000 CIFAR-10 images, as the official ``main.py:28``), never
  ``test[:eval.test_size]``; ``mrc.num_examples > 0`` takes the first n.
  """
  base = splits.val if config.mrc.split == "val" else splits.test
  if config.mrc.num_examples:
    if config.mrc.num_examples > len(base):
      raise ConfigError(f"config.mrc.num_examples={config.mrc.num_examples} exceeds the "
                        f"{len(base)} images of the {config.mrc.split} split")
    base = base.take(slice(0, config.mrc.num_examples))
  return base


def _prepare(config, workdir: str) -> _Run:
  """Validates ``config``, loads the AT model and the data, builds the eval steps.

  Every data requirement (exact test images, the official CIFAR-10-C files)
  is checked here, before any stage runs.
  """
  validate_rift_config(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))
  config = resolve_rift_config(config)  # eps / norm filled into every attack branch.
  mesh = parallel.make_mesh(config.num_devices or None)
  parallel.check_batch_size(config.eval.batch_size, mesh, "eval batch size")
  at = load_trained(config.at_workdir, config.at_which, mesh=mesh)
  data_cfg = at.config.copy_and_resolve_references()
  data_cfg.unlock()
  data_cfg.data.test_size = 0  # the whole test split; eval.test_size takes a prefix below.
  splits = build_splits(data_cfg)
  n_test = config.eval.test_size or len(splits.test)
  if n_test > len(splits.test):
    raise ConfigError(f"config.eval.test_size={n_test} exceeds the {len(splits.test)} test "
                      f"images; use 0 for the whole split")
  test = splits.test.take(slice(0, n_test))
  fix = ("use --config.eval.test_size=1000 (the exact prefix)" if config.protocol != "official"
         else "provide exact test images (config.data.source='tfds' of the AT run)")
  _check_exact(config, test, "the test set", fix)
  if config.mrc.split == "test":
    _check_exact(config, mrc_base(config, splits), "the MRC set (config.mrc.split='test')",
                 "name an exact prefix with --config.mrc.num_examples=1000")
  official_ood = _check_ood(config, at.config.data.name)
  select = test if config.protocol == "official" else splits.val
  model_fns = at.model_fns
  return _Run(
      config=config, workdir=workdir, mesh=mesh, at=at, splits=splits, test=test,
      select=select,
      clean_step=make_eval_step(model_fns, {"clean": None}, mesh),
      val_step=make_eval_step(model_fns, attacks_from_config(
          {"clean": None, "robust": dict(config.eval.val_attack)}), mesh),
      val_key=jax.random.PRNGKey(config.seed + 1),
      at_id={"at_workdir": os.path.abspath(config.at_workdir), "at_which": at.which,
             "at_step": at.step, "seed": config.seed},
      official_ood=official_ood)


def _check_ood(config, dataset: str) -> str | None:
  """Checks the OOD settings against the protocol and the data; the official files' place."""
  ood = config.eval.ood
  if ood.source == "none":
    return None
  test_derived = ood.source in ("tfds", "official")
  if config.protocol == "validation" and test_derived and ood.val_examples > 0:
    raise ConfigError(
        f"config.eval.ood.source={ood.source!r} reads CIFAR-10-C, made from the test images; "
        f"the validation protocol's alpha grid must not see them: set "
        f"--config.eval.ood.val_examples=0 (or use source 'generated')")
  if ood.source != "official":
    return None
  if dataset != "cifar10":
    raise ConfigError(f"config.eval.ood.source='official' is CIFAR-10-C, but the model was "
                      f"trained on {dataset!r}; use 'generated' or 'none'")
  if not 0 <= ood.test_examples <= 10_000:
    raise ConfigError(f"config.eval.ood.test_examples={ood.test_examples}; CIFAR-10-C has "
                      f"10,000 images per set")
  if ood.test_examples == 0 and ood.val_examples == 0:
    return None
  names = tuple(ood.corruptions) or corruptions_default()
  where = check_official_ood(names, tuple(ood.severities), ood.data_dir)
  _say(f"OOD: official CIFAR-10-C from "
       f"{cifar10c_dir(ood.data_dir) if where == 'folder' else 'TFDS cifar10_corrupted'}")
  return where


def stage_mrc(run: _Run) -> dict:
  """Stage 1: the fixed adversarial set and the MRC of every selected module (``mrc.json``)."""
  config, at = run.config, run.at
  key = dict(run.at_id, mrc=config.mrc.to_dict())
  mrc_path = os.path.join(run.workdir, "mrc.json")
  mrc = _read_stage(mrc_path, key)
  if mrc is not None:
    return mrc
  modules = list_modules(at.params, config.mrc.include, config.mrc.exclude)
  base = mrc_base(config, run.splits)
  t0 = time.time()
  x_adv, y = build_adversarial_set(at.model_fns, at.params, at.batch_stats, base,
                                   dict(config.mrc.attack), config.mrc.attack_batch_size,
                                   jax.random.PRNGKey(config.seed + 3))
  t_adv = time.time() - t0
  _say(f"MRC: adversarial set of {len(y)} {config.mrc.split} images ({t_adv:.1f} s); "
       f"{len(modules)} modules, {len({m.shape for m in modules})} distinct kernel shapes")
  # Progress of an interrupted sweep (same settings): its finished modules are kept.
  partial_path = os.path.join(run.workdir, "mrc_partial.json")
  partial = _read_stage(partial_path, key)
  done = {d["name"]: ModuleCriticality.from_dict(d) for d in (partial or {}).get("modules", [])}

  def on_module(j, results):
    if jax.process_index() == 0:
      _write_json(partial_path, {"key": key, "modules": [r.to_dict() for r in results.values()]})
    if run.should_stop is not None and j < len(modules) - 1 and (sig := run.should_stop()):
      raise StatePreempted("MRC sweep progress", f"{len(results)} of {len(modules)} modules",
                           partial_path, sig)

  t0 = time.time()
  results = mrc_sweep(at.model_fns, at.params, at.batch_stats, x_adv, y, modules,
                      mrc_settings(config), jax.random.PRNGKey(config.seed + 4),
                      progress=jax.process_index() == 0, done=done, on_module=on_module)
  mrc = {"key": key, "num_examples": int(len(y)), "split": config.mrc.split,
         "lossy_examples": _lossy(base),
         "base_loss": results[0].base_loss, "base_acc": results[0].base_acc,
         "modules": [r.to_dict() for r in results],
         "least_critical": least_critical(results).name,
         "seconds": {"adversarial_set": round(t_adv, 2), "sweep": round(time.time() - t0, 2)},
         "num_shapes": len({m.shape for m in modules})}
  _write_json(mrc_path, mrc)
  if os.path.exists(partial_path) and jax.process_index() == 0:
    os.remove(partial_path)
  return mrc


def _check_module(run: _Run, module: str) -> None:
  """Raises ConfigError unless ``module`` is a conv/dense module of the AT model."""
  all_modules = list_modules(run.at.params)
  if module not in {m.name for m in all_modules}:
    raise ConfigError(f"config.finetune.module={module!r} is not a conv/dense module of the "
                      f"model; modules are {[m.name for m in all_modules]}")


def choose_module(run: _Run, mrc: dict) -> str:
  """``config.finetune.module`` or the lowest-MRC module; plots and prints the ranking.

  Raises:
    ConfigError: the named module is not a conv/dense module of the model.
  """
  config = run.config
  rows = mrc["modules"]
  module = config.finetune.module or mrc["least_critical"]
  _check_module(run, module)
  plot_mrc(rows, os.path.join(run.workdir, "mrc.png"), module)
  _say("MRC (lowest first): " + ", ".join(
      f"{r['name']} {r['mrc']:.3f}" for r in sorted(rows, key=lambda r: r["mrc"])))
  return module


def stage_reinit(run: _Run) -> dict | None:
  """Stage 2: selection-split accuracy after re-initialising each module (``reinit.json``)."""
  config, at = run.config, run.at
  if not config.reinit.modes:
    return None
  key = dict(run.at_id, modes=list(config.reinit.modes), include=config.mrc.include,
             exclude=config.mrc.exclude, val_attack=dict(config.eval.val_attack),
             split=run.select_name, split_size=len(run.select))
  path = os.path.join(run.workdir, "reinit.json")
  reinit = _read_stage(path, key)
  if reinit is not None:
    return reinit
  t0 = time.time()
  shape = _image_shape(at.config)
  init_params = parallel.replicate(split_model(build_model(at.config, shape))[1], run.mesh)
  rand_params = parallel.replicate(
      split_model(build_model(at.config, shape, seed=at.config.seed + 1))[1], run.mesh)
  modules = list_modules(at.params, config.mrc.include, config.mrc.exclude)
  bar = tqdm.tqdm(total=len(modules) * len(config.reinit.modes), desc="re-init",
                  leave=False, disable=jax.process_index() != 0)
  table = reinit_analysis(at.params, modules, init_params, rand_params, run.val_eval,
                          tuple(config.reinit.modes), lambda *_: bar.update(1))
  bar.close()
  reinit = {"key": key, "baseline": run.val_eval(at.params), "rows": table,
            "seconds": round(time.time() - t0, 2),
            "note": "reinit = weights at initialisation (training seed); rerandom = a fresh "
                    f"draw (seed + 1); {run.select_name} split"}
  _write_json(path, reinit)
  return reinit


def stage_finetune(run: _Run, module: str):
  """Stage 3: clean fine-tuning of ``module`` only (``finetune/``); returns ``(run, cfg, s)``.

  The first is the kept checkpoint of the fine-tuned run (``load_trained``):
  its ``best`` (validation clean accuracy) under the validation protocol, the
  epoch of best clean test accuracy under the official one
  (:func:`select_epoch_on_test`); the second its training config, the third
  the wall time in seconds.
  """
  ft_dir = os.path.join(run.workdir, "finetune")
  ft_cfg = finetune_config(run.config, run.at.config, module)
  _say(f"fine-tuning {module} ({ft_cfg.train.trainable}) in {ft_dir}")
  t0 = time.time()
  train_and_evaluate(ft_cfg, ft_dir)
  if run.config.protocol == "official":
    ft = select_epoch_on_test(run, ft_dir)
  else:
    ft = load_trained(ft_dir, "best", mesh=run.mesh)
  return ft, ft_cfg, round(time.time() - t0, 2)


def saved_steps(ft_dir: str) -> list[int]:
  """The steps of the ``latest`` checkpoints of a training run, ascending."""
  root = os.path.join(ft_dir, "checkpoints", "latest")
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def select_epoch_on_test(run: _Run, ft_dir: str):
  """The official choice of the fine-tuned epoch: best clean accuracy on ``run.test``.

  Every saved epoch checkpoint is evaluated in order and a later one replaces
  the kept one only when strictly better, as ``main.py:316`` (``test_acc >
  best_acc``). The accuracies are written to ``<ft_dir>/selection.json``.

  Raises:
    CheckpointError: the run saved no checkpoint.
  """
  steps = saved_steps(ft_dir)
  best, best_acc, accs = None, -1.0, {}
  for step in steps:
    ft = load_trained(ft_dir, "latest", step=step, mesh=run.mesh)
    acc = evaluate_accuracy(run.clean_step, ft.params, ft.batch_stats, run.test,
                            run.batch_size, run.mesh, jax.random.PRNGKey(0))["clean"]
    accs[step] = acc
    if acc > best_acc:
      best, best_acc = ft, acc
  if best is None:
    best = load_trained(ft_dir, "latest", mesh=run.mesh)  # raises CheckpointError.
  _write_json(os.path.join(ft_dir, "selection.json"),
              {"rule": "best clean test accuracy (official main.py)", "test_size": len(run.test),
               "clean_by_step": {str(k): v for k, v in accs.items()}, "chosen_step": best.step})
  _say(f"fine-tuned epoch chosen on test: step {best.step} (clean {best_acc:.4f})")
  return best


def stage_interpolation(run: _Run, module: str, ft) -> dict:
  """Stage 4: clean / robust / OOD accuracy over the alpha grid on the selection split.

  Written to ``interpolation.json``.
  """
  config, at = run.config, run.at
  val_ood = _ood_sets(config, run.select, config.eval.ood.val_examples, run.select_name,
                      run.official_ood)
  key = dict(run.at_id, module=module, ft_step=ft.step, alphas=list(config.interpolation.alphas),
             val_attack=dict(config.eval.val_attack), ood=config.eval.ood.to_dict(),
             split=run.select_name, split_size=len(run.select))
  path = os.path.join(run.workdir, "interpolation.json")
  interp = _read_stage(path, key)
  if interp is not None:
    return interp
  t0 = time.time()
  records = []
  for alpha in tqdm.tqdm(sorted(config.interpolation.alphas), desc="alpha", leave=False,
                         disable=jax.process_index() != 0):
    p = interpolate(at.params, ft.params, alpha)
    bs = interpolate(at.batch_stats, ft.batch_stats, alpha)
    rec = {"alpha": float(alpha), **run.val_eval(p, bs)}
    ood = _ood_accuracy(run.clean_step, p, bs, val_ood, run.batch_size, run.mesh)
    rec["ood"] = None if ood is None else ood["mean"]
    records.append(rec)
  interp = {"key": key, "split": run.select_name, "records": records,
            "seconds": round(time.time() - t0, 2)}
  _write_json(path, interp)
  return interp


def stage_test(run: _Run, ft, chosen_alpha: float) -> tuple[dict, dict]:
  """Stage 5: test clean / PGD / AutoAttack / OOD of alpha 0, the chosen alpha and 1.

  Robust accuracy: ``eval.test_attack`` run ``eval.test_runs`` times with
  independent random starts, reduced per ``eval.test_reduce``
  (:func:`jaxrobust.rift.evaluation.evaluate_runs`; one run draws the keys of
  a plain ``{'clean', 'robust'}`` evaluation). Each row also holds every
  run's accuracy, the worst run and the per-point worst case.

  Returns:
    ``(rows, test_ood)``: label (``at``, ``rift``, ``finetuned``) -> figures,
    and the corrupted test sets used (empty when OOD is off).
  """
  config, at, test = run.config, run.at, run.test
  test_ood = _ood_sets(config, test, config.eval.ood.test_examples, "test", run.official_ood)
  attack = attacks_from_config({"robust": dict(config.eval.test_attack)})["robust"]
  test_step = make_runs_eval_step(at.model_fns, [attack] * config.eval.test_runs, run.mesh)
  final = {}
  for label, alpha in (("at", 0.0), ("rift", chosen_alpha), ("finetuned", 1.0)):
    p = interpolate(at.params, ft.params, alpha)
    bs = interpolate(at.batch_stats, ft.batch_stats, alpha)
    r = evaluate_runs(test_step, p, bs, test, run.batch_size, run.mesh,
                      jax.random.PRNGKey(config.seed + 2), config.eval.test_reduce,
                      desc=f"test {label}")
    row = {"alpha": alpha, "clean": r["clean"], "robust": r["robust"],
           "robust_runs": r["robust_runs"], "robust_worst_run": r["robust_worst_run"],
           "robust_pointwise": r["robust_pointwise"]}
    ood = _ood_accuracy(run.clean_step, p, bs, test_ood, run.batch_size, run.mesh)
    row["ood"] = None if ood is None else ood["mean"]
    row["ood_per_set"] = None if ood is None else ood["per_set"]
    if config.eval.autoattack_examples > 0 and label != "finetuned":  # AA: before / after.
      n = min(config.eval.autoattack_examples, len(test))
      sub = exact_subset(test, n)
      eps = config.eval.test_attack["eps"]
      res = run_autoattack(at.model_fns.logits_fn(p, bs), sub.images, sub.labels,
                           AutoAttackSettings.for_version(eps, "linf", "standard"),
                           batch_size=run.batch_size, mesh=run.mesh, seed=config.seed,
                           progress=False)
      row["autoattack"] = float(res.robust.mean())
      row["autoattack_examples"] = n
    final[label] = row
  return final, test_ood


def run_rift(config, workdir: str, should_stop: Callable[[], str | None] | None = None) -> dict:
  """Runs RiFT per ``config`` (see :mod:`jaxrobust.rift.config`) into ``workdir``.

  The five stages (module docstring) run in order; each skips itself when
  its JSON holds a result computed with the same settings. ``should_stop``
  (e.g. a :class:`jaxrobust.train.preemption.PreemptionGuard`'s signal) is
  polled after every MRC module: a signal name saves the sweep's progress
  (``mrc_partial.json``) and raises :class:`jaxrobust.errors.StatePreempted`;
  rerunning resumes with the finished modules (the fine-tuning stage stops
  and resumes through the trainer's own handling).

  Returns:
    The report written to ``<workdir>/report.json``.

  Raises:
    ConfigError, CheckpointError, DataError.
  """
  run = _prepare(config, workdir)
  run.should_stop = should_stop
  if config.finetune.module:  # a misnamed module fails now, not after the MRC sweep.
    _check_module(run, config.finetune.module)
  timings = {}
  mrc = stage_mrc(run)
  timings["mrc"] = mrc["seconds"]
  module = choose_module(run, mrc)
  reinit = stage_reinit(run)
  if reinit is not None:
    timings["reinit"] = reinit["seconds"]
  ft, ft_cfg, timings["finetune"] = stage_finetune(run, module)
  interp = stage_interpolation(run, module, ft)
  records = interp["records"]
  chosen = select_alpha(records, config.interpolation.robust_tolerance, "clean")
  plot_interpolation(records, os.path.join(workdir, "interpolation.png"), chosen["alpha"])
  timings["interpolation"] = interp["seconds"]
  t0 = time.time()
  final, test_ood = stage_test(run, ft, chosen["alpha"])
  timings["test"] = round(time.time() - t0, 2)

  rows = mrc["modules"]
  ood_label = None
  if test_ood:
    ood_label = sorted({ds.name.split("/")[0] for ds in test_ood.values()})
  report = {
      "protocol": config.protocol, "selection_split": run.select_name,
      "at_workdir": os.path.abspath(config.at_workdir), "at_step": run.at.step,
      "model": run.at.config.model.name, "module": module,
      "module_selected_by": "config.finetune.module" if config.finetune.module else "lowest MRC",
      "mrc": {"split": mrc["split"], "num_examples": mrc["num_examples"],
              "lossy_examples": mrc.get("lossy_examples", 0),
              "ranking": [r["name"] for r in sorted(rows, key=lambda r: r["mrc"])],
              "modules": rows},
      "reinit": reinit and {"baseline": reinit["baseline"], "rows": reinit["rows"]},
      "finetune": {"workdir": os.path.join(workdir, "finetune"), "best_step": ft.step,
                   "selected_on": f"{run.select_name} clean accuracy",
                   "train_examples": _train_examples(run, ft_cfg),
                   "trainable": ft_cfg.train.trainable},
      "interpolation": {"records": records, "chosen": chosen,
                        "robust_tolerance": config.interpolation.robust_tolerance},
      "test": final, "test_size": len(run.test), "test_lossy_images": _lossy(run.test),
      "test_attack": dict(config.eval.test_attack), "test_runs": config.eval.test_runs,
      "test_reduce": config.eval.test_reduce,
      "ood_source": ood_label, "seconds": timings,
  }
  _write_json(os.path.join(workdir, "report.json"), report)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
      f.write(markdown_report(report))
  _print_summary(report)
  return report


def markdown_report(report: dict) -> str:
  """The MRC ranking, re-initialisation table and test table of a report as Markdown."""
  out = [f"# RiFT on {report['model']} ({report['at_workdir']}, step {report['at_step']})", "",
         f"Protocol: {report.get('protocol', 'validation')} (choices on the "
         f"{report.get('selection_split', 'validation')} split).", "",
         f"Fine-tuned module: `{report['module']}` ({report['module_selected_by']}); "
         f"alpha = {report['interpolation']['chosen']['alpha']}.", "",
         "| module | kernel | MRC | robust acc. drop (pp) |", "| --- | --- | --- | --- |"]
  for r in sorted(report["mrc"]["modules"], key=lambda r: r["mrc"]):
    out.append(f"| `{r['name']}` | {'x'.join(map(str, r['shape']))} | {r['mrc']:.4f} | "
               f"{100 * r['acc_drop']:.1f} |")
  if report.get("reinit"):
    base = report["reinit"]["baseline"]
    out += ["", f"Re-initialisation ({report.get('selection_split', 'validation')}; trained "
            f"model: clean {100 * base['clean']:.1f} %,"
            f" robust {100 * base['robust']:.1f} %):", "",
            "| module | mode | clean | robust |", "| --- | --- | --- | --- |"]
    for r in report["reinit"]["rows"]:
      out.append(f"| `{r['module']}` | {r['mode']} | {100 * r['clean']:.1f} | "
                 f"{100 * r['robust']:.1f} |")
  out += ["", f"Test (`{_test_label(report)}`; robust = {_robust_label(report)}):", "",
          "| model | alpha | clean | robust | OOD | AutoAttack |",
          "| --- | --- | --- | --- | --- | --- |"]
  for label in ("at", "rift", "finetuned"):
    r = report["test"][label]
    out.append(f"| {label} | {r['alpha']} | {_fmt(r['clean'])} | {_fmt(r['robust'])} | "
               f"{_fmt(r['ood'])} | {_fmt(r.get('autoattack'))} |")
  if report["ood_source"]:
    out += ["", f"OOD source: {', '.join(report['ood_source'])}."]
  if report.get("test_lossy_images"):
    out += ["", f"Caveat: {report['test_lossy_images']} of the {report['test_size']} test images "
            f"are JPEG-derived (lossy), not the official pixels."]
  return "\n".join(out) + "\n"


def _train_examples(run: _Run, ft_cfg) -> int:
  """Training images of the fine-tuning run: the train split minus its validation split."""
  available = len(run.splits.train) + len(run.splits.val) - ft_cfg.data.val_size
  if ft_cfg.data.train_size:  # the AT run's seeded subset (then splits.train has that size).
    return min(int(ft_cfg.data.train_size), available)
  return available


def _test_label(report: dict) -> str:
  return f"test[:{report['test_size']}]"


def _robust_label(report: dict) -> str:
  attack = report.get("test_attack", {})
  runs = report.get("test_runs", 1)
  name = f"{attack.get('name', 'pgd').upper()}-{attack.get('num_steps', '?')}"
  if runs == 1:
    return name
  how = "worst run" if report.get("test_reduce") == "run" else "per-point worst"
  return f"{name}, {how} of {runs} runs"


def _fmt(v):
  return "   -  " if v is None else f"{100 * v:6.2f}"


def _print_reinit(report: dict) -> list[str]:
  if not report.get("reinit"):
    return []
  lines = [f"re-initialisation ({report.get('selection_split', 'validation')})   clean   robust"]
  for r in report["reinit"]["rows"]:
    lines.append(f"  {r['module']:<20s} {r['mode']:<9s} {_fmt(r['clean'])}  {_fmt(r['robust'])}")
  return lines


def _print_summary(report: dict) -> None:
  if jax.process_index() != 0:
    return
  lines = _print_reinit(report) + [
      f"RiFT: fine-tuned module {report['module']} ({report['module_selected_by']}), "
      f"alpha = {report['interpolation']['chosen']['alpha']}",
      f"protocol {report['protocol']}; robust = {_robust_label(report)}",
      f"{_test_label(report):<22s}clean   robust     OOD      AA"]
  for label in ("at", "rift", "finetuned"):
    r = report["test"][label]
    lines.append(f"  {label:<9s} a={r['alpha']:<4}  {_fmt(r['clean'])}  {_fmt(r['robust'])}  "
                 f"{_fmt(r['ood'])}  {_fmt(r.get('autoattack'))}")
  if report["ood_source"]:
    lines.append(f"OOD source: {', '.join(report['ood_source'])}")
  print("\n".join(lines), flush=True)


__all__ = ["finetune_config", "run_rift"]
