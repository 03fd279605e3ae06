"""Each loss pinned against a hand computation, with its reduction and gradient flow.

Logits are chosen as log-probabilities so every softmax is readable:
``log([1/2, 1/4, 1/4])`` has softmax ``[1/2, 1/4, 1/4]``.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.losses import (ard_loss, cross_entropy, iad_loss, iad_trust, kl_divergence,
                              mart_loss, mart_misclassified_class, rslad_loss, trades_loss)

LN2, LN3 = math.log(2.0), math.log(3.0)
P = np.array([[1 / 2, 1 / 4, 1 / 4], [1 / 3, 1 / 3, 1 / 3]])  # reference ("clean"/teacher)
Q = np.array([[1 / 4, 1 / 2, 1 / 4], [1 / 2, 1 / 4, 1 / 4]])  # model ("adversarial")
LP, LQ = jnp.asarray(np.log(P), jnp.float32), jnp.asarray(np.log(Q), jnp.float32)
Y = jnp.array([0, 1])
# KL(P1 || Q1) = 1/2 ln(2) + 1/4 ln(1/2) + 1/4 ln(1)            = ln2 / 4
# KL(P2 || Q2) = 1/3 ln(2/3) + 2/3 ln(4/3) = (5 ln2 - 3 ln3) / 3 = 5/3 ln2 - ln3
K1, K2 = LN2 / 4, 5 / 3 * LN2 - LN3
RTOL = 1e-5


def test_kl_divergence_reductions_by_hand():
  np.testing.assert_allclose(kl_divergence(LP, LQ, reduction="sum"), K1 + K2, rtol=RTOL)
  np.testing.assert_allclose(kl_divergence(LP, LQ, reduction="batchmean"), (K1 + K2) / 2,
                             rtol=RTOL)
  np.testing.assert_allclose(kl_divergence(LP, LQ, reduction="mean"), (K1 + K2) / 6,
                             rtol=RTOL)
  # 'none': element-wise P_c (ln P_c - ln Q_c); row 1 = [1/2 ln 2, 1/4 ln(1/2), 0].
  none = kl_divergence(LP, LQ, reduction="none")
  assert none.shape == (2, 3)
  np.testing.assert_allclose(none[0], [LN2 / 2, -LN2 / 4, 0.0], atol=1e-6)
  np.testing.assert_allclose(none.sum(-1), [K1, K2], rtol=RTOL)
  # The same from normalised log-probabilities; shifting logits changes nothing.
  np.testing.assert_allclose(kl_divergence(LP, LQ, from_logits=False), (K1 + K2) / 2, rtol=RTOL)
  np.testing.assert_allclose(kl_divergence(LP + 3.0, LQ - 1.0), (K1 + K2) / 2, rtol=RTOL)


def test_kl_divergence_eps_variants_and_zero_targets():
  # RSLAD: P (ln(P + e) - ln Q); MART: P (ln P - ln(Q + e)); e = 0.1 makes it visible.
  e = 0.1
  want_p = np.sum(P * (np.log(P + e) - np.log(Q))) / 2
  want_q = np.sum(P * (np.log(P) - np.log(Q + e))) / 2
  np.testing.assert_allclose(kl_divergence(LP, LQ, p_eps=e), want_p, rtol=RTOL)
  np.testing.assert_allclose(kl_divergence(LP, LQ, q_eps=e), want_q, rtol=RTOL)
  # A target probability that underflows to 0 contributes 0 (torch xlogy), no NaN.
  p0 = jnp.array([[0.0, -200.0, 0.0]])  # P = [1/2, 0, 1/2]
  q0 = jnp.zeros((1, 3))  # Q uniform: KL = ln(3/2)
  np.testing.assert_allclose(kl_divergence(p0, q0, reduction="sum"), math.log(1.5), rtol=RTOL)
  assert np.all(np.isfinite(jax.grad(lambda a: kl_divergence(a, q0))(p0)))
  with pytest.raises(ValueError, match="reduction"):
    kl_divergence(LP, LQ, reduction="avg")


def test_kl_divergence_gradients_flow_into_both_arguments():
  gp, gq = jax.grad(kl_divergence, argnums=(0, 1))(LP, LQ)
  assert np.abs(gp).sum() > 1e-3 and np.abs(gq).sum() > 1e-3


def test_cross_entropy_by_hand():
  # -ln P1[0] = ln 2; -ln P2[1] = ln 3.
  np.testing.assert_allclose(cross_entropy(LP, Y), (LN2 + LN3) / 2, rtol=RTOL)
  np.testing.assert_allclose(cross_entropy(LP, Y, "none"), [LN2, LN3], rtol=RTOL)


def test_trades_loss_by_hand_and_gradients():
  # CE(clean) = (ln2 + ln3)/2; beta * batchmean KL = 6 * (K1 + K2) / 2.
  want = (LN2 + LN3) / 2 + 6 * (K1 + K2) / 2
  np.testing.assert_allclose(trades_loss(LP, LQ, Y, beta=6.0), want, rtol=RTOL)
  np.testing.assert_allclose(trades_loss(LP, LQ, Y, beta=6.0, reduction="mean"),
                             (LN2 + LN3) / 2 + 6 * (K1 + K2) / 6, rtol=RTOL)
  # The clean branch is not detached: its gradient has a KL part besides the CE's.
  g_ce = jax.grad(cross_entropy)(LP, Y)
  g = jax.grad(trades_loss)(LP, LQ, Y, beta=6.0)
  g_kl = jax.grad(lambda a: kl_divergence(a, LQ))(LP)
  np.testing.assert_allclose(g, g_ce + 6.0 * g_kl, atol=1e-6)
  assert np.abs(g - g_ce).max() > 1e-2
  g_det = jax.grad(trades_loss)(LP, LQ, Y, beta=6.0, detach_clean=True)
  np.testing.assert_allclose(g_det, g_ce, atol=1e-7)
  assert np.abs(jax.grad(trades_loss, argnums=1)(LP, LQ, Y)).sum() > 1e-3


# MART example without ties: adversarial probabilities Q' and clean P, labels y = [1, 1].
QM = np.array([[0.2, 0.5, 0.3], [0.5, 0.25, 0.25]])
YM = jnp.array([1, 1])


def test_mart_wrong_class():
  # Row 1: top class 1 == y -> the second, class 2. Row 2: top class 0 != y -> 0.
  wrong = mart_misclassified_class(jnp.asarray(QM), YM)
  np.testing.assert_array_equal(wrong, [2, 0])


def test_mart_loss_by_hand_and_gradients():
  lq = jnp.asarray(np.log(QM), jnp.float32)
  # BCE_i = -ln Q'_{i,y} - ln(1.0001 - Q'_{i,wrong} + 1e-12)
  bce = np.mean([-math.log(0.5) - math.log(1.0001 - 0.3 + 1e-12),
                 -math.log(0.25) - math.log(1.0001 - 0.5 + 1e-12)])
  # KL_i = sum_c P (ln P - ln(Q' + 1e-12)), weighted by (1.0000001 - P_{i,y}).
  kl1 = 0.5 * math.log(0.5 / 0.2) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.3)
  kl2 = (math.log((1 / 3) / 0.5) + 2 * math.log((1 / 3) / 0.25)) / 3
  robust = (kl1 * (1.0000001 - 0.25) + kl2 * (1.0000001 - 1 / 3)) / 2
  np.testing.assert_allclose(mart_loss(LP, lq, YM, beta=5.0), bce + 5.0 * robust, rtol=RTOL)
  # Clean logits receive gradients (KL target and weight); detach_clean removes both.
  assert np.abs(jax.grad(mart_loss)(LP, lq, YM)).sum() > 1e-3
  np.testing.assert_allclose(jax.grad(mart_loss)(LP, lq, YM, detach_clean=True), 0.0)
  # Gradient through the weight alone: beta * KL_i * d(-p_y)/dlogits (KL_i constant).
  def weight_only(a):
    p_y = jax.nn.softmax(a)[jnp.arange(2), YM]
    return jnp.sum(jnp.array([kl1, kl2]) * (1.0000001 - p_y)) / 2
  def kl_only(a):
    kl = jnp.sum(kl_divergence(a, lq, reduction="none", q_eps=1e-12), -1)
    return jnp.sum(kl * jax.lax.stop_gradient(1.0000001 - jax.nn.softmax(a)[jnp.arange(2), YM])
                   ) / 2
  np.testing.assert_allclose(jax.grad(mart_loss)(LP, lq, YM, beta=2.0),
                             2.0 * (jax.grad(weight_only)(LP) + jax.grad(kl_only)(LP)),
                             atol=1e-6)


def test_ard_loss_by_hand_temperature_and_reduction():
  # T = 2: teacher [2 ln 4, 0, 0] / 2 -> softmax [2/3, 1/6, 1/6];
  #        student [0, 2 ln 2, 0] / 2 -> softmax [1/4, 1/2, 1/4].
  t = jnp.array([[2 * math.log(4.0), 0.0, 0.0]])
  s = jnp.array([[0.0, 2 * LN2, 0.0]])
  kl = (2 / 3 * math.log((2 / 3) / (1 / 4)) + 1 / 6 * math.log((1 / 6) / (1 / 2))
        + 1 / 6 * math.log((1 / 6) / (1 / 4)))
  # alpha T^2 * mean over B*C = 1 * 4 * kl / 3 (official nn.KLDivLoss() default).
  np.testing.assert_allclose(ard_loss(s, t, temperature=2.0), 4 * kl / 3, rtol=RTOL)
  np.testing.assert_allclose(ard_loss(s, t, temperature=2.0, reduction="batchmean"), 4 * kl,
                             rtol=RTOL)
  # alpha = 0.5 adds 0.5 * CE(S(x), y); clean logits [0, 0, 0] -> CE = ln 3.
  clean = jnp.zeros((1, 3))
  np.testing.assert_allclose(
      ard_loss(s, t, alpha=0.5, temperature=2.0, student_logits=clean, labels=jnp.array([0])),
      0.5 * 4 * kl / 3 + 0.5 * LN3, rtol=RTOL)
  with pytest.raises(ValueError, match="alpha"):
    ard_loss(s, t, alpha=0.5)
  g_s, g_t = jax.grad(ard_loss, argnums=(0, 1))(s, t)
  assert np.abs(g_s).sum() > 1e-3
  np.testing.assert_array_equal(g_t, 0.0)  # the teacher never receives gradients.


# IAD: teacher at x' has true-class probabilities 0.64 and 0.81 -> a = sqrt = 0.8, 0.9 (beta=.5).
TA = np.array([[0.64, 0.2, 0.16], [0.1, 0.81, 0.09]])
LTA = jnp.asarray(np.log(TA), jnp.float32)


def _kl_rows(p, q):
  return np.sum(p * (np.log(p) - np.log(q)), axis=1)


def test_iad_trust_by_hand():
  np.testing.assert_allclose(iad_trust(LTA, Y, 0.5), [0.8, 0.9], rtol=RTOL)
  np.testing.assert_array_equal(jax.grad(lambda a: iad_trust(a, Y, 0.5).sum())(LTA), 0.0)


def test_iad1_loss_by_hand_and_gradients():
  # Student: S(x') -> Q, S(x) -> P; teacher on the clean batch -> TA (any distribution).
  kt = _kl_rows(TA, Q)                # KL_i(T(x) || S(x'))
  ks = np.array([K1, K2])             # KL_i(S(x) || S(x'))
  a = np.array([0.8, 0.9])
  want = np.mean(kt) + np.mean((1 - a) * ks)
  got = iad_loss(LQ, LP, LTA, LTA, Y, beta=0.5)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  # Before `begin`: plain ARD (per-sample sum / B KL, T = 1).
  np.testing.assert_allclose(iad_loss(LQ, LP, LTA, LTA, Y, beta=0.5, introspect=False),
                             np.mean(kt), rtol=RTOL)
  np.testing.assert_allclose(
      iad_loss(LQ, LP, LTA, LTA, Y, beta=0.5, introspect=jnp.array(False)), np.mean(kt),
      rtol=RTOL)
  # alpha = 0.5: 0.5 * (first two terms) + 0.5 * CE(S(x), y) = ... + 0.5 (ln2 + ln3)/2.
  np.testing.assert_allclose(iad_loss(LQ, LP, LTA, LTA, Y, beta=0.5, alpha=0.5),
                             0.5 * want + 0.5 * (LN2 + LN3) / 2, rtol=RTOL)
  # Gradients: the introspection target S(x) is not detached; teachers get none.
  g = jax.grad(iad_loss, argnums=(0, 1, 2, 3))(LQ, LP, LTA, LTA, Y, beta=0.5)
  assert np.abs(g[0]).sum() > 1e-3 and np.abs(g[1]).sum() > 1e-3
  np.testing.assert_array_equal(g[2], 0.0)
  np.testing.assert_array_equal(g[3], 0.0)
  g_before = jax.grad(iad_loss, argnums=1)(LQ, LP, LTA, LTA, Y, beta=0.5, introspect=False)
  np.testing.assert_allclose(g_before, 0.0, atol=1e-7)  # (1 - a) = 0 before `begin`.
  g_det = jax.grad(iad_loss, argnums=1)(LQ, LP, LTA, LTA, Y, beta=0.5, detach_clean=True)
  np.testing.assert_allclose(g_det, 0.0, atol=1e-7)


def test_iad2_loss_by_hand():
  # Both teachers see x': T_AT(x') -> TA, T_nat(x') -> P; alpha1 = .5, alpha2 = .25.
  kt = _kl_rows(TA, Q)
  ks = np.array([K1, K2])
  kn = np.array([K1, K2])  # KL(P || Q) again (natural teacher = P)
  a = np.array([0.8, 0.9])
  ce_adv = math.log(4.0)  # -ln Q1[0] = -ln Q2[1] = ln 4
  want = (0.25 * ce_adv + 0.5 * (np.mean(a * kt) + np.mean((1 - a) * ks))
          + 0.25 * np.mean(kn))
  got = iad_loss(LQ, LP, LTA, LTA, Y, beta=0.5, natural_teacher_logits=LP)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  before = 0.25 * ce_adv + 0.5 * np.mean(kt) + 0.25 * np.mean(kn)
  np.testing.assert_allclose(iad_loss(LQ, LP, LTA, LTA, Y, beta=0.5, introspect=False,
                                      natural_teacher_logits=LP), before, rtol=RTOL)
  g_nat = jax.grad(lambda n: iad_loss(LQ, LP, LTA, LTA, Y, natural_teacher_logits=n))(LP)
  np.testing.assert_array_equal(g_nat, 0.0)


def test_rslad_loss_by_hand_reductions_and_gradients():
  # Teacher T(x) -> TA; S(x') -> Q; S(x) -> P. Element-wise TA (ln(TA + 1e-5) - ln S).
  e_adv = TA * (np.log(TA + 1e-5) - np.log(Q))
  e_nat = TA * (np.log(TA + 1e-5) - np.log(P))
  want = 5 / 6 * e_adv.mean() + 1 / 6 * e_nat.mean()  # mean over B*C = 6 elements
  np.testing.assert_allclose(rslad_loss(LQ, LP, LTA), want, rtol=RTOL)
  np.testing.assert_allclose(rslad_loss(LQ, LP, LTA, reduction="batchmean"),
                             5 / 6 * e_adv.sum() / 2 + 1 / 6 * e_nat.sum() / 2, rtol=RTOL)
  exact = 5 / 6 * _kl_rows(TA, Q).mean() + 1 / 6 * _kl_rows(TA, P).mean()
  np.testing.assert_allclose(rslad_loss(LQ, LP, LTA, reduction="batchmean", target_eps=0.0),
                             exact, rtol=RTOL)
  g = jax.grad(rslad_loss, argnums=(0, 1, 2))(LQ, LP, LTA)
  assert np.abs(g[0]).sum() > 1e-3 and np.abs(g[1]).sum() > 1e-3
  np.testing.assert_array_equal(g[2], 0.0)


def test_losses_jit_and_accept_bfloat16_logits():
  got = jax.jit(trades_loss)(LP.astype(jnp.bfloat16), LQ.astype(jnp.bfloat16), Y)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, (LN2 + LN3) / 2 + 6 * (K1 + K2) / 2, rtol=2e-2)
