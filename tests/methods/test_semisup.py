"""Semi-supervised methods (rst, uat_ot, uat_ft): losses against NumPy hand computations on a toy
BatchNorm network, UAT-OT's joint attack against the library's CE and KL attacks row by row,
the stop-gradient of UAT-OT's clean targets, RST's BatchNorm order."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import pgd
from jaxrobust.errors import ConfigError
from jaxrobust.methods import method_config, method_from_config
from jaxrobust.methods.semisup import labeled_rows, onehot_logits
from tests.weights.toy import toy

EPS = 0.1
ATTACK = dict(name="pgd", eps=EPS, step_size=0.03, num_steps=3)
B, N_L = 8, 4  # unsup_fraction 0.5: rows 0-3 labeled, 4-7 unlabeled.


def _data(seed=0, unlabeled_label=-1):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.random((B, 3)), jnp.float32)
  y = rng.integers(0, 3, B).astype(np.int32)
  y[N_L:] = unlabeled_label if unlabeled_label is not None else y[N_L:]
  return x, jnp.asarray(y)


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kl(p_logits, q_logits):
  lp, lq = _np_log_softmax(p_logits), _np_log_softmax(q_logits)
  return (np.exp(lp) * (lp - lq)).sum(-1)


def test_labeled_rows_follow_the_official_split():
  # B_u = int(B * unsup_fraction) (semisup-adv datasets.py l. 177); the labeled rows come first.
  np.testing.assert_array_equal(labeled_rows(8, 0.5), [1] * 4 + [0] * 4)
  np.testing.assert_array_equal(labeled_rows(7, 0.5), [1] * 4 + [0] * 3)
  np.testing.assert_array_equal(labeled_rows(5, 0.0), [1] * 5)
  z = np.asarray(jax.nn.softmax(onehot_logits(jnp.array([2, 0]), 3)))
  np.testing.assert_array_equal(z, [[0, 0, 1], [1, 0, 0]])  # exactly one-hot.


def test_uat_ot_attack_is_ce_on_labeled_rows_and_kl_to_own_prediction_on_unlabeled_rows():
  fns, params, bs = toy(seed=1)
  x, y = _data()
  for bn in ("eval", "train"):
    method = method_from_config(method_config(
        "uat_ot", attack=dict(ATTACK, loss="kl", random_start="uniform"), attack_bn=bn))
    rng = jax.random.PRNGKey(4)
    x_adv, clean = method.perturb(fns, params, bs, x, y, rng)
    logits_fn = fns.logits_fn(params, bs, bn=bn)
    np.testing.assert_allclose(clean, logits_fn(x), atol=1e-6)  # the attack view's prediction.
    key = jax.random.fold_in(rng, 0)  # attack_in_view's key: same random start below.
    if bn == "eval":  # rows are independent: each half is the library attack on its own loss.
      ce = pgd(logits_fn, key, x, y, loss="ce", eps=EPS, step_size=0.03, num_steps=3)
      kl = pgd(logits_fn, key, x, y, loss="kl", eps=EPS, step_size=0.03, num_steps=3)
      np.testing.assert_allclose(x_adv[:N_L], ce[:N_L], atol=1e-6)
      np.testing.assert_allclose(x_adv[N_L:], kl[N_L:], atol=1e-6)
    assert np.abs(np.asarray(x_adv - x)).max() <= EPS + 1e-6
    assert np.abs(np.asarray(x_adv - x)).max() > 0.5 * EPS  # it moved


def test_uat_ot_loss_is_the_hand_computation_and_its_targets_carry_no_gradient():
  fns, params, bs = toy(seed=2)
  x, y = _data(1)
  method = method_from_config(method_config(
      "uat_ot", attack=dict(ATTACK, loss="kl", random_start="uniform"), unsup_weight=0.7))
  rng = jax.random.PRNGKey(0)
  x_adv, clean = method.perturb(fns, params, bs, x, y, rng)
  loss, (new_bs, sums) = method.loss(params, bs, fns, x, y, (x_adv, clean), rng)
  logits, want_bs = fns.apply(params, bs, x_adv, train=True)  # one train pass on x_adv.
  lp = _np_log_softmax(logits)
  ce = -lp[np.arange(N_L), np.asarray(y[:N_L])].mean()
  kl = _np_kl(clean[N_L:], logits[N_L:]).mean()
  assert float(loss) == pytest.approx(ce + 0.7 * kl, rel=1e-5)
  assert float(sums["unsup_loss"]) == pytest.approx(kl * B, rel=1e-5)
  for a, b in zip(jax.tree.leaves(new_bs), jax.tree.leaves(want_bs)):
    np.testing.assert_allclose(a, b, atol=1e-6)

  # Gradient through perturb AND loss (no trainer stop_gradient around them) equals the
  # gradient with the clean targets held constant: the KL target is stop-gradient.
  def through(p):
    aux = method.perturb(fns, p, bs, x, y, rng)
    return method.loss(p, bs, fns, x, y, aux, rng)[0]

  def constant_targets(p, held):
    lo = fns.apply(p, bs, x_adv, train=True)[0]
    lpj = jax.nn.log_softmax(lo)
    ce_j = -jnp.mean(lpj[jnp.arange(N_L), y[:N_L]])
    pt = jax.nn.softmax(held[N_L:])
    kl_j = jnp.mean(jnp.sum(pt * (jnp.log(pt) - lpj[N_L:]), -1))
    return ce_j + 0.7 * kl_j

  def live_targets(p):  # what a target WITH gradient would give (must differ).
    return constant_targets(p, fns.apply(p, bs, x, train=False)[0])

  g = jax.grad(through)(params)
  g_held = jax.grad(constant_targets)(params, clean)
  g_live = jax.grad(live_targets)(params)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_held)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert max(float(jnp.abs(a - b).max())
             for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_live))) > 1e-4


def test_uat_ft_is_adversarial_ce_on_labels_and_pseudo_labels():
  fns, params, bs = toy(seed=3)
  x, y = _data(2, unlabeled_label=None)  # the unlabeled rows carry pseudo-labels.
  method = method_from_config(method_config(
      "uat_ft", attack=dict(ATTACK, loss="ce", random_start="uniform"), unsup_weight=0.5))
  rng = jax.random.PRNGKey(1)
  x_adv = method.perturb(fns, params, bs, x, y, rng)
  want = pgd(fns.logits_fn(params, bs, bn="train"), jax.random.fold_in(rng, 0), x, y,
             loss="ce", eps=EPS, step_size=0.03, num_steps=3)
  np.testing.assert_allclose(x_adv, want, atol=1e-6)  # PGD-AT on every row (train-mode BN).
  loss, _ = method.loss(params, bs, fns, x, y, x_adv, rng)
  lp = _np_log_softmax(fns.apply(params, bs, x_adv, train=True)[0])
  nll = -lp[np.arange(B), np.asarray(y)]
  assert float(loss) == pytest.approx(nll[:N_L].mean() + 0.5 * nll[N_L:].mean(), rel=1e-5)


def test_rst_is_trades_on_all_rows_with_the_official_batchnorm_order():
  fns, params, bs = toy(seed=4)
  x, y = _data(3, unlabeled_label=None)
  method = method_from_config(method_config("rst", attack=dict(
      ATTACK, step_size=0.007, loss="kl", random_start="normal")))
  assert (method.name, method.beta, method.attack_bn, method.unsup_fraction) == (
      "rst", 6.0, "eval", 0.5)
  rng = jax.random.PRNGKey(2)
  x_adv = method.perturb(fns, params, bs, x, y, rng)
  loss, (new_bs, _) = method.loss(params, bs, fns, x, y, x_adv, rng)
  la, _ = fns.apply(params, bs, x_adv, train=True)
  lc, _ = fns.apply(params, bs, x, train=True)
  lp = _np_log_softmax(lc)
  want = -lp[np.arange(B), np.asarray(y)].mean() + 6.0 * _np_kl(lc, la).sum() / B
  assert float(loss) == pytest.approx(want, rel=1e-5)
  # semisup-adv losses.py l. 80-81: model(x_adv), then model(x_natural).
  _, after_adv = fns.apply(params, bs, x_adv, train=True)
  _, want_bs = fns.apply(params, after_adv, x, train=True)
  for a, b in zip(jax.tree.leaves(new_bs), jax.tree.leaves(want_bs)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_rst_with_beta_zero_is_standard_training():
  fns, params, bs = toy(seed=5)
  x, y = _data(4, unlabeled_label=None)
  method = method_from_config(method_config("rst", beta=0.0, attack=dict(
      ATTACK, loss="kl", random_start="normal")))
  rng = jax.random.PRNGKey(3)
  assert method.perturb(fns, params, bs, x, y, rng) is x  # no attack (losses.py l. 37-42).
  loss, (new_bs, _) = method.loss(params, bs, fns, x, y, x, rng)
  logits, want_bs = fns.apply(params, bs, x, train=True)
  assert float(loss) == pytest.approx(-_np_log_softmax(logits)[np.arange(B), y].mean(), rel=1e-5)
  for a, b in zip(jax.tree.leaves(new_bs), jax.tree.leaves(want_bs)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("override,match", [
    (dict(unsup_fraction=1.0), "unsup_fraction"), (dict(unlabeled_size=-1), "unlabeled_size"),
    (dict(unlabeled=""), "unlabeled"), (dict(attack=dict(ATTACK, loss="ce")), "KL")])
def test_bad_settings_are_refused(override, match):
  with pytest.raises(ConfigError, match=match):
    method_from_config(method_config("uat_ot", **{"attack": dict(ATTACK, loss="kl"),
                                                   **override}))
