"""The train state: one pytree, everything a resumed run needs."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
  """Pure-pytree training state.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: ``nnx.State`` of ``nnx.Param`` leaves.
    batch_stats: ``nnx.State`` of BatchNorm running averages.
    opt_state: optax state.
    ema_params: EMA of ``params`` (same structure) or None.
    rng: uint32 ``[2]`` base PRNG key; step ``t`` uses ``fold_in(rng, t)``.
    frozen: read-only inputs of the method (e.g. a distillation teacher's
      weights) passed into the jitted step as arguments, never updated and
      not written to checkpoints; None when unused.
    swa: :class:`jaxrobust.train.swa.SWAState` (the SWA running mean of
      ``params`` and its count) when ``config.train.swa_start > 0``, else None
      (then not written to checkpoints, so runs without SWA keep their
      checkpoint layout).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array
  frozen: Any = None
  swa: Any = None


def split_model(model: nnx.Module):
  """``model -> (graphdef, params, batch_stats)``."""
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, params, batch_stats


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int,
                       ema: bool = False, frozen: Any = None, swa: bool = False):
  """Returns ``(graphdef, TrainState)`` for a freshly initialised ``model``.

  ``ema`` keeps an EMA of the parameters, ``swa`` an (empty) SWA average.
  """
  from jaxrobust.train.swa import swa_init  # pylint: disable=g-import-not-at-top
  graphdef, params, batch_stats = split_model(model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     opt_state=tx.init(params),
                     ema_params=jax.tree.map(jnp.copy, params) if ema else None,
                     rng=jax.random.PRNGKey(seed), frozen=frozen,
                     swa=swa_init(params) if swa else None)
  return graphdef, state


def ema_decay_at(decay: float, step):
  """TF-style warm-up: ``min(decay, (1 + t) / (10 + t))`` (DeepMind ``ema_update``).

  ``decay`` is ``config.train.ema_decay`` as given, per optimiser step. The
  DeepMind recipe's 0.995 is for batch 1024; at batch ``B`` the same
  averaging horizon in examples is ``decay ** (B / 1024)`` (e.g. 0.995 ->
  0.99937 at B = 128), see :func:`ema_decay_for_batch_size`. The library does
  not rescale it for you: set the rescaled value in the config. The EMA
  weights are evaluated with the raw model's BatchNorm running averages;
  ``python -m jaxrobust.weights recalibrate`` recomputes them for the EMA.
  """
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_decay_for_batch_size(decay: float, batch_size: int, reference_batch_size: int = 1024
                             ) -> float:
  """The per-step EMA decay at ``batch_size`` equivalent to ``decay`` at the reference batch.

  ``decay ** (batch_size / reference_batch_size)``: both average over the
  same number of training examples (DeepMind's adversarial-robustness recipe
  uses 0.995 at batch 1024). Returns a Python float in (0, 1).

  Raises:
    ValueError: ``decay`` outside (0, 1) or non-positive batch sizes.
  """
  if not 0 < decay < 1 or batch_size <= 0 or reference_batch_size <= 0:
    raise ValueError(f"need 0 < decay < 1 and positive batch sizes; got {decay}, {batch_size}, "
                     f"{reference_batch_size}")
  return float(decay ** (batch_size / reference_batch_size))
