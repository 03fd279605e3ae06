"""Interpolation, soups and Fisher merging against hand computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.errors import ConfigError
from jaxrobust.weights import (check_compatible, diagonal_fisher, fisher_merge, greedy_soup,
                               interpolate, parse_alphas, select_alpha, sweep, uniform_soup,
                               weighted_mean)
from tests.numpy_models import numpy_initialised
from tests.weights.toy import toy


def _np(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_interpolation_endpoints_are_exact_for_params_and_batch_stats():
  _, pa, sa = numpy_initialised("simple_cnn_tiny", seed=0)
  _, pb, sb = numpy_initialised("simple_cnn_tiny", seed=1)
  for tree_a, tree_b in ((pa, pb), (sa, sb)):
    for alpha, want in ((0.0, tree_a), (1.0, tree_b)):
      for u, v in zip(_np(interpolate(tree_a, tree_b, alpha)), _np(want)):
        np.testing.assert_array_equal(u, v)
    for u, v, w in zip(_np(interpolate(tree_a, tree_b, 0.3)), _np(tree_a), _np(tree_b)):
      np.testing.assert_allclose(u, 0.7 * v.astype(np.float64) + 0.3 * w, rtol=1e-5,
                                 atol=1e-7)


def test_rift_uses_the_shared_interpolation():
  import jaxrobust.rift as rift
  import jaxrobust.rift.pipeline as pipeline
  import jaxrobust.weights as weights
  assert rift.interpolate is weights.interpolate is pipeline.interpolate
  assert rift.select_alpha is weights.select_alpha is pipeline.select_alpha


def test_sweep_records_every_alpha_in_order():
  a = {"w": jnp.zeros(3)}
  b = {"w": jnp.full(3, 2.0)}
  seen = []

  def evaluate(p, bs):
    seen.append(float(bs["m"][0]))
    return {"clean": float(p["w"][0]), "robust": 1.0 - float(p["w"][0])}

  recs = sweep(evaluate, a, {"m": jnp.zeros(1)}, b, {"m": jnp.ones(1)}, [1.0, 0.0, 0.5])
  assert [r["alpha"] for r in recs] == [0.0, 0.5, 1.0]
  assert [r["clean"] for r in recs] == [0.0, 1.0, 2.0]
  assert seen == [0.0, 0.5, 1.0]  # BatchNorm statistics are interpolated with the weights.
  assert select_alpha(recs, 0.0)["alpha"] == 0.0


def test_parse_alphas():
  assert parse_alphas("0:1:0.1") == [round(0.1 * k, 10) for k in range(11)]
  assert parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
  assert parse_alphas("1,0,0.5") == [0.0, 0.5, 1.0]
  with pytest.raises(ConfigError, match="step > 0"):
    parse_alphas("0:1:0")
  for bad in ("0:1:0", "a,b", "1:0:0.1", "", "0:1"):
    with pytest.raises(ConfigError):
      parse_alphas(bad)


def test_uniform_soup_is_the_arithmetic_mean():
  trees = [numpy_initialised("simple_cnn_tiny", seed=s)[1:] for s in range(3)]
  soup = uniform_soup(trees)
  for got, *xs in zip(_np(soup), *(_np(t) for t in trees)):
    np.testing.assert_allclose(got, np.mean(np.stack(xs).astype(np.float64), 0), rtol=1e-6,
                               atol=1e-7)
  one = uniform_soup(trees[:1])
  for u, v in zip(_np(one), _np(trees[0])):
    np.testing.assert_array_equal(u, v)


def test_greedy_soup_adds_an_ingredient_only_on_strict_improvement():
  ingredients = [{"w": jnp.asarray(float(v))} for v in (1.0, 2.0, 3.0, 4.0)]
  # Scripted held-out metric of every tree the recipe may evaluate (keyed by its weight).
  table = {1.0: 0.5, 2.0: 0.7, 3.0: 0.6, 4.0: 0.4,
           2.5: 0.7,        # {2, 3}: equal to the soup's 0.7 -> not strictly better, dropped.
           1.5: 0.75,       # {2, 1}: better -> kept.
           round(7 / 3, 5): 0.74}  # {2, 1, 4}: worse -> dropped.
  calls = []

  def metric(t):
    w = round(float(t["w"]), 5)
    calls.append(w)
    return table[w]

  soup, members, log = greedy_soup(ingredients, metric)
  assert members == [1, 0]
  assert float(soup["w"]) == pytest.approx(1.5)
  assert [(r["ingredient"], r["kept"]) for r in log] == [(1, True), (2, False), (0, True),
                                                         (3, False)]
  assert calls == [1.0, 2.0, 3.0, 4.0, 2.5, 1.5, round(7 / 3, 5)]
  # Known scores skip evaluating the ingredients again.
  calls.clear()
  _, members2, _ = greedy_soup(ingredients, metric, scores=[0.5, 0.7, 0.6, 0.4])
  assert members2 == [1, 0] and calls == [2.5, 1.5, round(7 / 3, 5)]


def test_architecture_mismatch_is_refused():
  _, a, _ = numpy_initialised("simple_cnn_tiny", seed=0)
  _, other, _ = numpy_initialised("small_cnn_tiny")
  _, fewer_classes, _ = numpy_initialised("simple_cnn_tiny", num_classes=5)
  for bad in (other, fewer_classes):
    with pytest.raises(ConfigError, match="different architectures"):
      uniform_soup([a, bad])
    with pytest.raises(ConfigError, match="different architectures"):
      greedy_soup([a, bad], lambda t: 0.0)
    with pytest.raises(ConfigError):
      interpolate(a, bad, 0.5)
  with pytest.raises(ConfigError, match="shape"):
    check_compatible([a, fewer_classes])


def test_fisher_merge_weights_each_element_by_its_fisher():
  t0, t1 = {"w": jnp.asarray([0.0, 0.0, 0.0, 2.0])}, {"w": jnp.asarray([1.0, 1.0, 1.0, 4.0])}
  f0, f1 = {"w": jnp.asarray([1.0, 0.0, 3.0, 0.0])}, {"w": jnp.asarray([1.0, 5.0, 1.0, 0.0])}
  got = np.asarray(fisher_merge([t0, t1], [f0, f1], normalize=False)["w"])
  # Last element: no Fisher anywhere -> the (floored) target model's value.
  np.testing.assert_allclose(got, [0.5, 1.0 - 1e-6 / 5, 0.25, 2.0], rtol=1e-6)
  # Floor on every model: the plain mean where no model has Fisher mass.
  got = np.asarray(fisher_merge([t0, t1], [f0, f1], normalize=False, favor_target=False)["w"])
  np.testing.assert_allclose(got[3], 3.0, rtol=1e-6)
  # Official normalisation: w_i / ||F_i||; ||f0|| = sqrt(10), ||f1|| = sqrt(27).
  got = np.asarray(fisher_merge([t0, t1], [f0, f1])["w"])
  a, b = 1 / np.sqrt(10), 1 / np.sqrt(27)
  np.testing.assert_allclose(got[0], b / (a + b), rtol=1e-6)
  # Equal Fishers: the plain weighted mean.
  same = fisher_merge([t0, t1], [f1, f1], weights=[3.0, 1.0], favor_target=False)
  np.testing.assert_allclose(np.asarray(same["w"]),
                             np.asarray(weighted_mean([t0, t1], [3.0, 1.0])["w"]), rtol=1e-6)
  with pytest.raises(ConfigError):
    fisher_merge([t0, t1], [f0])


@pytest.mark.parametrize("labels", ["expected", "empirical"])
def test_diagonal_fisher_of_the_output_bias_matches_the_closed_form(labels):
  # d log softmax(z)_y / d b = onehot(y) - p, so the expected Fisher of the last bias is
  # p (1 - p) and the empirical one (onehot(y) - p)^2, averaged over examples.
  fns, params, stats = toy(seed=0, num_classes=3)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 3)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1, 2])
  batches = [{"image": x[:4], "label": y[:4]}, {"image": x[4:], "label": y[4:],
                                                "mask": np.ones(2)}]
  fisher = diagonal_fisher(fns, params, stats, batches, labels=labels)
  logits, _ = fns.apply(params, stats, jnp.asarray(x), train=False)
  p = np.asarray(jax.nn.softmax(logits), np.float64)
  if labels == "expected":
    want = np.mean(p * (1 - p), 0)
  else:
    want = np.mean((np.eye(3)[y] - p) ** 2, 0)
  np.testing.assert_allclose(np.asarray(fisher["head"]["bias"][...]), want, rtol=1e-4)
  assert all(np.all(np.asarray(f) >= 0) for f in jax.tree.leaves(fisher))
