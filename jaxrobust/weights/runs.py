"""Trained runs in, trained-run workdirs out: what the ``python -m jaxrobust.weights`` CLIs share.

A merged model is written like a training run: ``<out>/config.json`` (the
first source run's config) and ``<out>/checkpoints/{latest,best}/<step>``
(:class:`jaxrobust.checkpoint.Checkpointer`), so ``python -m
jaxrobust.evaluate --workdir <out>``, RiFT (``at_workdir``) and fine-tuning
(``train.init_from``) read it like any trained run
(:func:`jaxrobust.train.restore.load_trained`). ``<out>/weights.json``
records how it was made (sources, checkpoints, recipe, validation figures).
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Sequence

import jax

from jaxrobust import parallel
from jaxrobust.accuracy import attacks_from_config, evaluate_accuracy, make_eval_step
from jaxrobust.errors import ConfigError
from jaxrobust.train.builders import build_splits, image_shape_of, model_fingerprint
from jaxrobust.train.defaults import resolve_config
# write_workdir / check_fresh live with load_trained (the trainer writes its SWA run too).
from jaxrobust.train.restore import (TrainedModel, check_fresh, load_trained,  # noqa: F401
                                     write_workdir)

log = logging.getLogger("jaxrobust")


class InitialisationWarning(UserWarning):
  """Soup ingredients that do not share an initialisation (soups then rarely work)."""


def check_same_architecture(runs: Sequence[TrainedModel]) -> str:
  """The common model fingerprint of ``runs``; refuses runs of different architectures.

  Compares :func:`jaxrobust.train.builders.model_fingerprint` (model name,
  classes, input shape), the dataset, and the parameter / statistics trees
  (structure and shapes; :func:`jaxrobust.weights.check_compatible`).

  Raises:
    ConfigError: naming the first run that differs.
  """
  from jaxrobust.weights.merge import check_compatible  # pylint: disable=g-import-not-at-top
  fps = [model_fingerprint(r.config, image_shape_of(r.config)) for r in runs]
  for r, fp in zip(runs[1:], fps[1:]):
    if fp != fps[0]:
      raise ConfigError(f"cannot merge runs of different architectures: {runs[0].workdir} "
                        f"holds {fps[0]} but {r.workdir} holds {fp}; merge runs of one model")
    if r.config.data.name != runs[0].config.data.name:
      raise ConfigError(f"cannot merge runs trained on different data: {runs[0].workdir} "
                        f"({runs[0].config.data.name}) and {r.workdir} ({r.config.data.name})")
  check_compatible([r.params for r in runs], "runs")
  check_compatible([r.batch_stats for r in runs], "runs")
  return fps[0]


def initialisation_of(run: TrainedModel) -> tuple:
  """What a run started from: ``('init_from', path, which)`` or ``('seed', seed)``."""
  t = run.config.train
  if t.init_from:
    return ("init_from", os.path.abspath(t.init_from), t.init_which)
  return ("seed", int(run.config.seed))


def warn_if_different_initialisation(runs: Sequence[TrainedModel]) -> bool:
  """Warns (:class:`InitialisationWarning`) when the runs did not start from one initialisation.

  Soups work when the ingredients are fine-tuned from one starting point
  (Wortsman et al. 2022); runs trained from different random seeds usually
  sit in different basins and their average is poor. Read from each run's
  ``config.json`` (``train.init_from`` / ``train.init_which``, else
  ``seed``).

  Returns:
    True when a warning was issued.
  """
  inits = [initialisation_of(r) for r in runs]
  if len(set(inits)) > 1:
    listing = "; ".join(f"{r.workdir}: {i}" for r, i in zip(runs, inits))
    warnings.warn(f"the runs do not share an initialisation ({listing}); weight averages of "
                  f"independently initialised runs are usually poor -- fine-tune the "
                  f"ingredients from one run (config.train.init_from)", InitialisationWarning,
                  stacklevel=2)
    return True
  return False


def load_runs(workdirs: Sequence[str], which: str = "best", mesh=None) -> list[TrainedModel]:
  """Restores each run's ``which`` checkpoint (EMA weights if it kept them, as evaluated).

  Raises:
    ConfigError: no workdirs. CheckpointError: an unreadable run.
  """
  if not workdirs:
    raise ConfigError("no runs given; pass the --workdir of python -m jaxrobust.train runs")
  return [load_trained(w, which, mesh=mesh) for w in workdirs]


class Validator:
  """Validation accuracy of weights of one architecture (the runs' held-out split).

  Uses the first run's data config (``config.data``: the validation split is
  held out from train, so selection never sees the test set) and its
  ``config.eval.val_attack`` (threat model from ``config.eps`` / ``norm``),
  evaluated in eval-mode BatchNorm (:mod:`jaxrobust.accuracy`).
  """

  def __init__(self, run: TrainedModel, mesh=None, batch_size: int = 0, seed: int = 1):
    self.config = resolve_config(run.config)
    self.mesh = mesh or parallel.make_mesh(self.config.num_devices or None)
    self.batch_size = batch_size or self.config.eval.batch_size
    self.splits = build_splits(self.config, with_test=False)
    self.seed = seed
    self._step = make_eval_step(run.model_fns, attacks_from_config(
        {"clean": None, "robust": dict(self.config.eval.val_attack)}), self.mesh)

  def __call__(self, params, batch_stats) -> dict[str, float]:
    """``{'clean', 'robust'}`` validation accuracy in [0, 1]."""
    r = evaluate_accuracy(self._step, params, batch_stats, self.splits.val, self.batch_size,
                          self.mesh, jax.random.PRNGKey(self.config.seed + self.seed))
    return {"clean": r["clean"], "robust": r["robust"]}


def tree_of(run: TrainedModel) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` of a run: merged together, so statistics are averaged too."""
  return {"params": run.params, "batch_stats": run.batch_stats}
