"""Mo et al.'s ViT evaluation names: cw20 (margin floored at -10) and pgd100, early-stopped."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks import LOSSES, margin_floor_loss, pgd
from jaxrobust.evaluate.report import canonical_evaluation_name, evaluation_names
from jaxrobust.evaluate.suite import DEFAULT_SUITE, suite_attacks


def test_margin_floor_is_the_margin_floored_at_minus_ten():
  # CW_loss of the official pgd.py: max(max_{j != y} z_j - z_y, -10).
  logits = jnp.asarray([[15.0, 3.0, 0.0], [4.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
  y = jnp.asarray([0, 0, 0])
  np.testing.assert_allclose(np.asarray(margin_floor_loss(logits, y)), [-10.0, -3.0, 2.0])
  assert LOSSES["margin_floor"] is margin_floor_loss
  g = jax.grad(lambda z: jnp.sum(margin_floor_loss(z, y)))(logits)
  np.testing.assert_array_equal(np.asarray(g[0]), 0.0)  # below the floor: no gradient
  np.testing.assert_array_equal(np.asarray(g[1]), [-1.0, 1.0, 0.0])


def test_pgd_does_not_move_a_point_below_the_floor():
  w = jnp.asarray([[30.0, 0.0], [0.0, 1.0]])  # logits = x @ w: class 0 leads by 30 x_0 - x_1
  f = lambda x: x.reshape(x.shape[0], -1)[:, :2] @ w  # noqa: E731
  x = jnp.asarray([[[[0.9, 0.1]]], [[[0.2, 0.5]]]])  # margins -26.9 (floored), -5.5
  y = jnp.asarray([0, 0])
  out = pgd(f, jax.random.PRNGKey(0), x, y, eps=0.1, step_size=0.05, num_steps=2,
            loss="margin_floor", random_start="none")
  np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(x[0]))
  np.testing.assert_allclose(np.asarray(out[1]), [[[0.1, 0.6]]], atol=1e-6)


def test_cw20_and_pgd100_are_named_evaluations_outside_the_default_list():
  eps = 8 / 255
  s = suite_attacks(["cw20", "pgd100"])
  assert s["cw20"] == dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=20, norm="linf",
                           loss="margin_floor", random_start="uniform", early_stop=True)
  assert s["pgd100"] == dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=100,
                             norm="linf", loss="ce", random_start="uniform", early_stop=True)
  assert "cw20" not in DEFAULT_SUITE and "pgd100" not in DEFAULT_SUITE
  assert {"cw20", "pgd100"} <= set(evaluation_names())
  assert canonical_evaluation_name(" CW20") == "cw20"


def test_pgd20_mo_is_pgd20_early_stopped_and_the_vit_recipe_test_attack():
  """Mo et al.'s PGD-20 column: PGD_SAT's settings with early stop, as the trainer tests it."""
  s = suite_attacks(["pgd20", "pgd20_mo"])
  assert s["pgd20_mo"] == dict(s["pgd20"], early_stop=True)
  assert "pgd20_mo" not in DEFAULT_SUITE and "pgd20_mo" in evaluation_names()
  from tests.train.helpers import load_config  # pylint: disable=g-import-not-at-top
  test_attack = dict(load_config("cifar10_vit_pgd_at", "local").eval.test_attack)
  want = {k: v for k, v in s["pgd20_mo"].items() if k not in ("eps", "norm")}
  assert {k: test_attack[k] for k in want} == want
