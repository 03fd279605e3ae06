"""What a training method is: an optional input perturbation and a loss.

A method is the only place that knows which BatchNorm view each branch uses.
The trainer calls, inside one jitted step::

    aux = method.perturb(model, params, batch_stats, x, y, rng, frozen=...)    # no grad
    loss, (batch_stats, metrics) = grad(method.loss)(
        params, batch_stats, model, x, y, aux, rng, frozen=...)                 # grad

``model`` is a :class:`ModelFns` that evaluates the NNX graph functionally;
``aux`` is whatever ``perturb`` returns (usually ``x_adv``); ``frozen`` is
``TrainState.frozen`` (read-only inputs such as a teacher's weights, or None).
``metrics`` are per-step sums (the trainer divides by the example count).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """Pure wrappers around an NNX ``graphdef``.

  ``apply(params, batch_stats, x, train, key)`` returns ``(logits,
  new_batch_stats)``; in eval mode (``train=False``) ``new_batch_stats`` is the
  input unchanged.
  """
  graphdef: Any

  def apply(self, params, batch_stats, x, *, train: bool, key=None):
    model = nnx.merge(self.graphdef, params, batch_stats, copy=True)
    logits = model(x, train=train, key=key)
    if not train:
      return logits, batch_stats
    return logits, nnx.state(model, nnx.BatchStat)

  def logits_fn(self, params, batch_stats, *, bn: str = "eval") -> Callable:
    """``x -> logits`` for attacks.

    ``bn='eval'`` uses running averages; ``bn='train'`` normalises with the
    attacked batch's own statistics. Neither updates the running averages.
    """
    if bn not in ("eval", "train"):
      raise ValueError(f"unknown BatchNorm mode {bn!r}; use 'eval' or 'train'")
    train = bn == "train"
    return lambda x: self.apply(params, batch_stats, x, train=train)[0]


def accuracy_sum(logits, y):
  """Number of correct predictions as float32."""
  return jnp.sum((jnp.argmax(logits, -1) == y).astype(jnp.float32))


def cross_entropy(logits, y):
  """Mean cross-entropy over the batch (``torch.nn.CrossEntropyLoss()``)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], -1))
