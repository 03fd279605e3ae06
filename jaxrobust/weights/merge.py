"""Pure weight-space merges: interpolation (WiSE-FT), model soups, Fisher-weighted averaging.

Every function takes and returns pytrees of arrays: ``nnx.State`` of
parameters, of BatchNorm running averages, or any tree of equal structure.
Merging two trees of different structure or leaf shapes raises
:class:`~jaxrobust.errors.ConfigError` (:func:`check_compatible`).

Sources:

* WiSE-FT (Wortsman et al., CVPR 2022, ``mlfoundations/wise-ft:src/wise_ft.py``):
  ``theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_1`` for a user list of
  ``alpha``; RiFT (Zhu et al., ICCV 2023, ``microsoft/robustlearn:RiFT/utils.py``)
  mixes the full ``state_dict`` the same way, BatchNorm buffers included.
* Model soups (Wortsman et al., ICML 2022, ``mlfoundations/model-soups:main.py``):
  the uniform soup is the plain mean of the ingredients; the greedy soup sorts
  them by held-out accuracy (best first) and adds one at a time, keeping it only
  when the held-out metric of the running mean strictly improves.
* Fisher-weighted averaging (Matena & Raffel, NeurIPS 2022, "Merging Models
  with Fisher-Weighted Averaging", Eq. 3; ``mmatena/model_merging``):
  ``theta* = sum_i lambda_i F_i theta_i / sum_i lambda_i F_i`` element-wise,
  with ``F_i`` the diagonal Fisher information of model ``i``
  (:func:`diagonal_fisher`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import ConfigError
from jaxrobust.utils.paths import check_compatible  # noqa: F401  (public here too)
from jaxrobust.train.bn import as_float_images


def interpolate(theta_0, theta_1, alpha: float):
  """WiSE-FT / RiFT interpolation ``(1 - alpha) * theta_0 + alpha * theta_1``, leaf by leaf.

  Computed as ``alpha * theta_1 + (1 - alpha) * theta_0`` in the leaves' dtype
  (float32), so ``alpha = 0`` returns ``theta_0`` and ``alpha = 1`` returns
  ``theta_1`` exactly (bit for bit, for finite leaves). Apply it to the
  parameters and to the BatchNorm running averages alike (the official RiFT
  code mixes the whole ``state_dict``); or recompute the statistics of the
  result with :func:`jaxrobust.weights.recompute_batch_stats`.

  Args:
    theta_0, theta_1: pytrees of equal structure and shapes (e.g. the
      adversarially trained and the fine-tuned model).
    alpha: mixing coefficient (any float; outside [0, 1] extrapolates).

  Raises:
    ConfigError: the two pytrees differ in structure or leaf shapes.
  """
  check_compatible([theta_0, theta_1])
  return jax.tree.map(lambda a, b: alpha * b + (1.0 - alpha) * a, theta_0, theta_1)


def parse_alphas(spec: str) -> list[float]:
  """``'0:1:0.1'`` (start:stop:step, stop included) or ``'0,0.5,1'`` -> sorted list of alphas.

  Grid points are ``round(start + k * step, 10)``, so ``0:1:0.1`` gives exactly
  0.0, 0.1, ..., 1.0 (11 values).

  Raises:
    ConfigError: unparsable text, a non-positive step or stop < start.
  """
  fix = "write start:stop:step (e.g. 0:1:0.1) or a comma list (e.g. 0,0.5,1)"
  try:
    parts = [float(s) for s in spec.split(":" if ":" in spec else ",") if s.strip()]
  except ValueError as e:
    raise ConfigError(f"alphas {spec!r} is not a list of numbers; {fix}") from e
  vals = parts
  if ":" in spec:
    if len(parts) != 3:
      raise ConfigError(f"alphas {spec!r} is not start:stop:step; {fix}")
    start, stop, step = parts
    if step <= 0 or stop < start:
      raise ConfigError(f"alphas {spec!r}: need step > 0 and stop >= start; {fix}")
    n = math.floor((stop - start) / step + 1e-9)
    vals = [round(start + k * step, 10) for k in range(n + 1)]
  if not vals:
    raise ConfigError(f"alphas {spec!r} is empty; {fix}")
  return sorted(set(vals))


def sweep(evaluate: Callable[[Any, Any], Mapping[str, float]], params_0, batch_stats_0,
          params_1, batch_stats_1, alphas: Iterable[float]) -> list[dict]:
  """Evaluates ``theta(alpha)`` over a grid: one record per alpha, in ascending order.

  Args:
    evaluate: ``(params, batch_stats) -> {metric: value}`` (e.g. validation
      ``clean`` and ``robust`` accuracy from :mod:`jaxrobust.accuracy`).
    params_0, batch_stats_0, params_1, batch_stats_1: the two endpoints; the
      statistics are interpolated like the parameters.
    alphas: grid (:func:`parse_alphas`).

  Returns:
    ``[{'alpha': a, **evaluate(theta(a))}]`` sorted by alpha.
  """
  records = []
  for a in sorted(alphas):
    p = interpolate(params_0, params_1, a)
    bs = interpolate(batch_stats_0, batch_stats_1, a)
    records.append({"alpha": float(a), **evaluate(p, bs)})
  return records


def select_alpha(records: Sequence[Mapping[str, float]], robust_tolerance: float,
                 metric: str = "clean", robust_key: str = "robust") -> dict:
  """The ``alpha`` with the best ``metric`` whose robust accuracy stays within tolerance.

  The README of the official RiFT code asks for the "max ID generalization
  gain without losing much robustness"; here that is made a rule: among the
  grid points whose ``robust_key`` accuracy is at least that of ``alpha = 0``
  minus ``robust_tolerance`` (absolute, fraction of 1), the one with the
  highest ``metric``; ties go to the smaller ``alpha`` (closer to the robust
  model). Pass another rule to the CLIs with ``--select``
  (:data:`SELECTION_RULES`).

  Args:
    records: one mapping per grid point with ``alpha``, ``metric`` and
      ``robust_key``; must contain ``alpha = 0``.
    robust_tolerance: allowed drop of robust accuracy, e.g. 0.01.

  Returns:
    The selected record.

  Raises:
    ConfigError: no ``alpha = 0`` record or a negative tolerance.
  """
  if robust_tolerance < 0:
    raise ConfigError(f"robust_tolerance must be >= 0, got {robust_tolerance}")
  base = [r for r in records if abs(r["alpha"]) < 1e-12]
  if not base:
    raise ConfigError("the interpolation grid must contain alpha = 0 (the robust model)")
  floor = base[0][robust_key] - robust_tolerance
  ok = [r for r in records if r[robust_key] >= floor - 1e-12]
  return max(sorted(ok, key=lambda r: r["alpha"]), key=lambda r: r[metric])


def select_max(records: Sequence[Mapping[str, float]], metric: str) -> dict:
  """The record with the highest ``metric``; ties go to the smaller ``alpha``."""
  if not records:
    raise ConfigError("no records to select from")
  return max(sorted(records, key=lambda r: r["alpha"]), key=lambda r: r[metric])


# Selection rules over sweep records: name -> (records, robust_tolerance) -> record.
SELECTION_RULES: dict[str, Callable[[Sequence[Mapping[str, float]], float], dict]] = {
    "clean_within_robust_tolerance": lambda r, tol: select_alpha(r, tol, "clean"),
    "val_robust": lambda r, tol: select_max(r, "robust"),
    "val_clean": lambda r, tol: select_max(r, "clean"),
}


def uniform_soup(trees: Sequence[Any]):
  """The uniform soup: the arithmetic mean of the ingredients, leaf by leaf.

  ``sum_i theta_i / n`` (float32 sum in ingredient order, then one division).

  Raises:
    ConfigError: no ingredients, or ingredients of different architectures.
  """
  check_compatible(trees, "soup ingredients")
  n = len(trees)
  return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]) / n, *trees)


def greedy_soup(ingredients: Sequence[Any], metric: Callable[[Any], float],
                scores: Sequence[float] | None = None) -> tuple[Any, list[int], list[dict]]:
  """The greedy soup (Wortsman et al. 2022, Recipe 1).

  Ingredients are sorted by their own held-out ``metric`` (best first; ties
  keep the given order). The soup starts as the best one; each next
  ingredient is tried as the uniform mean of the soup's members plus it, and
  kept only when ``metric`` of that mean is STRICTLY greater than the soup's
  current value.

  Args:
    ingredients: pytrees of one architecture (e.g. ``{'params', 'batch_stats'}``
      dicts, so that BatchNorm statistics are averaged with the weights).
    metric: ``tree -> float``, higher is better (validation robust accuracy by
      default in the CLI).
    scores: the ingredients' own metric when already known (skips evaluating
      them again).

  Returns:
    ``(soup, members, log)``: the soup tree, the indices (into
    ``ingredients``) of its members in the order added, and one record per
    step ``{'ingredient', 'metric', 'kept'}`` (the first is the best
    ingredient alone).

  Raises:
    ConfigError: no ingredients, or ingredients of different architectures.
  """
  check_compatible(ingredients, "soup ingredients")
  if scores is None:
    scores = [float(metric(t)) for t in ingredients]
  elif len(scores) != len(ingredients):
    raise ConfigError(f"{len(scores)} scores for {len(ingredients)} ingredients")
  order = sorted(range(len(ingredients)), key=lambda i: -scores[i])
  members = [order[0]]
  soup, best = ingredients[order[0]], float(scores[order[0]])
  log = [{"ingredient": order[0], "metric": best, "kept": True}]
  for i in order[1:]:
    candidate = uniform_soup([ingredients[j] for j in members + [i]])
    value = float(metric(candidate))
    kept = value > best
    log.append({"ingredient": i, "metric": value, "kept": kept})
    if kept:
      members.append(i)
      soup, best = candidate, value
  return soup, members, log


def diagonal_fisher(model_fns, params, batch_stats, batches: Iterable[Mapping[str, Any]],
                    labels: str = "expected"):
  """Diagonal Fisher information of the classifier at ``params``, averaged over examples.

  ``F = (1/N) sum_n E_y [ (d log p(y | x_n) / d theta)^2 ]`` element-wise
  (Matena & Raffel 2022, Eq. 2). ``labels='expected'`` takes the exact
  expectation over the model's own prediction ``y ~ p(. | x_n)`` (one
  per-example gradient per class, weighted by ``p(y | x_n)``; the official
  ``model_merging/fisher.py`` with ``expectation_wrt_logits``);
  ``labels='empirical'`` uses the true label only (the "empirical Fisher").
  Per-example gradients use the eval view (BatchNorm running averages), so
  they do not depend on the batch.

  Args:
    model_fns: :class:`jaxrobust.models.ModelFns`.
    params, batch_stats: the model's weights.
    batches: ``{'image': [B, H, W, C] uint8 (0..255) or float32 in [0, 1], 'label':
      int [B]}``; a ``'mask'`` (1 = real row) is honoured.
    labels: ``'expected'`` or ``'empirical'``.

  Returns:
    A pytree like ``params`` of float32 non-negative values.

  Raises:
    ConfigError: unknown ``labels`` or no examples.
  """
  if labels not in ("expected", "empirical"):
    raise ConfigError(f"labels={labels!r}; use 'expected' or 'empirical'")

  def log_probs(p, x):
    logits, _ = model_fns.apply(p, batch_stats, x[None], train=False)
    return jax.nn.log_softmax(logits[0].astype(jnp.float32))

  def example(p, x, y):
    lp = log_probs(p, x)
    if labels == "empirical":
      g = jax.grad(lambda q: log_probs(q, x)[y])(p)
      return jax.tree.map(jnp.square, g)
    probs = jax.lax.stop_gradient(jnp.exp(lp))
    grads = jax.vmap(lambda k: jax.grad(lambda q: log_probs(q, x)[k])(p))(
        jnp.arange(lp.shape[-1]))
    return jax.tree.map(lambda g: jnp.tensordot(probs, jnp.square(g), axes=1), grads)

  @jax.jit
  def batch_sum(p, x, y, mask):
    per = jax.vmap(example, in_axes=(None, 0, 0))(p, x, y)
    return jax.tree.map(lambda f: jnp.tensordot(mask, f, axes=1), per)

  total, count = None, 0.0
  for batch in batches:
    x = as_float_images(batch["image"])
    y = jnp.asarray(batch["label"]).astype(jnp.int32)
    mask = jnp.asarray(batch.get("mask", np.ones(y.shape[0])), jnp.float32)
    s = batch_sum(params, x, y, mask)
    total = s if total is None else jax.tree.map(jnp.add, total, s)
    count += float(jnp.sum(mask))
  if total is None or count == 0:
    raise ConfigError("diagonal_fisher needs at least one example")
  return jax.tree.map(lambda f: f / count, total)


def fisher_merge(trees: Sequence[Any], fishers: Sequence[Any],
                 weights: Sequence[float] | None = None, fisher_floor: float = 1e-6,
                 favor_target: bool = True, normalize: bool = True):
  """Fisher-weighted average ``sum_i w_i F_i theta_i / sum_i w_i F_i`` (element-wise).

  Matena & Raffel 2022, Eq. 3, with the official code's details
  (``mmatena/model_merging:model_merging/merging.py`` ``_merge_with_coeffs``,
  defaults kept): ``F_i`` is replaced by ``max(F_i, fisher_floor)`` for the
  first ("target") model only (``favor_target=True``) or for every model, so
  that elements with no Fisher mass fall back to the target model (or the
  weighted mean) instead of 0/0; with ``normalize`` each ``w_i`` is divided
  by the L2 norm of model ``i``'s whole Fisher. Merge BatchNorm statistics,
  which carry no Fisher, with :func:`weighted_mean` (or recompute them).

  Args:
    trees: parameter pytrees of one architecture; ``trees[0]`` is the target.
    fishers: their diagonal Fishers (:func:`diagonal_fisher`), same structure.
    weights: ``w_i >= 0`` (default all 1); ``(1 - alpha, alpha)`` gives a
      Fisher-weighted interpolation.
    fisher_floor: > 0, the floor described above.
    favor_target: floor the target's Fisher only (official default) or all.
    normalize: divide ``w_i`` by ``||F_i||_2`` (official default).

  Raises:
    ConfigError: mismatched structures or counts, negative weights, a
      non-positive floor, an all-zero Fisher with ``normalize``.
  """
  check_compatible(list(trees) + list(fishers), "models and Fishers")
  if len(trees) != len(fishers):
    raise ConfigError(f"{len(trees)} models but {len(fishers)} Fishers")
  w = _weights(weights, len(trees))
  if fisher_floor <= 0:
    raise ConfigError(f"fisher_floor must be > 0, got {fisher_floor}")
  if normalize:
    norms = [float(jnp.sqrt(sum(jnp.sum(jnp.square(f)) for f in jax.tree.leaves(fi))))
             for fi in fishers]
    if min(norms) <= 0:
      raise ConfigError("a Fisher is all zeros; it cannot be normalised (normalize=False)")
    w = [wi / n for wi, n in zip(w, norms)]
  n = len(trees)

  def merge(*leaves):
    thetas, fs = leaves[:n], leaves[n:]
    fs = [jnp.maximum(f, fisher_floor) if (j == 0 or not favor_target) else f
          for j, f in enumerate(fs)]
    num = sum(wi * f * t for wi, f, t in zip(w, fs, thetas))
    den = sum(wi * f for wi, f in zip(w, fs))
    return (num / den).astype(thetas[0].dtype)

  return jax.tree.map(merge, *trees, *fishers)


def weighted_mean(trees: Sequence[Any], weights: Sequence[float] | None = None):
  """``sum_i w_i theta_i / sum_i w_i`` leaf by leaf (default: uniform weights).

  Raises:
    ConfigError: mismatched trees, a wrong number of weights or negative ones.
  """
  check_compatible(trees)
  w = _weights(weights, len(trees))
  total = sum(w)
  return jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)) / total, *trees)


def _weights(weights, n: int) -> list[float]:
  w = [1.0] * n if weights is None else [float(v) for v in weights]
  if len(w) != n or any(v < 0 for v in w) or sum(w) <= 0:
    raise ConfigError(f"merge weights {weights} must be {n} non-negative numbers with a "
                      f"positive sum")
  return w
