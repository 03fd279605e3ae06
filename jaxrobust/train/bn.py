"""BatchNorm recalibration: recompute running statistics for given weights.

Averaged or interpolated weights (SWA, soups, WiSE-FT) do not come with
matching BatchNorm statistics: the mean of the members' running averages is
not the statistic of the averaged network. The SWA recipe (Izmailov et al.
2018, ``timgaripov/swa:utils.py`` ``bn_update``; PyTorch
``torch.optim.swa_utils.update_bn``) resets the running averages and does one
pass over the training data in train mode with momentum ``b / (n + b)``
(PyTorch ``momentum=None``), which makes every running average the
cumulative, batch-size weighted mean of the per-batch statistics:

    mu = sum_k b_k mu_k / sum_k b_k,    var = sum_k b_k var_k / sum_k b_k,

with ``mu_k`` / ``var_k`` the statistics the layer computes on batch ``k`` in
train mode (here flax's biased batch variance, the same quantity the
model's own running averages accumulate; PyTorch accumulates the unbiased
one). In adversarial training the recomputation may use clean or adversarial
inputs; Chen et al. (ICLR 2021, ``VITA-Group/Alleviate-Robust-Overfitting``)
use clean training images.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrobust.data import to_float
from jaxrobust.errors import DataError
from jaxrobust.models import ModelFns


def as_float_images(images) -> jax.Array:
  """uint8 images (0..255, as the data iterators give them) -> float32 in [0, 1]; float passes."""
  x = jnp.asarray(images)
  return to_float(x) if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def batch_statistics_fns(model_fns: ModelFns, params, batch_stats) -> ModelFns:
  """The same model with every BatchNorm momentum set to 0.

  A train-mode pass of the result returns the batch's own statistics as the
  "running averages" (``0 * old + 1 * batch``), exactly.
  """
  model = nnx.merge(model_fns.graphdef, params, batch_stats, copy=True)
  for _, m in nnx.iter_graph(model):
    if isinstance(m, nnx.BatchNorm):
      m.momentum = 0.0
  return ModelFns(nnx.split(model, nnx.Param, nnx.BatchStat)[0])


def recompute_batch_stats(model_fns: ModelFns, params, batch_stats,
                          batches: Iterable[Mapping[str, Any]],
                          perturb: Callable | None = None, rng: jax.Array | None = None):
  """BatchNorm running averages recomputed for ``params`` in one pass over ``batches``.

  Each layer's result is the cumulative average above: the batch-size
  weighted mean over the batches of the statistics the layer computes in
  train mode (PyTorch ``update_bn`` / ``bn_update``). The previous
  ``batch_stats`` give only the structure; their values are not used.

  Args:
    model_fns: the functional model (:class:`jaxrobust.models.ModelFns`).
    params: the weights (e.g. an SWA average or a soup).
    batch_stats: the model's BatchNorm state (structure, dtypes).
    batches: one pass over training data: ``{'image': [B, H, W, C] uint8
      (0..255) or float32 in [0, 1], 'label': int [B]}``, no padded rows (e.g. one epoch
      of :class:`jaxrobust.data.TrainIterator`, augmented as in training).
    perturb: None for clean inputs (Chen et al.'s choice), else
      ``(logits_fn, key, x, y) -> x_adv``, an attack from
      :func:`jaxrobust.attacks.attack_from_config`; it attacks the train-mode
      view (batch statistics), which does not depend on the statistics being
      recomputed.
    rng: PRNG key of the attack's random start (needed with ``perturb``).

  Returns:
    A pytree like ``batch_stats`` (``batch_stats`` itself for a model without
    BatchNorm).

  Raises:
    DataError: no batches, or a batch with padded (masked-out) rows.
  """
  if not jax.tree.leaves(batch_stats):
    return batch_stats
  if perturb is not None and rng is None:
    raise DataError("recompute_batch_stats with perturb needs an rng key")
  fns = batch_statistics_fns(model_fns, params, batch_stats)

  @jax.jit
  def weighted(params, batch_stats, x, y, key):
    if perturb is not None:
      logits_fn = model_fns.logits_fn(params, batch_stats, bn="train")
      x = jax.lax.stop_gradient(perturb(logits_fn, key, x, y))
    _, stats = fns.apply(params, batch_stats, x, train=True)
    b = jnp.asarray(x.shape[0], jnp.float32)
    return jax.tree.map(lambda s: b * s.astype(jnp.float32), stats)

  total, n = None, 0
  for k, batch in enumerate(batches):
    if "mask" in batch and not np.all(np.asarray(batch["mask"])):
      raise DataError("recompute_batch_stats got a batch with padded rows; pass full batches "
                      "(e.g. jaxrobust.data.TrainIterator, which drops the last partial one)")
    x = as_float_images(batch["image"])
    y = jnp.asarray(batch["label"]).astype(jnp.int32)
    key = jax.random.fold_in(rng, k) if rng is not None else jax.random.PRNGKey(0)
    s = weighted(params, batch_stats, x, y, key)
    total = s if total is None else jax.tree.map(jnp.add, total, s)
    n += int(x.shape[0])
  if total is None:
    raise DataError("recompute_batch_stats got no batches; pass one pass over training data")
  return jax.tree.map(lambda t, old: (t / n).astype(old.dtype), total, batch_stats)
