"""Accuracy of a model under named attacks over a dataset, aggregated as (sum, count).

Shared by the trainer's validation (checkpoint selection), RiFT and the
evaluation CLI. The model is a functional model such as
:class:`jaxrobust.models.ModelFns` (anything with ``logits_fn(params,
batch_stats, bn=...)``); this module sits below the methods and the trainer
and imports neither.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxrobust.attacks import attack_from_config, call_logits, model_key
from jaxrobust.data import ArrayDataset, eval_batches, to_float
from jaxrobust.errors import DataError
from jaxrobust.parallel import check_batch_size, data_sharding, global_batch, replicated


def attacks_from_config(evals: Mapping[str, Mapping | None]) -> dict[str, Callable | None]:
  """``{name: attack config or None}`` -> ``{name: attack fn or None}`` (None = clean).

  Each config is looked up in the attack registry
  (:func:`jaxrobust.attacks.attack_from_config`), so a registered user attack
  works like a built-in one.

  Raises:
    ConfigError: unknown attack name or setting, or an invalid value.
  """
  return {name: (None if cfg is None else attack_from_config(cfg))
          for name, cfg in evals.items()}


def make_eval_step(model: Any, attacks: Mapping[str, Callable | None], mesh=None
                   ) -> Callable:
  """Builds a jitted ``eval_step(params, batch_stats, batch, rng) -> sums``.

  Args:
    model: the functional model.
    attacks: ``{name: attack}``; ``None`` means clean accuracy. Attacks run on
      the eval view (BatchNorm running averages).
    mesh: when given, the batch is sharded over ``data`` and the result
      replicated.

  A stochastic model (:meth:`ModelFns.logits_fn` returns the keyed form) gets
  a fresh key in every forward pass: the attacks' and the final prediction's.

  Returns:
    A function whose output is ``{name: float32 number of correct examples,
    'count': number of real (unpadded) examples}`` for one padded batch
    (``batch['mask']`` marks real rows).
  """

  def eval_step(params, batch_stats, batch, rng):
    x = to_float(batch["image"])
    y = batch["label"].astype(jnp.int32)
    mask = batch["mask"].astype(jnp.float32)
    logits_fn = model.logits_fn(params, batch_stats, bn="eval")
    out = {"count": jnp.sum(mask)}
    for i, (name, attack) in enumerate(sorted(attacks.items())):
      x_eval = x if attack is None else attack(logits_fn, jax.random.fold_in(rng, i), x, y)
      logits = call_logits(logits_fn, x_eval, model_key(rng, i))
      correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      out[name] = jnp.sum(correct * mask)
    return out

  if mesh is None:
    return jax.jit(eval_step)
  rep, dat = replicated(mesh), data_sharding(mesh)
  return jax.jit(eval_step, in_shardings=(rep, rep, dat, rep), out_shardings=rep)


def evaluate_accuracy(eval_step: Callable, params, batch_stats, dataset: ArrayDataset,
                      batch_size: int, mesh, rng: jax.Array, desc: str | None = None
                      ) -> dict[str, float]:
  """Runs ``eval_step`` (from :func:`make_eval_step`) over every example.

  Padded rows are masked, so the result is exact for any dataset size.

  Returns:
    ``{name: accuracy in [0, 1]}`` plus ``'count'``, the number of examples.
  """
  check_batch_size(batch_size, mesh, "eval batch size")
  totals = None
  batches = eval_batches(dataset, batch_size, jax.process_index(), jax.process_count())
  n_batches = -(-len(dataset) // batch_size)
  for i, batch in enumerate(tqdm.tqdm(batches, total=n_batches, desc=desc, leave=False,
                                      disable=desc is None or jax.process_index() != 0)):
    out = eval_step(params, batch_stats, global_batch(batch, mesh), jax.random.fold_in(rng, i))
    totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
  totals = jax.device_get(totals)
  count = float(totals.pop("count"))
  result = {k: float(v) / count for k, v in totals.items()}
  result["count"] = count
  return result


def evaluate_model(model_fns, params, batch_stats, dataset: ArrayDataset,
                   evals: Mapping[str, Mapping | None], batch_size: int, mesh, seed: int = 0,
                   desc: str | None = None) -> dict[str, float]:
  """Clean/robust accuracy of one model for a dict of attack configs.

  Args:
    model_fns: the functional model (:class:`jaxrobust.models.ModelFns`).
    params, batch_stats: its weights and BatchNorm running averages.
    dataset: the examples (uint8 or float images, int labels).
    evals: ``{name: attack config or None (clean)}``; configs name any
      registered attack (:func:`jaxrobust.attacks.attack_from_config`).
    batch_size: eval batch (divisible by the mesh size).
    mesh: a ``('data',)`` mesh or None.
    seed: seed of the attacks' random starts (and a stochastic model's keys).
    desc: progress-bar label (None: no bar).

  Returns:
    ``{name: accuracy in [0, 1]}`` plus ``'count'``.

  Raises:
    ConfigError: an unknown attack or setting, or a bad batch size.
  """
  step = make_eval_step(model_fns, attacks_from_config(evals), mesh)
  return evaluate_accuracy(step, params, batch_stats, dataset, batch_size, mesh,
                           jax.random.PRNGKey(seed), desc)


def exact_subset(dataset: ArrayDataset, n: int) -> ArrayDataset:
  """The first ``n`` examples, refusing lossy (JPEG-derived) ones.

  Robust accuracy meant for comparison with published numbers is measured on
  exact pixels only (``test[:1000]`` of the bundled CIFAR-10).
  """
  sub = dataset.take(slice(0, n))
  lossy = int(np.sum(~sub.exact))
  if lossy:
    raise DataError(f"{lossy} of the first {n} {dataset.name} test images are JPEG-derived; "
                    f"robust accuracy is reported on exact images only: use n <= "
                    f"{int(np.argmin(dataset.exact)) or n}")
  return sub
