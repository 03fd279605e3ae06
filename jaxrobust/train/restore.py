"""Load a model trained by ``jaxrobust.train`` from its workdir."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

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
