"""Type aliases shared across jaxrobust.

The model an attack sees is a *logits function* in one of two forms:

* :data:`LogitsFn`, ``logits_fn(x) -> logits``: a deterministic model;
* :data:`KeyedLogitsFn`, ``logits_fn(x, key) -> logits``: a model with random
  parts active at evaluation time (input noise, dropout kept on, an
  EOT-randomised defence), wrapped in :class:`StochasticLogitsFn`
  (:func:`stochastic`) so that attacks know to pass a fresh PRNG key to every
  forward pass (:func:`jaxrobust.attacks.call_logits`).

``x`` is float32 ``[B, H, W, C]`` in [0, 1]; ``logits`` float32 ``[B, K]``.
:data:`AnyLogitsFn` is what attacks accept.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
# logits_fn(x) -> logits: x float32 [B, H, W, C] in [0, 1]; logits float32 [B, K].
LogitsFn = Callable[[Array], Array]
# logits_fn(x, key) -> logits: a stochastic model; key is a fresh PRNG key per call.
KeyedLogitsFn = Callable[[Array, PRNGKey], Array]
# Either form (a keyed one wrapped in StochasticLogitsFn).
AnyLogitsFn = Union[LogitsFn, KeyedLogitsFn]
# attack(logits_fn, rng, x, y, **settings) -> x_adv (float32 like x, in [0, 1]).
AttackFn = Callable[..., Array]


@dataclasses.dataclass(frozen=True)
class StochasticLogitsFn:
  """A stochastic model ``fn(x, key) -> logits``, marked as such for the attacks.

  Attributes:
    fn: ``fn(x, key)``: ``x`` float32 ``[B, H, W, C]`` in [0, 1], ``key`` a
      PRNG key (fresh per call), returns float32 logits ``[B, K]``.
  """
  fn: KeyedLogitsFn

  def __call__(self, x: Array, key: PRNGKey) -> Array:
    return self.fn(x, key)


def stochastic(fn: KeyedLogitsFn) -> StochasticLogitsFn:
  """Marks ``fn(x, key) -> logits`` as a stochastic model (idempotent).

  Attacks then call it with a fresh key per forward pass
  (:func:`jaxrobust.attacks.call_logits`).
  """
  return fn if isinstance(fn, StochasticLogitsFn) else StochasticLogitsFn(fn)


def is_stochastic(logits_fn: AnyLogitsFn) -> bool:
  """Whether ``logits_fn`` was declared stochastic (:func:`stochastic`)."""
  return isinstance(logits_fn, StochasticLogitsFn)
