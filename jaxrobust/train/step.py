"""The jitted train step.

``train_step(state, batch) -> (state, metrics)`` is one pure function: the
method's perturbation (no gradient), the loss and its gradient, the optax
update and the EMA. Methods receive ``frozen=state.frozen`` and
``step=state.step`` (see :mod:`jaxrobust.methods.base`). The state is
donated; the batch is sharded on the ``data`` mesh axis and the state
replicated, so the same function runs on one device or many. Metrics are
per-step sums (divide by ``count``); nothing is transferred to the host
inside the step.
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from jaxrobust.data import to_float
from jaxrobust.models import ModelFns
from jaxrobust.parallel import data_sharding, replicated
from jaxrobust.train.state import TrainState, ema_decay_at


def make_train_step(model: ModelFns, method, tx: optax.GradientTransformation,
                    ema_decay: float = 0.0) -> Callable:
  """Builds the un-jitted train step (see :func:`jit_train_step`)."""

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    x = to_float(batch["image"])
    y = batch["label"].astype(jnp.int32)
    x_train = jax.lax.stop_gradient(
        method.perturb(model, state.params, state.batch_stats, x, y, rng, frozen=state.frozen,
                       step=state.step))
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)
    (loss, (batch_stats, metrics)), grads = grad_fn(
        state.params, state.batch_stats, model, x, y, x_train, rng, frozen=state.frozen,
        step=state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      d = ema_decay_at(ema_decay, state.step)
      ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
    metrics = dict(metrics)
    metrics["count"] = jnp.asarray(y.shape[0], jnp.float32)
    metrics["grad_norm"] = optax.tree.norm(grads) * y.shape[0]
    metrics["nonfinite"] = (~jnp.isfinite(loss)).astype(jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, ema_params=ema)
    return new_state, metrics

  return train_step


def jit_train_step(train_step: Callable, mesh) -> Callable:
  """``jax.jit`` with the state replicated and donated, the batch data-sharded."""
  rep, dat = replicated(mesh), data_sharding(mesh)
  return jax.jit(train_step, in_shardings=(rep, dat), out_shardings=(rep, rep),
                 donate_argnums=(0,))
