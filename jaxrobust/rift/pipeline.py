"""``run_rift(config, workdir)``: RiFT end to end on a model trained by this library.

Stages (each result is written to ``workdir`` as soon as it exists, so a rerun
of the same command skips finished stages; the fine-tuning run resumes from
its own checkpoints):

1. ``mrc.json`` / ``mrc.png``: the fixed adversarial set (PGD-10 on the
   validation split) and the MRC of every selected module.
2. ``reinit.json``: validation clean / robust accuracy after re-initialising
   or re-randomising each module.
3. ``finetune/``: clean fine-tuning of the lowest-MRC module only (a
   ``jaxrobust.train`` run with ``train.init_from`` and ``train.trainable``),
   best epoch by validation clean accuracy.
4. ``interpolation.json`` / ``interpolation.png``: validation clean, robust and
   OOD (corrupted) accuracy of ``theta(alpha)`` over the grid; the chosen
   ``alpha`` maximises clean accuracy within the robust tolerance.
5. ``report.json``: test numbers (clean, PGD, optional AutoAttack, OOD) of the
   adversarially trained model (alpha 0), the fine-tuned one (alpha 1) and
   the RiFT model (chosen alpha).
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
from jaxrobust.errors import ConfigError
from jaxrobust.evaluate.autoattack import AutoAttackSettings, run_autoattack
from jaxrobust.accuracy import (attacks_from_config, evaluate_accuracy,
                                           exact_subset, make_eval_step)
from jaxrobust.train.restore import load_trained
from jaxrobust.methods import method_config
from jaxrobust.rift.config import mrc_settings, resolve_rift_config, validate_rift_config
from jaxrobust.weights import interpolate, select_alpha
from jaxrobust.rift.modules import list_modules, module_regex
from jaxrobust.rift.mrc import build_adversarial_set, least_critical, mrc_sweep
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

  Clean cross-entropy on the training split (crop 4 with reflect padding +
  flip), SGD momentum 0.9, lr 0.001, wd 5e-4, 10 epochs with x0.1 at epoch 5,
  batch 128; only the parameters under ``module`` are updated; BatchNorm per
  ``config.finetune.bn``; the kept epoch is the best by validation clean
  accuracy (the official code selects on test accuracy).
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
  t = c.train
  t.lr, t.num_epochs, t.num_steps = f.lr, f.num_epochs, f.num_steps
  t.schedule, t.boundaries, t.scales = "piecewise", tuple(f.boundaries), tuple(f.scales)
  t.momentum, t.nesterov, t.weight_decay = f.momentum, False, f.weight_decay
  t.batch_size, t.warmup_epochs, t.ema_decay = f.batch_size, 0.0, 0.0
  t.init_from, t.init_which = os.path.abspath(config.at_workdir), config.at_which
  t.trainable = module_regex([module])
  t.log_every_steps = max(1, min(t.log_every_steps, 50))
  c.eval.select = "val_clean"
  c.eval.every_epochs = 1
  c.eval.batch_size = config.eval.batch_size
  c.eps, c.norm = r.eps, r.norm
  c.eval.val_attack = r.eval.val_attack.to_dict()
  c.eval.test_attack = r.eval.test_attack.to_dict()
  c.lock()
  return c


def _ood_sets(config, base, n, split):
  """Corrupted copies of the first ``n`` images of ``base`` (or {} when off)."""
  ood = config.eval.ood
  if ood.source == "none" or n <= 0:
    return {}
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


@dataclasses.dataclass
class _Run:
  """What every RiFT stage reads: the trained model, data, evaluation steps."""
  config: Any
  workdir: str
  mesh: Any
  at: Any  # the adversarially trained run (``load_trained``)
  splits: Any
  test: Any
  clean_step: Callable
  val_step: Callable
  val_key: jax.Array
  at_id: dict

  @property
  def batch_size(self) -> int:
    return self.config.eval.batch_size

  def val_eval(self, params, batch_stats=None) -> dict:
    """Validation clean / robust accuracy of ``params`` (default: the AT model's BN)."""
    bs = self.at.batch_stats if batch_stats is None else batch_stats
    r = evaluate_accuracy(self.val_step, params, bs, self.splits.val, self.batch_size,
                          self.mesh, self.val_key)
    return {"clean": r["clean"], "robust": r["robust"]}


def _prepare(config, workdir: str) -> _Run:
  """Validates ``config``, loads the AT model and the data, builds the eval steps."""
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
  data_cfg.data.test_size = config.eval.test_size
  splits = build_splits(data_cfg)
  model_fns = at.model_fns
  return _Run(
      config=config, workdir=workdir, mesh=mesh, at=at, splits=splits,
      test=exact_subset(splits.test, len(splits.test)),
      clean_step=make_eval_step(model_fns, {"clean": None}, mesh),
      val_step=make_eval_step(model_fns, attacks_from_config(
          {"clean": None, "robust": dict(config.eval.val_attack)}), mesh),
      val_key=jax.random.PRNGKey(config.seed + 1),
      at_id={"at_workdir": os.path.abspath(config.at_workdir), "at_which": at.which,
             "at_step": at.step, "seed": config.seed})


def stage_mrc(run: _Run) -> dict:
  """Stage 1: the fixed adversarial set and the MRC of every selected module (``mrc.json``)."""
  config, at = run.config, run.at
  key = dict(run.at_id, mrc=config.mrc.to_dict())
  mrc_path = os.path.join(run.workdir, "mrc.json")
  mrc = _read_stage(mrc_path, key)
  if mrc is not None:
    return mrc
  modules = list_modules(at.params, config.mrc.include, config.mrc.exclude)
  base = run.splits.val if config.mrc.split == "val" else run.test
  if config.mrc.num_examples:
    base = base.take(slice(0, config.mrc.num_examples))
  t0 = time.time()
  x_adv, y = build_adversarial_set(at.model_fns, at.params, at.batch_stats, base,
                                   dict(config.mrc.attack), config.mrc.attack_batch_size,
                                   jax.random.PRNGKey(config.seed + 3))
  t_adv = time.time() - t0
  _say(f"MRC: adversarial set of {len(y)} {config.mrc.split} images ({t_adv:.1f} s); "
       f"{len(modules)} modules, {len({m.shape for m in modules})} distinct kernel shapes")
  t0 = time.time()
  results = mrc_sweep(at.model_fns, at.params, at.batch_stats, x_adv, y, modules,
                      mrc_settings(config), jax.random.PRNGKey(config.seed + 4),
                      progress=jax.process_index() == 0)
  mrc = {"key": key, "num_examples": int(len(y)), "split": config.mrc.split,
         "base_loss": results[0].base_loss, "base_acc": results[0].base_acc,
         "modules": [r.to_dict() for r in results],
         "least_critical": least_critical(results).name,
         "seconds": {"adversarial_set": round(t_adv, 2), "sweep": round(time.time() - t0, 2)},
         "num_shapes": len({m.shape for m in modules})}
  _write_json(mrc_path, mrc)
  return mrc


def choose_module(run: _Run, mrc: dict) -> str:
  """``config.finetune.module`` or the lowest-MRC module; plots and prints the ranking.

  Raises:
    ConfigError: the named module is not a conv/dense module of the model.
  """
  config = run.config
  rows = mrc["modules"]
  all_modules = list_modules(run.at.params)
  module = config.finetune.module or mrc["least_critical"]
  if module not in {m.name for m in all_modules}:
    raise ConfigError(f"config.finetune.module={module!r} is not a conv/dense module of the "
                      f"model; modules are {[m.name for m in all_modules]}")
  plot_mrc(rows, os.path.join(run.workdir, "mrc.png"), module)
  _say("MRC (lowest first): " + ", ".join(
      f"{r['name']} {r['mrc']:.3f}" for r in sorted(rows, key=lambda r: r["mrc"])))
  return module


def stage_reinit(run: _Run) -> dict | None:
  """Stage 2: validation accuracy after re-initialising each module (``reinit.json``)."""
  config, at = run.config, run.at
  if not config.reinit.modes:
    return None
  key = dict(run.at_id, modes=list(config.reinit.modes), include=config.mrc.include,
             exclude=config.mrc.exclude, val_attack=dict(config.eval.val_attack))
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
                    "draw (seed + 1); validation split"}
  _write_json(path, reinit)
  return reinit


def stage_finetune(run: _Run, module: str):
  """Stage 3: clean fine-tuning of ``module`` only (``finetune/``); returns ``(run, cfg, s)``.

  The first is the fine-tuned run's best checkpoint (``load_trained``), the
  second its training config, the third the wall time in seconds.
  """
  ft_dir = os.path.join(run.workdir, "finetune")
  ft_cfg = finetune_config(run.config, run.at.config, module)
  _say(f"fine-tuning {module} ({ft_cfg.train.trainable}) in {ft_dir}")
  t0 = time.time()
  train_and_evaluate(ft_cfg, ft_dir)
  seconds = round(time.time() - t0, 2)
  return load_trained(ft_dir, "best", mesh=run.mesh), ft_cfg, seconds


def stage_interpolation(run: _Run, module: str, ft) -> dict:
  """Stage 4: validation clean / robust / OOD accuracy over the alpha grid (``interpolation.json``)."""
  config, at = run.config, run.at
  val_ood = _ood_sets(config, run.splits.val, config.eval.ood.val_examples, "validation")
  key = dict(run.at_id, module=module, ft_step=ft.step, alphas=list(config.interpolation.alphas),
             val_attack=dict(config.eval.val_attack), ood=config.eval.ood.to_dict())
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
  interp = {"key": key, "records": records, "seconds": round(time.time() - t0, 2)}
  _write_json(path, interp)
  return interp


def stage_test(run: _Run, ft, chosen_alpha: float) -> tuple[dict, dict]:
  """Stage 5: test clean / PGD / AutoAttack / OOD of alpha 0, the chosen alpha and 1.

  Returns:
    ``(rows, test_ood)``: label (``at``, ``rift``, ``finetuned``) -> figures,
    and the corrupted test sets used (empty when OOD is off).
  """
  config, at, test = run.config, run.at, run.test
  test_ood = _ood_sets(config, test, config.eval.ood.test_examples, "test")
  test_step = make_eval_step(at.model_fns, attacks_from_config(
      {"clean": None, "robust": dict(config.eval.test_attack)}), run.mesh)
  final = {}
  for label, alpha in (("at", 0.0), ("rift", chosen_alpha), ("finetuned", 1.0)):
    p = interpolate(at.params, ft.params, alpha)
    bs = interpolate(at.batch_stats, ft.batch_stats, alpha)
    r = evaluate_accuracy(test_step, p, bs, test, run.batch_size, run.mesh,
                          jax.random.PRNGKey(config.seed + 2), desc=f"test {label}")
    row = {"alpha": alpha, "clean": r["clean"], "robust": r["robust"]}
    ood = _ood_accuracy(run.clean_step, p, bs, test_ood, run.batch_size, run.mesh)
    row["ood"] = None if ood is None else ood["mean"]
    row["ood_per_set"] = None if ood is None else ood["per_set"]
    if config.eval.autoattack_examples > 0 and label != "finetuned":  # AA: before / after.
      n = min(config.eval.autoattack_examples, len(test))
      sub = test.take(slice(0, n))
      eps = config.eval.test_attack["eps"]
      res = run_autoattack(at.model_fns.logits_fn(p, bs), sub.images, sub.labels,
                           AutoAttackSettings.for_version(eps, "linf", "standard"),
                           batch_size=run.batch_size, mesh=run.mesh, seed=config.seed,
                           progress=False)
      row["autoattack"] = float(res.robust.mean())
      row["autoattack_examples"] = n
    final[label] = row
  return final, test_ood


def run_rift(config, workdir: str) -> dict:
  """Runs RiFT per ``config`` (see :mod:`jaxrobust.rift.config`) into ``workdir``.

  The five stages (module docstring) run in order; each skips itself when
  its JSON holds a result computed with the same settings.

  Returns:
    The report written to ``<workdir>/report.json``.

  Raises:
    ConfigError, CheckpointError, DataError.
  """
  run = _prepare(config, workdir)
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
      "at_workdir": os.path.abspath(config.at_workdir), "at_step": run.at.step,
      "model": run.at.config.model.name, "module": module,
      "module_selected_by": "config.finetune.module" if config.finetune.module else "lowest MRC",
      "mrc": {"split": mrc["split"], "num_examples": mrc["num_examples"],
              "ranking": [r["name"] for r in sorted(rows, key=lambda r: r["mrc"])],
              "modules": rows},
      "reinit": reinit and {"baseline": reinit["baseline"], "rows": reinit["rows"]},
      "finetune": {"workdir": os.path.join(workdir, "finetune"), "best_step": ft.step,
                   "trainable": ft_cfg.train.trainable},
      "interpolation": {"records": records, "chosen": chosen,
                        "robust_tolerance": config.interpolation.robust_tolerance},
      "test": final, "test_size": len(run.test), "test_attack": dict(config.eval.test_attack),
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
         f"Fine-tuned module: `{report['module']}` ({report['module_selected_by']}); "
         f"alpha = {report['interpolation']['chosen']['alpha']}.", "",
         "| module | kernel | MRC | robust acc. drop (pp) |", "| --- | --- | --- | --- |"]
  for r in sorted(report["mrc"]["modules"], key=lambda r: r["mrc"]):
    out.append(f"| `{r['name']}` | {'x'.join(map(str, r['shape']))} | {r['mrc']:.4f} | "
               f"{100 * r['acc_drop']:.1f} |")
  if report.get("reinit"):
    base = report["reinit"]["baseline"]
    out += ["", f"Re-initialisation (validation; trained model: clean {100 * base['clean']:.1f} %,"
            f" robust {100 * base['robust']:.1f} %):", "",
            "| module | mode | clean | robust |", "| --- | --- | --- | --- |"]
    for r in report["reinit"]["rows"]:
      out.append(f"| `{r['module']}` | {r['mode']} | {100 * r['clean']:.1f} | "
                 f"{100 * r['robust']:.1f} |")
  out += ["", f"Test (`test[:{report['test_size']}]`):", "",
          "| model | alpha | clean | robust | OOD | AutoAttack |", "| --- | --- | --- | --- | --- | --- |"]
  for label in ("at", "rift", "finetuned"):
    r = report["test"][label]
    out.append(f"| {label} | {r['alpha']} | {_fmt(r['clean'])} | {_fmt(r['robust'])} | "
               f"{_fmt(r['ood'])} | {_fmt(r.get('autoattack'))} |")
  if report["ood_source"]:
    out += ["", f"OOD source: {', '.join(report['ood_source'])}."]
  return "\n".join(out) + "\n"


def _fmt(v):
  return "   -  " if v is None else f"{100 * v:6.2f}"


def _print_reinit(report: dict) -> list[str]:
  if not report.get("reinit"):
    return []
  lines = ["re-initialisation (validation)   clean   robust"]
  for r in report["reinit"]["rows"]:
    lines.append(f"  {r['module']:<20s} {r['mode']:<9s} {_fmt(r['clean'])}  {_fmt(r['robust'])}")
  return lines


def _print_summary(report: dict) -> None:
  if jax.process_index() != 0:
    return
  lines = _print_reinit(report) + [
      f"RiFT: fine-tuned module {report['module']} ({report['module_selected_by']}), "
      f"alpha = {report['interpolation']['chosen']['alpha']}",
      f"test[:{report['test_size']}]        clean   robust     OOD      AA"]
  for label in ("at", "rift", "finetuned"):
    r = report["test"][label]
    lines.append(f"  {label:<9s} a={r['alpha']:<4}  {_fmt(r['clean'])}  {_fmt(r['robust'])}  "
                 f"{_fmt(r['ood'])}  {_fmt(r.get('autoattack'))}")
  if report["ood_source"]:
    lines.append(f"OOD source: {', '.join(report['ood_source'])}")
  print("\n".join(lines), flush=True)


__all__ = ["finetune_config", "run_rift"]
