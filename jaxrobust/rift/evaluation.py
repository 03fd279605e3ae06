"""Robust accuracy over several independent attack runs: per run, worst run, per point.

RiFT's paper reports PGD-10 robust accuracy as the *worst of three runs*
(Zhu et al., ICCV 2023, Sec. 5.1: PGD-10 is run three times and the worst
robust accuracy is the final metric). Its code
(``microsoft/robustlearn:RiFT/utils.py`` ``evaluate_cifar_robustness``) runs
one torchattacks PGD-10 (random start) per call; the three runs are three
such calls. :func:`make_runs_eval_step` runs them in one jitted step and keeps
both reductions:

* ``'run'`` (the paper's): the lowest of the runs' accuracies;
* ``'point'``: a point counts as robust only if every run leaves it correctly
  classified (the per-point worst case, as AutoAttack aggregates attacks),
  never above ``'run'``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from jaxrobust.accuracy import evaluate_accuracy
from jaxrobust.attacks import call_logits, model_key
from jaxrobust.data import ArrayDataset, to_float
from jaxrobust.errors import ConfigError
from jaxrobust.parallel import data_sharding, replicated

REDUCTIONS = ("run", "point")


def make_runs_eval_step(model: Any, attacks: Sequence[Callable], mesh=None) -> Callable:
  """A jitted ``eval_step(params, batch_stats, batch, rng) -> sums`` over several attack runs.

  Args:
    model: the functional model (``logits_fn(params, batch_stats, bn=...)``);
      every pass uses the eval view (BatchNorm running averages).
    attacks: one attack per run (``attack(logits_fn, key, x, y) -> x_adv``),
      typically the same attack ``R`` times; run ``r`` gets the key
      ``fold_in(rng, 1 + r)`` (and the model key ``model_key(rng, 1 + r)``),
      so a single run draws exactly the keys of
      :func:`jaxrobust.accuracy.make_eval_step` with ``{'clean', 'robust'}``
      and gives the same numbers.
    mesh: when given, the batch is sharded over ``data``, the result replicated.

  Returns:
    A function whose output holds float32 counts for one padded batch
    (``batch['mask']`` marks real rows): ``'count'`` (real rows),
    ``'clean'`` (correct on clean inputs), ``'run_<r>'`` (correct after run
    ``r``) and ``'pointwise'`` (correct after every run).

  Raises:
    ConfigError: no attack given.
  """
  attacks = tuple(attacks)
  if not attacks:
    raise ConfigError("make_runs_eval_step needs at least one attack run")

  def eval_step(params, batch_stats, batch, rng):
    x = to_float(batch["image"])
    y = batch["label"].astype(jnp.int32)
    mask = batch["mask"].astype(jnp.float32)
    logits_fn = model.logits_fn(params, batch_stats, bn="eval")
    clean = jnp.argmax(call_logits(logits_fn, x, model_key(rng, 0)), -1) == y
    out = {"count": jnp.sum(mask), "clean": jnp.sum(clean * mask)}
    every = jnp.ones_like(clean)
    for r, attack in enumerate(attacks):
      x_adv = attack(logits_fn, jax.random.fold_in(rng, 1 + r), x, y)
      ok = jnp.argmax(call_logits(logits_fn, x_adv, model_key(rng, 1 + r)), -1) == y
      out[f"run_{r}"] = jnp.sum(ok * mask)
      every = every & ok
    out["pointwise"] = jnp.sum(every * mask)
    return out

  if mesh is None:
    return jax.jit(eval_step)
  rep, dat = replicated(mesh), data_sharding(mesh)
  return jax.jit(eval_step, in_shardings=(rep, rep, dat, rep), out_shardings=rep)


def evaluate_runs(eval_step: Callable, params, batch_stats, dataset: ArrayDataset,
                  batch_size: int, mesh, rng: jax.Array, reduce: str = "run",
                  desc: str | None = None) -> dict:
  """Clean and robust accuracy over ``R`` runs (``eval_step`` from :func:`make_runs_eval_step`).

  Args:
    eval_step, params, batch_stats, dataset, batch_size, mesh, rng: as
      :func:`jaxrobust.accuracy.evaluate_accuracy` (batch ``i`` uses
      ``fold_in(rng, i)``).
    reduce: ``'run'`` (``robust`` = the lowest run accuracy, RiFT's paper) or
      ``'point'`` (``robust`` = the per-point worst case).
    desc: progress-bar label (None: no bar).

  Returns:
    ``{'clean', 'robust', 'robust_runs' (list, one accuracy per run),
    'robust_worst_run', 'robust_pointwise', 'count'}``; accuracies in [0, 1].

  Raises:
    ConfigError: an unknown ``reduce``.
  """
  if reduce not in REDUCTIONS:
    raise ConfigError(f"reduce={reduce!r}; use 'run' (worst run) or 'point' (per-point worst)")
  acc = evaluate_accuracy(eval_step, params, batch_stats, dataset, batch_size, mesh, rng, desc)
  runs = [acc[f"run_{r}"] for r in range(sum(k.startswith("run_") for k in acc))]
  out = {"clean": acc["clean"], "robust_runs": runs, "robust_worst_run": min(runs),
         "robust_pointwise": acc["pointwise"], "count": acc["count"]}
  out["robust"] = out["robust_worst_run"] if reduce == "run" else out["robust_pointwise"]
  return out


__all__ = ["REDUCTIONS", "evaluate_runs", "make_runs_eval_step"]
