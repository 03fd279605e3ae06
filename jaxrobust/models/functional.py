"""A Flax NNX model as pure functions of its weights: what attacks, methods and the trainer call.

:class:`ModelFns` holds a model's ``graphdef`` and evaluates it functionally
(``nnx.merge`` inside the traced function), so parameters and BatchNorm
statistics are explicit pytrees that ``jax.jit``/``jax.grad`` and sharding see.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

from jaxrobust.types import stochastic


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """Pure wrappers around an NNX ``graphdef``.

  ``apply(params, batch_stats, x, train, key)`` returns ``(logits,
  new_batch_stats)``; in eval mode (``train=False``) ``new_batch_stats`` is the
  input unchanged.
  """
  graphdef: Any

  def apply(self, params, batch_stats, x, *, train: bool, key=None):
    """One forward pass: ``(logits, new_batch_stats)``.

    Args:
      params, batch_stats: ``nnx.Param`` / ``nnx.BatchStat`` states of the model.
      x: float32 ``[B, H, W, C]`` in [0, 1].
      train: batch statistics (and updated running averages) if True, else the
        running averages (``new_batch_stats`` is ``batch_stats`` unchanged).
      key: PRNG key for the model's random parts (dropout, input noise); None
        turns them off.

    Returns:
      float32 logits ``[B, K]`` and the running averages after the pass.
    """
    model = nnx.merge(self.graphdef, params, batch_stats, copy=True)
    logits = model(x, train=train, key=key)
    if not train:
      return logits, batch_stats
    return logits, nnx.state(model, nnx.BatchStat)

  def logits_fn(self, params, batch_stats, *, bn: str = "eval") -> Callable:
    """The model as attacks call it (:mod:`jaxrobust.attacks`).

    Deterministic model: ``x -> logits``. Stochastic model (one whose NNX
    module has ``stochastic = True``): ``(x, key) -> logits`` wrapped in
    :class:`jaxrobust.attacks.StochasticLogitsFn`, so that every attack passes
    a fresh key to each forward pass (:func:`jaxrobust.attacks.call_logits`).

    ``bn='eval'`` uses running averages; ``bn='train'`` normalises with the
    attacked batch's own statistics. Neither updates the running averages.
    ``x`` float32 ``[B, H, W, C]`` in [0, 1]; logits float32 ``[B, K]``.

    Raises:
      ValueError: unknown ``bn``.
    """
    if bn not in ("eval", "train"):
      raise ValueError(f"unknown BatchNorm mode {bn!r}; use 'eval' or 'train'")
    train = bn == "train"
    model = nnx.merge(self.graphdef, params, batch_stats, copy=True)
    if getattr(model, "stochastic", False):
      return stochastic(lambda x, key: self.apply(params, batch_stats, x, train=train,
                                                  key=key)[0])
    return lambda x: self.apply(params, batch_stats, x, train=train)[0]

  def bn_momentum(self, params, batch_stats) -> float | None:
    """The running-average momentum ``m`` of the model's BatchNorm layers.

    ``new = m * old + (1 - m) * batch_statistic`` (0.9 for PyTorch's
    ``momentum=0.1``). None when the model has no BatchNorm.

    Raises:
      ValueError: the layers use different momenta.
    """
    model = nnx.merge(self.graphdef, params, batch_stats, copy=True)
    momenta = {float(m.momentum) for _, m in nnx.iter_graph(model)
               if isinstance(m, nnx.BatchNorm)}
    if len(momenta) > 1:
      raise ValueError(f"BatchNorm layers use different momenta {sorted(momenta)}; "
                       f"replaying running-average updates needs one")
    return momenta.pop() if momenta else None

  def features_fn(self, params, batch_stats, *, bn: str = "eval") -> Callable:
    """``(x, key=None) -> (logits, features)``: logits and penultimate features.

    ``x`` float32 ``[B, H, W, C]`` in [0, 1]; ``logits`` float32 ``[B, K]``;
    ``features`` float32 ``[B, D]``, the input of the model's final classifier
    layer (``model(x, return_features=True)``, see :mod:`jaxrobust.models`).
    ``bn`` as in :meth:`logits_fn`; the running averages are never updated.
    ``key`` feeds the model's random parts (dropout) when training.

    Raises:
      ValueError: an unknown ``bn``.
    """
    if bn not in ("eval", "train"):
      raise ValueError(f"unknown BatchNorm mode {bn!r}; use 'eval' or 'train'")
    train = bn == "train"

    def fn(x, key=None):
      model = nnx.merge(self.graphdef, params, batch_stats, copy=True)
      return model(x, train=train, key=key, return_features=True)

    return fn
