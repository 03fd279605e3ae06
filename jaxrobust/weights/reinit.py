"""Layer re-initialisation: chosen parameters back to their initialisers' draw, the rest kept.

"Are all layers created equal?" (Zhang, Bengio & Singer, JMLR 2022): a
trained layer is *re-initialised* (its weights at initialisation, i.e. the
run's own seed) or *re-randomised* (a fresh draw from the same initialisers,
another seed), every other parameter kept, and the model is evaluated; the
robustness survey lists it among the generalisation diagnostics
(:mod:`jaxrobust.rift.reinit` runs the per-module accuracy analysis).

The initialisers are the model's own: the fresh weights come from building
the same architecture (:func:`jaxrobust.train.builders.build_model`) with the
given seed, so a leaf's new value is exactly what that seed's model holds
(bit-identical to ``build_model(config, shape, seed)``). Modules are chosen by
a regular expression searched in the dotted parameter names (``'convs.1.'``,
``'^linear\\.'``; :func:`jaxrobust.rift.modules.module_regex` turns exact
module names into one). BatchNorm running averages are kept unless
``reset_batch_stats`` (then those of the matched modules take the fresh
model's, i.e. mean 0 / variance 1).

    python -m jaxrobust.weights reinit --workdirs A --modules 'convs\\.0\\.' \\
        [--reinit_mode reinit|rerandom] [--seed N] --out DIR
"""
from __future__ import annotations

import logging
from typing import Any

import jax

from jaxrobust.errors import ConfigError
from jaxrobust.train.builders import build_model, image_shape_of
from jaxrobust.train.state import split_model
from jaxrobust.utils.paths import compile_regex, named_leaves, select_leaves

log = logging.getLogger("jaxrobust")

REINIT_MODES = ("reinit", "rerandom")


def fresh_weights(config, seed: int) -> tuple[Any, Any]:
  """``(params, batch_stats)`` of the run's architecture freshly initialised with ``seed``.

  ``config`` is a training config (the run's ``config.json``); the model is
  built for ``config.data.image_shape`` (or the dataset's), with the
  auxiliary heads it declares.
  """
  _, params, batch_stats = split_model(build_model(config, image_shape_of(config), seed=seed))
  return params, batch_stats


def reinit_leaves(tree, fresh, pattern: str, what: str = "--modules",
                  allow_none: bool = False) -> tuple[Any, list[str]]:
  """``tree`` with the leaves whose dotted name matches ``pattern`` taken from ``fresh``.

  Args:
    tree: a parameter (or statistics) pytree, e.g. trained weights.
    fresh: the same structure, e.g. :func:`fresh_weights`.
    pattern: regex searched (``re.search``) in each dotted leaf name.
    what: the setting's name in error messages.
    allow_none: return ``tree`` unchanged when nothing matches (else an error).

  Returns:
    ``(new_tree, names)``: unmatched leaves are the very arrays of ``tree``
    (bit-identical), matched ones those of ``fresh``; ``names`` the replaced
    leaves' dotted names in tree order.

  Raises:
    ConfigError: an invalid regex, structures that differ, or (without
      ``allow_none``) a pattern that matches no leaf (the message lists them).
  """
  if jax.tree.structure(tree) != jax.tree.structure(fresh):
    raise ConfigError("the fresh weights do not have the structure of the trained ones; "
                      "re-initialise with the run's own config")
  if allow_none:
    rx = compile_regex(pattern, what)
    if not any(rx.search(n) for n, _ in named_leaves(tree)):
      return tree, []
  mask = select_leaves(tree, pattern, what)
  names = [n for (n, _), m in zip(named_leaves(tree), jax.tree.leaves(mask)) if m]
  for (n, a), (_, b) in zip(named_leaves(tree), named_leaves(fresh)):
    if n in names and a.shape != b.shape:
      raise ConfigError(f"{n}: trained shape {a.shape} but fresh shape {b.shape}")
  return jax.tree.map(lambda m, a, b: b if m else a, mask, tree, fresh), names


def reinit_weights(params, batch_stats, config, pattern: str, mode: str = "reinit",
                   seed: int | None = None, reset_batch_stats: bool = False):
  """Trained ``params`` with the modules matching ``pattern`` re-initialised.

  Args:
    params, batch_stats: the trained weights of a run of ``config``.
    config: that run's training config.
    pattern: regex over dotted parameter names (see module doc).
    mode: ``'reinit'`` (the weights at initialisation: ``config.seed``) or
      ``'rerandom'`` (a fresh draw: ``seed``, default ``config.seed + 1``).
    seed: the initialisation seed; overrides the mode's default.
    reset_batch_stats: also reset the matched modules' BatchNorm running
      averages (default: kept).

  Returns:
    ``(params, batch_stats, record)``; ``record`` has ``mode``, ``seed``,
    ``modules`` (the pattern) and ``replaced`` (the dotted leaf names).

  Raises:
    ConfigError: an unknown mode, or a pattern that selects no parameter.
  """
  if mode not in REINIT_MODES:
    raise ConfigError(f"unknown re-initialisation mode {mode!r}; choose one of {REINIT_MODES}")
  if seed is None:
    seed = int(config.seed) + (0 if mode == "reinit" else 1)
  fresh_params, fresh_stats = fresh_weights(config, seed)
  new_params, replaced = reinit_leaves(params, fresh_params, pattern)
  new_stats, reset = batch_stats, []
  if reset_batch_stats and jax.tree.leaves(batch_stats):
    new_stats, reset = reinit_leaves(batch_stats, fresh_stats, pattern, allow_none=True)
  record = {"recipe": "reinit", "mode": mode, "seed": int(seed), "modules": pattern,
            "replaced": replaced, "reset_batch_stats": reset}
  return new_params, new_stats, record


def reinit_run(workdir: str, out: str, pattern: str, mode: str = "reinit",
               seed: int | None = None, which: str = "best", reset_batch_stats: bool = False,
               mesh=None) -> dict:
  """One run with chosen modules re-initialised, written as a trained-run workdir ``out``.

  Validation accuracy (the run's held-out split and ``config.eval.val_attack``)
  before and after goes to ``<out>/weights.json``; ``python -m
  jaxrobust.evaluate --workdir DIR`` then reads ``out`` like any run.

  Raises:
    ConfigError, CheckpointError, DataError.
  """
  # pylint: disable-next=g-import-not-at-top
  from jaxrobust.weights.runs import Validator, check_fresh, load_runs, write_workdir
  check_fresh(out)
  (run,) = load_runs([workdir], which, mesh)
  params, batch_stats, record = reinit_weights(run.params, run.batch_stats, run.config,
                                               pattern, mode, seed, reset_batch_stats)
  validator = Validator(run, mesh)
  record["sources"] = [{"workdir": run.workdir, "which": run.which, "step": run.step,
                        "val": validator(run.params, run.batch_stats)}]
  record["val"] = validator(params, batch_stats)
  record["workdir"] = write_workdir(out, run, params, batch_stats, record)
  if jax.process_index() == 0:
    before = record["sources"][0]["val"]
    print(f"{mode} of {len(record['replaced'])} parameters ({pattern!r}, seed {record['seed']}):"
          f" val clean {before['clean']:.4f} -> {record['val']['clean']:.4f}, robust "
          f"{before['robust']:.4f} -> {record['val']['robust']:.4f} -> {out}", flush=True)
  return record


__all__ = ["REINIT_MODES", "fresh_weights", "reinit_leaves", "reinit_run", "reinit_weights"]
