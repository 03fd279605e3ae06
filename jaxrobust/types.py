"""Type aliases shared across jaxrobust.

The model an attack sees is a *logits function* in one of two forms:

* :data:`LogitsFn`, ``logits_fn(x) -> logits``: a deterministic model;
* :data:`KeyedLogitsFn`, ``logits_fn(x, key) -> logits``: a model with random
  parts active at evaluation time (input noise, dropout kept on, an
  EOT-randomised defence), wrapped in
  :class:`jaxrobust.attacks.StochasticLogitsFn` so that attacks know to pass a
  fresh PRNG key to every forward pass.

``x`` is float32 ``[B, H, W, C]`` in [0, 1]; ``logits`` float32 ``[B, K]``.
:data:`AnyLogitsFn` is what attacks accept.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
# logits_fn(x) -> logits: x float32 [B, H, W, C] in [0, 1]; logits float32 [B, K].
LogitsFn = Callable[[Array], Array]
# logits_fn(x, key) -> logits: a stochastic model; key is a fresh PRNG key per call.
KeyedLogitsFn = Callable[[Array, PRNGKey], Array]
# Either form (a keyed one wrapped in jaxrobust.attacks.StochasticLogitsFn).
AnyLogitsFn = Union[LogitsFn, KeyedLogitsFn]
# attack(logits_fn, rng, x, y, **settings) -> x_adv (float32 like x, in [0, 1]).
AttackFn = Callable[..., Array]
