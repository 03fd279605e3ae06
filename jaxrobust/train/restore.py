"""Trained-run workdirs: load a model trained by ``jaxrobust.train``, or write one.

:func:`write_workdir` writes weights (a merge, an SWA average) as a workdir that
:func:`load_trained`, ``python -m jaxrobust.evaluate``, RiFT and fine-tuning
read like any training run.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections

from jaxrobust import parallel
from jaxrobust.checkpoint import Checkpointer, DamagedCheckpointError
from jaxrobust.data import NUM_CLASSES
from jaxrobust.errors import CheckpointError, ConfigError
from jaxrobust.models import ModelFns
from jaxrobust.train.builders import build_model, image_shape_of, model_fingerprint
from jaxrobust.train.defaults import config_for_saved
from jaxrobust.train.optim import make_optimizer
from jaxrobust.train.state import create_train_state
from jaxrobust.utils.paths import check_compatible

_DICT_FIELDS = ("attack", "val_attack", "test_attack")


@dataclasses.dataclass
class TrainedModel:
  """A restored model: config, functional model, weights."""
  config: ml_collections.ConfigDict
  model_fns: ModelFns
  params: Any
  batch_stats: Any
  step: int
  which: str
  workdir: str
  uses_ema: bool

  def logits_fn(self, bn: str = "eval"):
    """The restored model as attacks call it (:meth:`jaxrobust.models.ModelFns.logits_fn`)."""
    return self.model_fns.logits_fn(self.params, self.batch_stats, bn=bn)


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and k not in _DICT_FIELDS:
      out.update(_flatten(v, key + "."))
    else:
      out[key] = tuple(v) if isinstance(v, list) else v
  return out


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved as ``<workdir>/config.json``."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"{path} not found: --workdir must be a directory written by "
                          f"python -m jaxrobust.train")
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise CheckpointError(f"{path} is not valid JSON ({e}); it is damaged: restore it from a "
                          f"backup (the training run wrote it from its --config)") from e
  if not isinstance(saved, dict):
    raise CheckpointError(f"{path} holds a {type(saved).__name__}, not a config dict; it is "
                          f"damaged: restore it from a backup")
  config, saved = config_for_saved(saved)
  try:
    config.update_from_flattened_dict(_flatten(saved))
  except (KeyError, AttributeError, TypeError) as e:
    raise CheckpointError(f"{path} does not match this version's config schema ({e})") from e
  return config


def parse_checkpoint_path(path: str) -> tuple[str, str, int]:
  """``<workdir>/checkpoints/{best,latest}/<step>`` -> (workdir, which, step)."""
  path = os.path.abspath(path.rstrip("/"))
  which, step = os.path.basename(os.path.dirname(path)), os.path.basename(path)
  if which not in ("best", "latest") or not step.isdigit():
    raise ConfigError(f"checkpoint path {path} is not <workdir>/checkpoints/{{best,latest}}/<step>")
  return os.path.dirname(os.path.dirname(os.path.dirname(path))), which, int(step)


def load_trained(workdir: str, which: str = "best", step: int | None = None, mesh=None,
                 use_ema: bool = True) -> TrainedModel:
  """Restores the ``which`` (``'best'``/``'latest'``) checkpoint of a training run.

  Its arrays are verified against the digests saved with them and for NaN/inf
  (see :mod:`jaxrobust.checkpoint`); a damaged checkpoint is refused, never
  replaced by another one.

  Raises:
    CheckpointError: missing config/checkpoint, mismatched files.
    DamagedCheckpointError: corrupt files, changed content or NaN/inf values.
  """
  config = load_config(workdir)
  mesh = mesh or parallel.make_mesh(config.num_devices or None)
  if config.data.name not in NUM_CLASSES:
    raise CheckpointError(f"unknown dataset {config.data.name!r} in {workdir}/config.json")
  image_shape = image_shape_of(config)
  model = build_model(config, image_shape)
  graphdef, state = create_train_state(model, make_optimizer(config.train, 1, 1), 0,
                                       ema=config.train.ema_decay > 0,
                                       swa=config.train.swa_start > 0)
  state = parallel.replicate(state, mesh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:  # never falls back to another checkpoint: the user asked for this one.
    restored = ckpt.restore(state, which, step,
                            expect_meta={"model": model_fingerprint(config, image_shape)})
  except DamagedCheckpointError as e:
    raise e.with_fix(
        f"refusing to use it. Use another checkpoint of the run (evaluation: --which "
        f"{'best' if which == 'latest' else 'latest'} or --checkpoint "
        f"{workdir}/checkpoints/<best|latest>/<step>; teachers/fine-tuning: "
        f"config.method.teacher_which / config.train.init_which), or delete it and rerun "
        f"python -m jaxrobust.train in {workdir} to resume from an older intact one") from e
  finally:
    ckpt.close()
  if restored is None:
    raise CheckpointError(f"no {which} checkpoint in {workdir}/checkpoints; train first or "
                          f"use --which latest")
  state, _ = restored
  ema = use_ema and state.ema_params is not None
  return TrainedModel(config, ModelFns(graphdef), state.ema_params if ema else state.params,
                      state.batch_stats, int(state.step), which, os.path.abspath(workdir), ema)


def write_workdir(out: str, source: TrainedModel, params, batch_stats, recipe: dict,
                  step: int | None = None) -> str:
  """Writes ``params`` / ``batch_stats`` as a trained-run workdir ``out`` (see module doc).

  The train state is a fresh one of ``source``'s config (optimiser state
  re-initialised, step ``step`` or ``source.step``) holding the merged
  weights; when the config keeps an EMA, the EMA weights are the merged
  weights too, so :func:`load_trained` returns them either way. The
  checkpoint is saved as both ``latest`` and ``best``.

  Returns:
    The absolute path of ``out``.

  Raises:
    ConfigError: weights of another architecture than ``source``'s model.
    CheckpointError: NaN/inf weights (nothing is written).
  """
  config = source.config
  image_shape = image_shape_of(config)
  model = build_model(config, image_shape)
  tx = make_optimizer(config.train, 1, 1)
  _, state = create_train_state(model, tx, config.seed, ema=config.train.ema_decay > 0,
                                swa=config.train.swa_start > 0)
  check_compatible([state.params, params], "models")
  check_compatible([state.batch_stats, batch_stats], "models")
  params = jax.tree.map(lambda a: jax.numpy.asarray(a).copy(), params)
  state = state.replace(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                        ema_params=None if state.ema_params is None else params,
                        step=jax.numpy.asarray(source.step if step is None else step,
                                               jax.numpy.int32))
  check_fresh(out)
  os.makedirs(out, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(out, "weights.json"), "w", encoding="utf-8") as f:
      json.dump(recipe, f, indent=2, default=str)
  ckpt = Checkpointer(os.path.join(out, "checkpoints"), keep=1)
  try:
    ckpt.save(int(state.step), state, {"model": model_fingerprint(config, image_shape),
                                       "weights_recipe": recipe.get("recipe", "")}, best=True)
  finally:
    ckpt.close()
  return os.path.abspath(out)


def check_fresh(out: str) -> None:
  """Refuses an output directory that already holds a run (never overwritten).

  Raises:
    ConfigError: ``out`` has ``checkpoints/`` or ``config.json``.
  """
  for name in ("checkpoints", "config.json"):
    if os.path.exists(os.path.join(out, name)):
      raise ConfigError(f"--out {out} already holds a run ({name}); choose a fresh directory")
