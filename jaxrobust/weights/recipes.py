"""Soups and interpolations of trained runs, end to end (what the CLI runs).

:func:`soup_runs` and :func:`interpolate_runs` restore runs of
``python -m jaxrobust.train``, merge their weights with the pure functions of
:mod:`jaxrobust.weights.merge`, select on the validation split (held out from
train; never the test set), optionally recompute the BatchNorm statistics of
the result, and write it as a trained-run workdir
(:func:`jaxrobust.weights.runs.write_workdir`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import jax

from jaxrobust.attacks import attack_from_config
from jaxrobust.data import TrainIterator
from jaxrobust.errors import ConfigError
from jaxrobust.train.bn import recompute_batch_stats
from jaxrobust.weights.merge import (SELECTION_RULES, greedy_soup, interpolate, sweep,
                                     uniform_soup)
from jaxrobust.weights.plots import plot_interpolation
from jaxrobust.weights.runs import (Validator, check_fresh, check_same_architecture, load_runs,
                                    tree_of,
                                    warn_if_different_initialisation, write_workdir)

log = logging.getLogger("jaxrobust")

BN_MODES = ("average", "recompute_clean", "recompute_adversarial")
SOUP_METRICS = {"val_robust": "robust", "val_clean": "clean"}


def recalibrate(run, params, batch_stats, validator: Validator, mode: str):
  """BatchNorm statistics for ``params`` per ``mode`` (one of :data:`BN_MODES`).

  ``average``: ``batch_stats`` as given (merged with the weights).
  ``recompute_clean`` / ``recompute_adversarial``: one epoch of the run's
  training iterator (its augmentation and batch size, seed ``config.seed``)
  through :func:`jaxrobust.weights.recompute_batch_stats`, on clean images or
  on adversarial ones from the run's training attack (``config.method.attack``,
  else ``config.eval.val_attack``).

  Raises:
    ConfigError: unknown ``mode``.
  """
  if mode not in BN_MODES:
    raise ConfigError(f"unknown BatchNorm mode {mode!r}; choose one of {BN_MODES}")
  if mode == "average":
    return batch_stats
  cfg = validator.config
  it = TrainIterator(validator.splits.train, cfg.train.batch_size, cfg.seed,
                     augment=cfg.data.augment, pad=cfg.data.pad, pad_mode=cfg.data.pad_mode,
                     flip=cfg.data.flip)
  batches = (next(it) for _ in range(it.steps_per_epoch))
  perturb = None
  if mode == "recompute_adversarial":
    attack = dict(cfg.method.get("attack") or cfg.eval.val_attack)
    perturb = attack_from_config(attack)
  return recompute_batch_stats(run.model_fns, params, batch_stats, batches, perturb=perturb,
                               rng=jax.random.PRNGKey(cfg.seed + 3))


def soup_runs(workdirs: Sequence[str], out: str, recipe: str = "greedy",
              select: str = "val_robust", which: str = "best", bn: str = "average",
              mesh=None) -> dict:
  """A uniform or greedy soup of trained runs, written as a workdir ``out``.

  Args:
    workdirs: runs of one architecture (refused otherwise; a warning when
      they do not share an initialisation).
    out: output workdir (fresh).
    recipe: ``'greedy'`` (Wortsman et al. Recipe 1) or ``'uniform'``.
    select: the greedy soup's held-out metric (the uniform soup has none):
      ``'val_robust'`` (default: validation robust accuracy under
      ``config.eval.val_attack``) or ``'val_clean'``.
    which: each run's ``'best'`` or ``'latest'`` checkpoint.
    bn: :data:`BN_MODES`; ``average`` merges the running statistics with the
      weights (the official soups average whole state dicts).

  Returns:
    The recipe record written to ``<out>/weights.json``.

  Raises:
    ConfigError, CheckpointError, DataError.
  """
  if recipe not in ("greedy", "uniform"):
    raise ConfigError(f"unknown soup recipe {recipe!r}; choose 'greedy' or 'uniform'")
  if select not in SOUP_METRICS:
    raise ConfigError(f"unknown --select {select!r} for a soup; choose one of "
                      f"{sorted(SOUP_METRICS)}")
  if bn not in BN_MODES:
    raise ConfigError(f"unknown BatchNorm mode {bn!r}; choose one of {BN_MODES}")
  check_fresh(out)
  runs = load_runs(workdirs, which, mesh)
  fingerprint = check_same_architecture(runs)
  warn_if_different_initialisation(runs)
  validator = Validator(runs[0], mesh)
  key = SOUP_METRICS[select]
  trees = [tree_of(r) for r in runs]

  def evaluate(tree):
    return validator(tree["params"], tree["batch_stats"])

  ingredient_val = [evaluate(t) for t in trees]
  record = {"recipe": f"{recipe}_soup", "model": fingerprint, "select": select, "bn": bn,
            "sources": [{"workdir": r.workdir, "which": r.which, "step": r.step,
                         "val": v} for r, v in zip(runs, ingredient_val)]}
  if recipe == "uniform":
    soup = uniform_soup(trees)
    members = list(range(len(trees)))
  else:
    soup, members, steps = greedy_soup(
        trees, lambda t: evaluate(t)[key], scores=[v[key] for v in ingredient_val])
    record["greedy_log"] = steps
  record["members"] = [runs[i].workdir for i in members]
  batch_stats = recalibrate(runs[0], soup["params"], soup["batch_stats"], validator, bn)
  record["val"] = validator(soup["params"], batch_stats)
  record["workdir"] = write_workdir(out, runs[0], soup["params"], batch_stats, record,
                                    step=max(r.step for r in runs))
  _say(f"{recipe} soup of {len(members)}/{len(runs)} runs: val clean "
       f"{record['val']['clean']:.4f}, robust {record['val']['robust']:.4f} -> {out}")
  return record


def interpolate_runs(from_dir: str, to_dir: str, alphas: Sequence[float], out: str,
                     select: str = "clean_within_robust_tolerance",
                     robust_tolerance: float = 0.01, which: str = "best",
                     bn: str = "average", save_all: bool = False, mesh=None) -> dict:
  """WiSE-FT: ``theta(alpha) = (1 - alpha) theta_from + alpha theta_to`` over ``alphas``.

  Every grid point is evaluated on the validation split (clean and robust
  accuracy, statistics interpolated with the weights); the point chosen by
  ``select`` (:data:`jaxrobust.weights.SELECTION_RULES`; default: highest
  clean accuracy whose robust accuracy is within ``robust_tolerance`` of
  ``alpha = 0``, RiFT's rule) is written as the workdir ``out`` (its
  statistics recomputed per ``bn``), and with ``save_all`` every grid point
  as ``<out>/alpha_<alpha>/`` too (statistics as interpolated).
  ``<out>/interpolation.json`` holds the records and
  ``<out>/interpolation.png`` draws them (validation clean / robust against
  alpha).

  Raises:
    ConfigError: an unknown rule, runs of different architectures, a grid
      without 0 under the tolerance rule. CheckpointError, DataError.
  """
  if select not in SELECTION_RULES:
    raise ConfigError(f"unknown --select {select!r}; choose one of {sorted(SELECTION_RULES)}")
  if bn not in BN_MODES:
    raise ConfigError(f"unknown BatchNorm mode {bn!r}; choose one of {BN_MODES}")
  alphas = sorted(float(a) for a in alphas)
  if select == "clean_within_robust_tolerance" and not any(abs(a) < 1e-12 for a in alphas):
    raise ConfigError("--select clean_within_robust_tolerance compares with alpha = 0; "
                      "include 0 in --alphas")
  check_fresh(out)
  runs = load_runs([from_dir, to_dir], which, mesh)
  fingerprint = check_same_architecture(runs)
  a, b = runs
  validator = Validator(a, mesh)
  records = sweep(validator, a.params, a.batch_stats, b.params, b.batch_stats, alphas)
  chosen = SELECTION_RULES[select](records, robust_tolerance)
  base = {"model": fingerprint, "from": {"workdir": a.workdir, "which": a.which, "step": a.step},
          "to": {"workdir": b.workdir, "which": b.which, "step": b.step}, "select": select,
          "robust_tolerance": robust_tolerance, "records": records, "chosen": chosen}
  os.makedirs(out, exist_ok=True)
  if save_all:
    for r in records:
      p = interpolate(a.params, b.params, r["alpha"])
      bs = interpolate(a.batch_stats, b.batch_stats, r["alpha"])
      write_workdir(os.path.join(out, f"alpha_{r['alpha']:g}"), a, p, bs,
                    dict(base, recipe="interpolation", alpha=r["alpha"], bn="average", val=r))
  p = interpolate(a.params, b.params, chosen["alpha"])
  bs = recalibrate(a, p, interpolate(a.batch_stats, b.batch_stats, chosen["alpha"]), validator,
                   bn)
  val = chosen if bn == "average" else {"alpha": chosen["alpha"], **validator(p, bs)}
  record = dict(base, recipe="interpolation", alpha=chosen["alpha"], bn=bn, val=val)
  record["workdir"] = write_workdir(out, a, p, bs, record)
  if jax.process_index() == 0:
    with open(os.path.join(out, "interpolation.json"), "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2, default=str)
    plot_interpolation(records, os.path.join(out, "interpolation.png"), chosen["alpha"],
                       xlabel=f"alpha (0 = {os.path.basename(os.path.normpath(from_dir))}, "
                              f"1 = {os.path.basename(os.path.normpath(to_dir))})")
  _say(f"interpolation: alpha {chosen['alpha']:g} chosen ({select}); val clean "
       f"{val['clean']:.4f}, robust {val['robust']:.4f} -> {out}")
  return record


def recalibrate_run(workdir: str, out: str, bn: str = "recompute_clean", which: str = "best",
                    mesh=None) -> dict:
  """One run with its BatchNorm statistics recomputed, written as a workdir ``out``.

  For a run that kept an EMA (``config.train.ema_decay > 0``) these are the
  EMA weights, whose statistics the trainer never computed (it evaluates
  them with the raw model's running averages).

  Raises:
    ConfigError: ``bn`` is not a recomputation mode. CheckpointError, DataError.
  """
  if bn not in BN_MODES[1:]:
    raise ConfigError(f"recalibrate needs --bn in {BN_MODES[1:]}, got {bn!r}")
  check_fresh(out)
  (run,) = load_runs([workdir], which, mesh)
  validator = Validator(run, mesh)
  before = validator(run.params, run.batch_stats)
  batch_stats = recalibrate(run, run.params, run.batch_stats, validator, bn)
  record = {"recipe": "recalibration", "bn": bn, "ema": run.uses_ema,
            "sources": [{"workdir": run.workdir, "which": run.which, "step": run.step,
                         "val": before}],
            "val": validator(run.params, batch_stats)}
  record["workdir"] = write_workdir(out, run, run.params, batch_stats, record)
  _say(f"BatchNorm recomputed ({bn}): val clean {before['clean']:.4f} -> "
       f"{record['val']['clean']:.4f}, robust {before['robust']:.4f} -> "
       f"{record['val']['robust']:.4f} -> {out}")
  return record


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


__all__ = ["BN_MODES", "SOUP_METRICS", "interpolate_runs", "recalibrate", "recalibrate_run",
           "soup_runs"]
