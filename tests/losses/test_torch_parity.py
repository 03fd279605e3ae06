"""Parity with the official PyTorch expressions: values AND gradients of every logit input.

Each reference below restates the official loss in ``torch`` (paraphrased from
the cited file; teacher outputs are leaves without ``requires_grad``, as the
official ``requires_grad=False`` teachers), on random logits. Skipped when
PyTorch is not installed.
"""
import jax
import numpy as np
import pytest

from jaxrobust.losses import ard_loss, iad_loss, mart_loss, rslad_loss, trades_loss

torch = pytest.importorskip("torch")
F = torch.nn.functional

B, C = 6, 5
RNG = np.random.default_rng(0)
LOGITS = [RNG.normal(size=(B, C)).astype(np.float32) * 2 for _ in range(5)]
LABELS = RNG.integers(0, C, B)


def _torch_inputs(n_grad):
  ts = [torch.tensor(a, dtype=torch.float64, requires_grad=i < n_grad)
        for i, a in enumerate(LOGITS)]
  return ts, torch.tensor(LABELS)


def _check(jax_fn, torch_fn, n_grad, n_inputs):
  ts, y = _torch_inputs(n_grad)
  ref = torch_fn(*ts[:n_inputs], y)
  ref.backward()
  got, grads = jax.value_and_grad(jax_fn, argnums=tuple(range(n_inputs)))(
      *LOGITS[:n_inputs], LABELS)
  np.testing.assert_allclose(got, ref.item(), rtol=2e-5, atol=1e-6)
  for i in range(n_inputs):
    want = ts[i].grad.numpy() if i < n_grad else np.zeros((B, C))
    np.testing.assert_allclose(grads[i], want, rtol=2e-4, atol=2e-6)


def test_trades_matches_yaodongyu_trades():
  def ref(clean, adv, y):  # trades.py: CE + beta * (1/B) * KLDivLoss(sum)(log p', p)
    kl = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(adv, 1), F.softmax(clean, 1))
    return F.cross_entropy(clean, y) + 6.0 * kl / B
  _check(lambda a, b, y: trades_loss(a, b, y, beta=6.0), ref, 2, 2)


def test_mart_matches_yisenwang_mart():
  def ref(clean, adv, y):  # mart.py
    adv_p = F.softmax(adv, 1)
    top2 = torch.argsort(adv_p, 1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - adv_p + 1e-12), wrong)
    nat_p = F.softmax(clean, 1)
    p_y = torch.gather(nat_p, 1, y[:, None]).squeeze()
    kl = torch.nn.KLDivLoss(reduction="none")(torch.log(adv_p + 1e-12), nat_p).sum(1)
    return bce + 6.0 * torch.sum(kl * (1.0000001 - p_y)) / B
  _check(lambda a, b, y: mart_loss(a, b, y, beta=6.0), ref, 2, 2)


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_ard_matches_goldblum_ard(alpha):
  t = 30.0

  def ref(adv, teacher, clean, y):  # main.py: nn.KLDivLoss() (mean over B*C), T = 30
    kl = torch.nn.KLDivLoss(reduction="mean")(F.log_softmax(adv / t, 1),
                                              F.softmax(teacher / t, 1))
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(clean, y)

  def ours(adv, teacher, clean, y):
    return ard_loss(adv, teacher, alpha=alpha, temperature=t, student_logits=clean, labels=y)

  ts, y = _torch_inputs(3)
  ts[1].requires_grad_(False)  # the teacher
  out = ref(ts[0], ts[1], ts[2], y)
  out.backward()
  got, g = jax.value_and_grad(ours, argnums=(0, 1, 2))(*LOGITS[:3], LABELS)
  np.testing.assert_allclose(got, out.item(), rtol=2e-5)
  np.testing.assert_allclose(g[0], ts[0].grad.numpy(), rtol=2e-4, atol=1e-7)
  np.testing.assert_array_equal(g[1], 0.0)
  want_clean = ts[2].grad.numpy() if ts[2].grad is not None else 0.0
  np.testing.assert_allclose(g[2], want_clean, rtol=2e-4, atol=1e-7)


def _iad_ref(adv, clean, teacher, guide, y, introspect, natural=None, beta=0.1, t=1.0):
  kl = torch.nn.KLDivLoss(reduction="none")
  a = torch.ones(B, dtype=torch.float64)
  if introspect:
    a = F.softmax(guide, 1)[torch.arange(B), y].detach() ** beta
  kl_t = kl(F.log_softmax(adv / t, 1), F.softmax(teacher / t, 1)).sum(1)
  intro = kl(F.log_softmax(adv, 1), F.softmax(clean, 1)).sum(1) * (1 - a)
  if natural is None:  # IAD-I.py, alpha = 1
    return t * t * kl_t.sum() / B + (intro.sum() / B if introspect else 0.0)
  kl_n = kl(F.log_softmax(adv / t, 1), F.softmax(natural / t, 1)).sum(1)
  return (0.25 * F.cross_entropy(adv, y)  # IAD-II.py, alpha1 = .5, alpha2 = .25
          + 0.5 * t * t * ((kl_t * a).sum() / B + (intro.sum() / B if introspect else 0.0))
          + 0.25 * t * t * kl_n.sum() / B)


@pytest.mark.parametrize("introspect", [True, False])
@pytest.mark.parametrize("two", [False, True])
def test_iad_matches_zfancy_iad(introspect, two):
  ts, y = _torch_inputs(2)  # student adv, student clean; the rest are teachers.
  nat = ts[4] if two else None
  out = _iad_ref(ts[0], ts[1], ts[3] if two else ts[2], ts[3], y, introspect, nat)
  out.backward()

  def ours(adv, clean, teacher, guide, natural):
    return iad_loss(adv, clean, guide if two else teacher, guide, LABELS, beta=0.1,
                    introspect=introspect, natural_teacher_logits=natural if two else None)

  got, g = jax.value_and_grad(ours, argnums=(0, 1, 2, 3, 4))(*LOGITS)
  np.testing.assert_allclose(got, out.item(), rtol=2e-5)
  np.testing.assert_allclose(g[0], ts[0].grad.numpy(), rtol=2e-4, atol=1e-7)
  want_clean = ts[1].grad.numpy() if ts[1].grad is not None else 0.0
  np.testing.assert_allclose(g[1], want_clean, rtol=2e-4, atol=1e-7)
  for i in (2, 3, 4):
    np.testing.assert_array_equal(g[i], 0.0)


def test_rslad_matches_zibojia_rslad():
  def ref(adv, clean, teacher, y):  # resnet18_rslad_cifar10.py
    del y
    p_t = F.softmax(teacher, 1)

    def kl_loss(log_s):
      return (-log_s * p_t + torch.log(p_t + 1e-5) * p_t).mean()
    return 5 / 6 * kl_loss(F.log_softmax(adv, 1)) + 1 / 6 * kl_loss(F.log_softmax(clean, 1))
  _check(lambda a, c, t, y: rslad_loss(a, c, t), ref, 2, 3)
