"""Each evaluation protocol of the suite against the evaluation code it is named after."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import attack_from_config
from jaxrobust.evaluate.suite import DEFAULT_SUITE, PROTOCOL_SOURCES, SUITE_NAMES, suite_attacks

EPS = 8 / 255


def test_every_protocol_names_its_source():
  assert set(PROTOCOL_SOURCES) == set(SUITE_NAMES) - {"clean"}


def test_protocols_at_8_255_are_the_official_scripts_settings():
  s = suite_attacks(DEFAULT_SUITE)
  # IAD basic_eval.py: eval_robust(perturb_steps=1, epsilon=8/255, step_size=8/255, random=True)
  assert s["fgsm_iad"] == dict(name="fgsm", eps=EPS, step_size=EPS, norm="linf",
                               random_start="uniform")
  assert s["fgsm"]["random_start"] == "none"  # Goodfellow et al.
  # IAD basic_eval.py / AWP: PGD-20, 2/255, random; CW: 30 x 2/255, hinge kappa 50, random.
  assert (s["pgd20"]["eps"], s["pgd20"]["num_steps"]) == (EPS, 20)
  assert s["pgd20"]["step_size"] == pytest.approx(2 / 255, abs=1e-12)
  assert (s["cw30"]["loss"], s["cw30"]["kappa"], s["cw30"]["num_steps"]) == ("cw", 50.0, 30)
  # TRADES pgd_attack_cifar10.py: --epsilon 0.031 --num-steps 20 --step-size 0.003 --random.
  t = s["pgd20_trades"]
  assert (t["eps"], t["step_size"], t["num_steps"], t["random_start"]) == (0.031, 0.003, 20,
                                                                          "uniform")
  # RSLAD resnet18_rslad_cifar10.py: attack_pgd(attack_iters=20, step_size=0.003,
  # epsilon=8.0/255.0), uniform start.
  r = s["pgd20_rslad"]
  assert (r["eps"], r["step_size"], r["num_steps"], r["random_start"]) == (EPS, 0.003, 20,
                                                                          "uniform")
  assert all(c is None or c["norm"] == "linf" for c in s.values())


def test_protocols_rescale_with_eps_and_norm():
  s = suite_attacks(["pgd20_rslad", "pgd20_trades", "fgsm_iad"], eps=16 / 255)
  assert s["pgd20_rslad"]["step_size"] == pytest.approx(0.006)
  assert s["pgd20_trades"]["eps"] == 16 / 255  # 0.031 only stands for 8/255.
  l2 = suite_attacks(["pgd20_rslad", "fgsm_iad"], norm="l2")
  assert l2["pgd20_rslad"]["eps"] == 0.5
  assert l2["pgd20_rslad"]["step_size"] == pytest.approx(0.5 * 0.003 * 255 / 8)
  assert l2["fgsm_iad"]["step_size"] == 0.5 and l2["fgsm_iad"]["norm"] == "l2"


def test_fgsm_iad_starts_at_random_and_fgsm_does_not():
  # A linear model: the CE gradient's sign is the same at every point, s = sign(w_0 - w_1)
  # per pixel for label 1. FGSM moves every pixel by exactly s * eps; IAD's FGSM starts at
  # u ~ U(-eps, eps) and steps s * eps, projected: s * delta = min(eps, eps + s * u), whose
  # mean is 3/4 eps (eps where s u >= 0, eps - |u| (mean eps / 2) elsewhere).
  n = 256
  x = jnp.full((n, 4, 4, 3), 0.5, jnp.float32)
  w = jnp.asarray(np.random.default_rng(0).normal(size=(48, 2)), jnp.float32)
  y = jnp.ones(n, jnp.int32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  s = np.sign(np.asarray(w[:, 0] - w[:, 1])).reshape(4, 4, 3)
  cfgs = suite_attacks(["fgsm", "fgsm_iad"])
  key = jax.random.PRNGKey(3)
  plain = np.asarray(attack_from_config(cfgs["fgsm"])(logits_fn, key, x, y) - x)
  np.testing.assert_allclose(plain * s, EPS, rtol=1e-5)
  rand = np.asarray(attack_from_config(cfgs["fgsm_iad"])(logits_fn, key, x, y) - x) * s
  assert np.all(rand >= -1e-7) and np.all(rand <= EPS + 1e-7)
  assert abs(rand.mean() / EPS - 0.75) < 0.02
  assert 0.45 < np.mean(np.isclose(rand, EPS, rtol=1e-5)) < 0.55  # where s u >= 0
