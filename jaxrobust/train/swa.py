"""Stochastic Weight Averaging (Izmailov et al., UAI 2018): schedule and running average.

Official code: ``timgaripov/swa:train.py`` (``schedule``, the averaging loop)
and ``utils.py`` (``moving_average``, ``bn_update``).

* Learning rate, set once per epoch from the 0-based epoch index ``e``:
  ``t = e / swa_start``; ``lr_init`` while ``t <= 0.5``, then linear down to
  ``swa_lr`` at ``t = 0.9``, then constant ``swa_lr`` (:func:`swa_learning_rate`).
* Average: after epoch ``e`` (0-based) with ``e + 1 >= swa_start`` and
  ``(e + 1 - swa_start) % swa_c_epochs == 0``, ``swa <- swa * (1 - 1/(n+1)) +
  theta / (n+1)`` and ``n <- n + 1`` -- the equal-weight mean of the collected
  weights (:func:`swa_update`, :func:`collects_after_epoch`). Only parameters
  are averaged; the BatchNorm statistics of the average are then recomputed
  in one pass over the training data
  (:func:`jaxrobust.weights.recompute_batch_stats`; forgetting it is the
  most common SWA failure).

:class:`SWAState` (the average and its count ``n``) is a pytree: keep it in
the saved training state and the count resumes with the checkpoint, exactly.
In adversarial training Chen et al. (ICLR 2021) use PGD-AT 200 epochs with LR
decays at 50/150, ``swa_start`` 55 and BatchNorm recomputed on clean images.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxrobust.errors import ConfigError


def swa_learning_rate(epoch: int, lr_init: float, swa_lr: float, swa_start: float) -> float:
  """The official SWA learning rate of 0-based ``epoch`` (``timgaripov/swa:train.py`` schedule).

  ``t = epoch / swa_start``; factor 1 for ``t <= 0.5``, ``1 - (1 - r)(t - 0.5)/0.4``
  for ``t <= 0.9``, else ``r``, with ``r = swa_lr / lr_init``; returns
  ``lr_init * factor``. (Without SWA the official script uses ``swa_start =
  epochs`` and ``r = 0.01``.)

  Raises:
    ConfigError: non-positive ``lr_init`` or ``swa_start``, negative ``swa_lr``.
  """
  if lr_init <= 0 or swa_start <= 0 or swa_lr < 0:
    raise ConfigError(f"SWA schedule needs lr_init > 0, swa_start > 0, swa_lr >= 0; got "
                      f"{lr_init}, {swa_start}, {swa_lr}")
  t = epoch / swa_start
  ratio = swa_lr / lr_init
  if t <= 0.5:
    factor = 1.0
  elif t <= 0.9:
    factor = 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
  else:
    factor = ratio
  return lr_init * factor


def swa_schedule(lr_init: float, swa_lr: float, swa_start: float, steps_per_epoch: int):
  """:func:`swa_learning_rate` as an optax schedule of the optimiser step.

  Step ``s`` lies in epoch ``s // steps_per_epoch`` and gets that epoch's
  rate (the official code sets the rate once per epoch).

  Returns:
    ``step (int array) -> float32 learning rate``, jit-safe.
  """
  swa_learning_rate(0, lr_init, swa_lr, swa_start)  # validates.
  if steps_per_epoch < 1:
    raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
  ratio = swa_lr / lr_init

  def schedule(step):
    epoch = jnp.floor_divide(jnp.asarray(step, jnp.int32), steps_per_epoch)
    t = epoch.astype(jnp.float32) / swa_start
    linear = lr_init * (1.0 - (1.0 - ratio) * (t - 0.5) / 0.4)
    return jnp.where(t <= 0.5, jnp.float32(lr_init),
                     jnp.where(t <= 0.9, linear, jnp.float32(swa_lr))).astype(jnp.float32)

  return schedule


def collects_after_epoch(epoch: int, swa_start: int, swa_c_epochs: int = 1) -> bool:
  """Whether the weights after 0-based ``epoch`` enter the average (official rule)."""
  if swa_c_epochs < 1:
    raise ConfigError(f"swa_c_epochs must be >= 1, got {swa_c_epochs}")
  return epoch + 1 >= swa_start and (epoch + 1 - swa_start) % swa_c_epochs == 0


@flax.struct.dataclass
class SWAState:
  """The running average and how many weight sets it holds.

  Attributes:
    params: the equal-weight mean of the collected parameters (same structure
      as the model's parameters; before the first collection a copy of them,
      with weight 0).
    count: int32 scalar ``n``, the number of collected weight sets.
  """
  params: Any
  count: jax.Array


def swa_init(params) -> SWAState:
  """An empty average (``count = 0``) shaped like ``params``."""
  return SWAState(params=jax.tree.map(jnp.copy, params), count=jnp.zeros((), jnp.int32))


def swa_update(state: SWAState, params) -> SWAState:
  """Adds ``params`` to the equal-weight running mean (official ``moving_average``).

  ``avg <- avg * (1 - 1/(n+1)) + params / (n+1)``, ``n <- n + 1``. The first
  update (``n = 0``) returns ``params`` exactly; after ``k`` updates ``avg``
  is the arithmetic mean of the ``k`` collected sets (up to float rounding).
  """
  w = 1.0 / (state.count.astype(jnp.float32) + 1.0)
  avg = jax.tree.map(lambda a, p: a * (1.0 - w) + p * w, state.params, params)
  return SWAState(params=avg, count=state.count + 1)
