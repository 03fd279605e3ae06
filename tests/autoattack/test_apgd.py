"""APGD: schedule, step-size logic, losses on a linear model, invariants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import (apgd, apgd_single_run, apgd_targeted, checkpoint_schedule,
                               oscillation_flags, step_size_flags, top_k_target)


def test_checkpoint_fractions_match_the_paper():
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06):
  # 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 -> checks after 22, 41, ... iterations.
  assert checkpoint_schedule(100) == [21, 40, 56, 69, 79, 86, 92, 98]
  # n = 10: intervals int(2.2)=2, shrinking by max(int(.3),1)=1 down to max(int(.6),1)=1.
  assert checkpoint_schedule(10) == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_oscillation_condition_on_a_scripted_loss_sequence():
  n = 10
  # Example 0: loss rises at every step -> 5 increases of 5 > 0.75 * 5: no halving.
  # Example 1: rises at 3 of the 5 steps -> 3 <= 3.75: halve.
  # Example 2: constant -> 0 increases: halve.
  rows = np.zeros((n, 3), np.float32)
  rows[:6, 0] = [1, 2, 3, 4, 5, 6]
  rows[:6, 1] = [1, 2, 1, 2, 1, 2]
  rows[:6, 2] = [3, 3, 3, 3, 3, 3]
  flags = oscillation_flags(jnp.asarray(rows), i=5, k=5)
  # Example 1 at i=5, k=5 compares (5,4),(4,3),(3,2),(2,1),(1,0): 2>1,1<2,2>1,1<2,2>1 -> 3 rises.
  assert flags.tolist() == [False, True, True]


def test_first_checkpoint_reads_the_zero_initialised_history_like_the_reference():
  # At i = k - 1 the comparison with c = k - 1 reads row -1 (= row n - 1 = 0).
  n = 10
  rows = np.zeros((n, 1), np.float32)
  rows[:3, 0] = [1.0, 2.0, 3.0]  # i = 2, k = 3: rows 0 > row 9 (0) counts as an increase.
  assert not bool(oscillation_flags(jnp.asarray(rows), i=2, k=3)[0])  # 3 rises > 2.25
  rows[:3, 0] = [-1.0, 2.0, 3.0]  # -1 > 0 is false -> 2 rises <= 2.25 -> halve
  assert bool(oscillation_flags(jnp.asarray(rows), i=2, k=3)[0])


def test_condition_two_no_improvement_without_previous_reduction():
  n = 10
  rising = np.tile(np.arange(1, n + 1, dtype=np.float32)[:, None], (1, 4))
  loss_best = jnp.asarray([5.0, 5.0, 5.0, 6.0])
  last = jnp.asarray([5.0, 5.0, 6.0, 5.0])
  reduced = jnp.asarray([False, True, False, False])
  flags = step_size_flags(jnp.asarray(rising), 5, 5, loss_best, last, reduced)
  # 0: not reduced and no improvement -> halve; 1: was reduced -> keep; 2: best got worse
  # than recorded (>=) -> halve; 3: improved -> keep.
  assert flags.tolist() == [True, False, True, False]


def _linear(w, b):
  return lambda x: x.reshape(x.shape[0], -1) @ w + b


def test_apgd_breaks_exactly_the_non_robust_points_of_a_linear_model():
  rng = np.random.default_rng(0)
  d, eps = 12, 0.05
  w = jnp.asarray(rng.normal(size=(d, 2)).astype(np.float32))
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(64, 2, 2, 3)).astype(np.float32))
  logits_fn = _linear(w, -0.5 * jnp.sum(w, 0))  # equal logits at x = 0.5
  y = jnp.argmax(logits_fn(x), -1)
  # The optimal L-inf attack lowers the margin by eps * ||w_y - w_j||_1 (box inactive).
  margin = jnp.abs(logits_fn(x)[:, 0] - logits_fn(x)[:, 1])
  reach = eps * jnp.sum(jnp.abs(w[:, 0] - w[:, 1]))
  vulnerable = np.asarray(margin < reach * 0.98)
  safe = np.asarray(margin > reach * 1.02)
  assert vulnerable.sum() > 5 and safe.sum() > 5
  for loss in ("ce",):
    x_adv = jax.jit(lambda k: apgd(logits_fn, k, x, y, eps=eps, num_steps=30, loss=loss))(
        jax.random.PRNGKey(0))
    broken = np.asarray(jnp.argmax(logits_fn(x_adv), -1) != y)
    assert broken[vulnerable].all() and not broken[safe].any()
    assert float(jnp.max(jnp.abs(x_adv - x))) <= eps * (1 + 1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_invariants_and_keeping_misclassifying_iterates(norm, eps):
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.normal(size=(48, 10)).astype(np.float32))
  logits_fn = _linear(w, jnp.zeros(10))
  x = jnp.asarray(rng.uniform(0, 1, size=(32, 4, 4, 3)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 10, 32).astype(np.int32))
  x_adv, succ, x_best, loss_best = jax.jit(lambda k: apgd_single_run(
      logits_fn, k, x, y, eps=eps, norm=norm, num_steps=20, loss="dlr"))(jax.random.PRNGKey(2))
  d = (x_adv - x).reshape(32, -1)
  n = jnp.max(jnp.abs(d), -1) if norm == "linf" else jnp.linalg.norm(d, axis=-1)
  assert float(jnp.max(n)) <= eps * (1 + 1e-5)
  assert float(jnp.min(x_adv)) >= 0 and float(jnp.max(x_adv)) <= 1
  # Successful points return a misclassified iterate.
  pred = jnp.argmax(logits_fn(x_adv), -1)
  assert bool(jnp.all(jnp.where(succ, pred != y, True)))
  assert bool(jnp.all(jnp.isfinite(loss_best)))


def test_targeted_picks_the_kth_largest_logit_and_succeeds_on_a_linear_model():
  logits = jnp.asarray([[0.1, 5.0, 3.0, -1.0, 4.0]])
  assert int(top_k_target(logits, 2)[0]) == 4
  assert int(top_k_target(logits, 3)[0]) == 2
  assert int(top_k_target(logits, jnp.int32(5))[0]) == 3
  rng = np.random.default_rng(3)
  w = jnp.asarray(rng.normal(size=(48, 10)).astype(np.float32))
  logits_fn = _linear(w, jnp.zeros(10))
  x = jnp.asarray(rng.uniform(0.2, 0.8, size=(16, 4, 4, 3)).astype(np.float32))
  y = jnp.argmax(logits_fn(x), -1)
  x_adv = jax.jit(lambda k: apgd_targeted(logits_fn, k, x, y, eps=0.1, num_steps=20,
                                          n_target_classes=3))(jax.random.PRNGKey(0))
  assert float(jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == y)) < 0.5
  with pytest.raises(ValueError, match="at least 10 classes"):
    apgd_targeted(_linear(w[:, :5], jnp.zeros(5)), jax.random.PRNGKey(0), x, y, eps=0.1)
