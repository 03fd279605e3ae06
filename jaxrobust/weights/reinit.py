"""Layer re-initialisation: chosen parameters back to their initialisers' draw, the rest kept.

"Are all layers created equal?" (Zhang, Bengio & Singer, JMLR 2022): a
trained layer is *re-initialised* (its weights at initialisation, i.e. the
run's own seed) or *re-randomised* (a fresh draw from the same initialisers,
another seed), every other parameter kept, and the model is evaluated; the
robustness survey lists it among the generalisation diagnostics
(:func:`reinit_analysis` / :func:`reinit_analysis_run`: every module in
turn, a table and a plot; RiFT's pipeline runs the same analysis).

The initialisers are the model's own: the fresh weights come from building
the same architecture (:func:`jaxrobust.train.builders.build_model`) with the
given seed, so a leaf's new value is exactly what that seed's model holds
(bit-identical to ``build_model(config, shape, seed)``). Modules are chosen by
a regular expression searched in the dotted parameter names (``'convs.1.'``,
``'^linear\\.'``; :func:`jaxrobust.weights.modules.module_regex` turns exact
module names into one). BatchNorm running averages are kept unless
``reset_batch_stats`` (then those of the matched modules take the fresh
model's, i.e. mean 0 / variance 1).

    python -m jaxrobust.weights reinit --workdirs A --modules 'convs\\.0\\.' \\
        [--reinit_mode reinit|rerandom] [--seed N] --out DIR
    python -m jaxrobust.weights reinit_analysis --workdirs A [--modules REGEX] --out DIR
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Sequence

import jax

from jaxrobust.errors import ConfigError
from jaxrobust.train.builders import build_model, image_shape_of
from jaxrobust.train.state import split_model
from jaxrobust.utils.paths import compile_regex, named_leaves, select_leaves
from jaxrobust.weights.modules import Module, list_modules, replace_module

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


def reinit_analysis(params, modules: Sequence[Module], init_params, random_params,
                    evaluate: Callable, modes: Sequence[str] = REINIT_MODES,
                    progress: Callable | None = None) -> list[dict]:
  """Clean / robust accuracy after resetting each module in turn, everything else kept.

  "Are all layers created equal?" (Zhang, Bengio & Singer, JMLR 2022): a
  module is *re-initialised* (``init_params``: its weights at initialisation)
  or *re-randomised* (``random_params``: a fresh draw from the same
  initialisers); robustness-critical modules are those whose reset destroys
  robust accuracy.

  Args:
    params: trained parameters.
    modules: modules to reset, one at a time (:func:`list_modules`).
    init_params: the parameters at initialisation (same structure).
    random_params: an independent random initialisation (same structure).
    evaluate: ``params -> {'clean': acc, 'robust': acc}``.
    modes: subset of :data:`REINIT_MODES`.
    progress: optional callback ``(module name, mode)`` after each evaluation.

  Returns:
    ``[{'module', 'mode', 'clean', 'robust'}]`` for every module and mode, in
    module order.

  Raises:
    ValueError: an unknown mode.
  """
  bad = set(modes) - set(REINIT_MODES)
  if bad:
    raise ValueError(f"unknown re-initialisation mode(s) {sorted(bad)}; use {REINIT_MODES}")
  sources = {"reinit": init_params, "rerandom": random_params}
  rows = []
  for m in modules:
    for mode in modes:
      acc = evaluate(replace_module(params, sources[mode], m.name))
      rows.append({"module": m.name, "mode": mode, **acc})
      if progress is not None:
        progress(m.name, mode)
  return rows


def reinit_table(rows: Sequence[dict], baseline: dict | None = None) -> str:
  """A Markdown table of :func:`reinit_analysis` rows: one line per module, clean / robust per mode.

  Accuracies are printed in percent with one decimal; ``baseline`` (the
  trained model's ``{'clean', 'robust'}``) is the first line.
  """
  modules = list(dict.fromkeys(r["module"] for r in rows))
  modes = list(dict.fromkeys(r["mode"] for r in rows))
  acc = {(r["module"], r["mode"]): r for r in rows}
  head = "| module | " + " | ".join(f"{m} clean | {m} robust" for m in modes) + " |"
  lines = [head, "| --- |" + " ---: | ---: |" * len(modes)]
  if baseline is not None:
    cells = f"{100 * baseline['clean']:.1f} | {100 * baseline['robust']:.1f}"
    lines.append("| (trained, nothing reset) | " + " | ".join([cells] * len(modes)) + " |")
  for m in modules:
    cells = []
    for mode in modes:
      r = acc.get((m, mode))
      cells.append("- | -" if r is None else f"{100 * r['clean']:.1f} | {100 * r['robust']:.1f}")
    lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def reinit_analysis_run(workdir: str, out: str, include: str = "", exclude: str = "",
                        modes: Sequence[str] = REINIT_MODES, which: str = "best",
                        seed: int | None = None, plot: bool = True, mesh=None) -> dict:
  """The re-initialisation analysis of one trained run, written to ``out``.

  Every conv / dense module of the run (filtered by the ``include`` /
  ``exclude`` regexes over module names) is reset in turn, for each mode:
  ``reinit`` takes the weights the run started from when trained from a seed
  (its ``config.seed``, or ``seed``), ``rerandom`` a fresh draw (``seed + 1``,
  default ``config.seed + 1``). Accuracy is measured on the run's validation
  split (held out from train) under ``config.eval.val_attack``, BatchNorm
  running averages kept. Writes ``<out>/reinit.json`` (rows, baseline,
  settings), ``<out>/reinit.md`` (the table) and ``<out>/reinit.png``.

  Returns:
    The record written to ``reinit.json``.

  Raises:
    ConfigError: unknown modes, a regex that matches no module, an ``out``
      that already holds an analysis. CheckpointError, DataError.
  """
  # pylint: disable-next=g-import-not-at-top
  from jaxrobust.weights.runs import Validator, load_runs
  bad = set(modes) - set(REINIT_MODES)
  if bad or not modes:
    raise ConfigError(f"unknown re-initialisation mode(s) {sorted(bad) or list(modes)}; "
                      f"choose from {REINIT_MODES}")
  path = os.path.join(out, "reinit.json")
  if os.path.exists(path):
    raise ConfigError(f"--out {out} already holds a re-initialisation analysis (reinit.json); "
                      "choose a fresh directory")
  (run,) = load_runs([workdir], which, mesh)
  modules = list_modules(run.params, include, exclude)
  base_seed = int(run.config.seed) if seed is None else int(seed)
  init_params, _ = fresh_weights(run.config, base_seed)
  random_params, _ = fresh_weights(run.config, base_seed + 1)
  validator = Validator(run, mesh)

  def evaluate(params):
    return validator(params, run.batch_stats)

  baseline = evaluate(run.params)
  rows = reinit_analysis(run.params, modules, init_params, random_params, evaluate, modes)
  record = {"workdir": os.path.abspath(workdir), "which": run.which, "step": run.step,
            "modes": list(modes), "seeds": {"reinit": base_seed, "rerandom": base_seed + 1},
            "include": include, "exclude": exclude,
            "val_attack": dict(validator.config.eval.val_attack),
            "val_size": int(len(validator.splits.val)), "baseline": baseline, "rows": rows}
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    table = reinit_table(rows, baseline)
    with open(os.path.join(out, "reinit.md"), "w", encoding="utf-8") as f:
      f.write(table)
    if plot:
      from jaxrobust.weights.plots import plot_reinit  # pylint: disable=g-import-not-at-top
      plot_reinit(rows, os.path.join(out, "reinit.png"), baseline)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2, default=float)
    print(f"re-initialisation of {len(modules)} modules ({', '.join(modes)}), validation "
          f"accuracy in %:\n{table}-> {out}", flush=True)
  return record


__all__ = ["REINIT_MODES", "fresh_weights", "reinit_analysis", "reinit_analysis_run",
           "reinit_leaves", "reinit_run", "reinit_table", "reinit_weights"]
