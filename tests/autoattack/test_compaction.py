"""Compaction beyond APGD: Square's segments and the FAB / FAB-T runs as cascade passes.

The cascade drops fooled points between Square's query segments and between FAB's
(target, restart) runs; flags and adversarial examples must be bit-identical to the
whole chunk attacked to the end (Square) or to one call of the attack (FAB, FAB-T).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import _square as sq
from jaxrobust.attacks import fab, fab_pass, fab_targeted, fab_targeted_pass, square
from jaxrobust.evaluate import autoattack as aa
from jaxrobust.evaluate.autoattack import AutoAttackSettings, run_autoattack

from .test_cascade import _trained_linear_mnist, step_sizes


@functools.lru_cache(maxsize=None)
def _model(data_dir):
  return _trained_linear_mnist(data_dir)


def _correct(logits_fn, x, y):
  return np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), -1)) == y


_step_sizes = step_sizes


def test_square_compaction_gives_identical_flags_and_examples(data_dir, monkeypatch):
  # 200 queries in segments of 25: fooled points leave the batch every 25 queries; the
  # result must equal every point searched to the last query. eps 0.25 on the linear model:
  # the start fools a few points, the search most of the others at many different queries
  # (1 to ~180), and a few survive.
  logits_fn, x, y = _model(data_dir)
  monkeypatch.setattr(sq, "SQUARE_SEGMENT_QUERIES", 25)
  s = AutoAttackSettings.for_version(0.25, "linf", "custom", attacks=("square",),
                                     square_queries=200)
  assert aa._segmented("square", s).count == 8
  sizes = _step_sizes(monkeypatch)
  full = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False, compact=False)
  assert not sizes
  compacted = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False)
  # Points fall and some survive: the comparison is not vacuous.
  assert 0 < full.robust.sum() < _correct(logits_fn, x, y).sum()
  np.testing.assert_array_equal(compacted.robust, full.robust)
  np.testing.assert_array_equal(compacted.x_adv, full.x_adv)
  assert compacted.robust_accuracy == full.robust_accuracy
  assert min(sizes) < 32                 # fooled points did leave the batch
  assert set(sizes) <= {1, 2, 4, 8, 16, 32}


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_square_draws_depend_on_the_row_id_only(data_dir, norm, eps):
  # A permuted sub-batch with the rows' ids gets exactly the rows' results of the whole
  # batch (start and every query); the same sub-batch with its own positions as ids does
  # not (the ids are what the stream depends on).
  logits_fn, x, y = _model(data_dir)
  x, y = jnp.asarray(x[:16]), jnp.asarray(y[:16])
  run = jax.jit(functools.partial(square, logits_fn, eps=eps, norm=norm, n_queries=30))
  key = jax.random.PRNGKey(4)
  whole = np.asarray(run(key, x, y))
  rows = np.random.default_rng(0).permutation(16)[:8]
  part = np.asarray(run(key, x[rows], y[rows], row_ids=jnp.asarray(rows, jnp.int32)))
  np.testing.assert_array_equal(part, whole[rows])
  attacked = _correct(logits_fn, x, y)[rows]
  assert attacked.sum() >= 4
  own_ids = np.asarray(run(key, x[rows], y[rows]))
  assert np.any(own_ids[attacked] != whole[rows][attacked])


def _pass_spy(monkeypatch, name):
  """``[(pass, rows)]`` of every call of attack ``name``'s pass in the cascade."""
  calls = []
  real = aa._attack_fn

  def attack_fn(attack, st):
    fn = real(attack, st)
    if attack != name:
      return fn

    def wrapped(logits_fn_, key, xb, yb, sub):
      jax.debug.callback(lambda s_, n=xb.shape[0]: calls.append((int(s_), n)), sub)
      return fn(logits_fn_, key, xb, yb, sub)
    return wrapped

  monkeypatch.setattr(aa, "_attack_fn", attack_fn)
  return calls


def test_fab_t_targets_are_passes_equal_to_one_call(data_dir, monkeypatch):
  # FAB-T's 3 targets as 3 cascade passes, each on the points the previous ones left robust,
  # give exactly one fab_targeted call on the whole batch (first successful target kept).
  # 32 points, batch 32: every program sees <= 32 rows (XLA:CPU may split a larger matmul
  # over threads differently per batch size, which can move the last bit of a row).
  logits_fn, x, y = _model(data_dir)
  x, y = x[:32], y[:32]
  eps = 0.1
  s = AutoAttackSettings.for_version(eps, "linf", "custom", attacks=("fab_t",), fab_steps=10,
                                     fab_t_targets=3)
  assert aa._sub_runs("fab_t", s) == 3
  calls = _pass_spy(monkeypatch, "fab_t")
  res = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False)
  one = np.asarray(jax.jit(functools.partial(
      fab_targeted, logits_fn, eps=eps, num_steps=10, n_target_classes=3))(
          jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(y)))
  correct = _correct(logits_fn, x, y)
  np.testing.assert_array_equal(res.robust, correct & _correct(logits_fn, one, y))
  np.testing.assert_array_equal(res.x_adv, one)  # misclassified or robust: x itself
  assert 0 < res.robust.sum() < correct.sum()
  # Later targets attack only the points still robust: fewer rows.
  assert [c[0] for c in calls] == [0, 1, 2]
  assert calls[0][1] == aa.padded_size(int(correct.sum()), 32) and calls[-1][1] < calls[0][1]
  off = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False, compact=False)
  np.testing.assert_array_equal(off.robust, res.robust)
  np.testing.assert_array_equal(off.x_adv, res.x_adv)


def _small_net():
  """A random 5-class one-hidden-layer sine network on [64, 4, 4, 3] inputs, all points correct.

  Sharply non-linear, so that one FAB step from the clean point often misses and later
  runs (random starts, other targets) still find points.
  """
  gen = np.random.default_rng(3)
  w1 = jnp.asarray(gen.normal(size=(48, 32)), jnp.float32)
  w2 = jnp.asarray(gen.normal(size=(32, 5)), jnp.float32)
  logits_fn = lambda z: jnp.sin(8.0 / 7.0 * z.reshape(z.shape[0], -1) @ w1) @ w2
  x = jnp.asarray(gen.uniform(0.2, 0.8, (64, 4, 4, 3)), jnp.float32)
  y = jnp.argmax(logits_fn(x), -1).astype(jnp.int32)
  return logits_fn, x, y


@pytest.mark.parametrize("targeted", [False, True])
def test_fab_passes_in_turn_equal_the_restart_loop(targeted):
  # The cascade's form of FAB's restarts (and FAB-T's targets x restarts): pass i on the
  # rows still robust, a row keeping its first success (misclassified and within eps),
  # equals the attack's own loop over runs with the same key (random starts included).
  logits_fn, x, y = _small_net()
  kw = dict(eps=0.04, num_steps=1, num_restarts=3)
  if targeted:
    kw["n_target_classes"] = 2
    attack, one_pass, n_runs = fab_targeted, fab_targeted_pass, 6
  else:
    attack, one_pass, n_runs = fab, fab_pass, 3
  key = jax.random.PRNGKey(1)
  want = np.asarray(jax.jit(functools.partial(attack, logits_fn, **kw))(key, x, y))
  run = jax.jit(functools.partial(one_pass, logits_fn, **kw))
  adv, robust, found = np.asarray(x).copy(), np.ones(len(x), bool), []
  for i in range(n_runs):
    out = np.asarray(run(key, x, y, i))
    broken = robust & ~_correct(logits_fn, out, np.asarray(y))
    adv[broken] = out[broken]
    robust &= ~broken
    found.append(int(broken.sum()))
  np.testing.assert_array_equal(adv, want)
  # Not vacuous: later runs found points the first missed, and some points survive.
  assert sum(found[1:]) > 0 and 0 < robust.sum() < len(x), found
  # A pass past the last run attacks nothing.
  np.testing.assert_array_equal(np.asarray(run(key, x, y, n_runs)), np.asarray(x))


def test_resume_between_fab_t_target_passes(tmp_path, data_dir, monkeypatch):
  # The state records each FAB-T target as its own pass ('fab_t:0', ...); a run stopped
  # after the first target resumes with the second and equals an uninterrupted run.
  import json
  from jaxrobust.errors import AutoAttackPreempted
  logits_fn, x, y = _model(data_dir)
  monkeypatch.setattr(sq, "SQUARE_SEGMENT_QUERIES", 25)
  s = AutoAttackSettings.for_version(0.08, "linf", "custom", attacks=("fab_t", "square"),
                                     fab_steps=5, fab_t_targets=3, square_queries=50)
  full = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False)
  calls = []

  def should_stop():  # polled after chunk 0 of 'fab_t:0', then at the end of that pass
    calls.append(1)
    return "SIGTERM" if len(calls) == 2 else None

  with pytest.raises(AutoAttackPreempted, match=r"fab_t pass 1/3 done"):
    run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False, state_dir=str(tmp_path),
                   should_stop=should_stop)
  assert json.loads((tmp_path / "aa_state.json").read_text())["done"] == ["fab_t:0"]
  resumed = run_autoattack(logits_fn, x, y, s, batch_size=32, progress=False,
                           state_dir=str(tmp_path), should_stop=lambda: None)
  np.testing.assert_array_equal(resumed.robust, full.robust)
  np.testing.assert_array_equal(resumed.x_adv, full.x_adv)
  assert resumed.robust_accuracy == full.robust_accuracy
  assert json.loads((tmp_path / "aa_state.json").read_text())["done"] == [
      "fab_t:0", "fab_t:1", "fab_t:2", "square:0"]
