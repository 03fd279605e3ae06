"""How attacks call the model: one convention for deterministic and stochastic models.

A deterministic model is a plain ``logits_fn(x) -> logits``. A model with
random parts active at evaluation time (input noise, dropout left on, an
EOT-randomised defence) is a ``logits_fn(x, key) -> logits`` wrapped in
:class:`StochasticLogitsFn` (:func:`stochastic`); it must get a FRESH PRNG key
in every forward pass, attack steps included, or its randomness is silently
frozen inside the attack.

Every attack calls the model through :func:`call_logits` with a key from
:func:`model_key`: ``model_key(rng, *tags)`` derives a key from the attack's
``rng`` on a stream of its own (it never equals a key the attack uses for its
random starts), and the attack passes different ``tags`` (pass kind, restart,
iteration, ...) to each forward pass. For a deterministic model the key is
ignored, so the numerics are exactly those of ``logits_fn(x)``.
"""
from __future__ import annotations

from typing import Callable

import jax

from jaxrobust.types import (AnyLogitsFn, Array, KeyedLogitsFn, PRNGKey,  # noqa: F401
                             StochasticLogitsFn, is_stochastic, stochastic)

# fold_in datum of the model-key stream ('mdl'): keeps model keys apart from the
# keys an attack derives from its rng for random starts and restarts.
_MODEL_STREAM = 0x6D646C


def model_key(rng: PRNGKey, *tags) -> PRNGKey:
  """A fresh model key for one forward pass: ``rng`` folded with ``tags`` on the model stream.

  Args:
    rng: the attack's PRNG key (or any key).
    *tags: ints (Python or traced int32, e.g. a loop index) naming the
      forward pass; different tag tuples give independent keys.

  Returns:
    A PRNG key. For a deterministic model it is ignored (and dead code under jit).
  """
  key = jax.random.fold_in(rng, _MODEL_STREAM)
  for t in tags:
    key = jax.random.fold_in(key, t)
  return key


def call_logits(logits_fn: AnyLogitsFn, x: Array, key: PRNGKey | None) -> Array:
  """One forward pass: ``logits_fn(x, key)`` for a stochastic model, ``logits_fn(x)`` otherwise.

  Args:
    logits_fn: a plain ``x -> logits`` or a :class:`StochasticLogitsFn`.
    x: float32 ``[B, H, W, C]`` in [0, 1].
    key: a fresh PRNG key for this pass (:func:`model_key`); ignored for a
      deterministic model.

  Returns:
    ``logits``, float32 ``[B, K]``.

  Raises:
    ValueError: a stochastic model called without a key.
  """
  if isinstance(logits_fn, StochasticLogitsFn):
    if key is None:
      raise ValueError("a stochastic logits_fn needs a fresh PRNG key in every forward pass")
    return logits_fn(x, key)
  return logits_fn(x)


def bind_key(logits_fn: AnyLogitsFn, key: PRNGKey) -> Callable[[Array], Array]:
  """``x -> call_logits(logits_fn, x, key)``: one forward pass with ``key`` bound.

  For code that needs a one-argument function for a single pass (e.g. a
  gradient of one pass); each use must get its own ``key``.
  """
  if not isinstance(logits_fn, StochasticLogitsFn):
    return logits_fn
  return lambda x: logits_fn(x, key)
