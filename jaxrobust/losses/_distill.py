"""Robust distillation losses (ARD, IAD-I/II, RSLAD) as pure functions of logits.

Conventions: ``S(x)``/``S(x')`` are the student's logits on the clean and
adversarial batch, ``T(.)`` a teacher's; all float ``[B, C]`` (computed in
float32), labels int ``[B]``. Teacher logits are ALWAYS wrapped in
``stop_gradient`` here (the official code runs teachers with
``requires_grad=False`` / ``no_grad``); student logits are never detached
unless an argument says so, as in the official code.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.losses._kl import cross_entropy, kl_divergence

_sg = jax.lax.stop_gradient


def ard_loss(student_adv_logits: jax.Array, teacher_logits: jax.Array, *,
             alpha: float = 1.0, temperature: float = 30.0, reduction: str = "mean",
             student_logits: jax.Array | None = None,
             labels: jax.Array | None = None) -> jax.Array:
  """ARD: ``alpha * T^2 * KL(softmax(T(x)/T) || softmax(S(x')/T)) + (1-alpha) * CE(S(x), y)``.

  Source: Goldblum et al. 2020, eq. (3); ``goldblum/AdversariallyRobustDistillation:
  main.py`` (``nn.KLDivLoss()``: PyTorch's legacy default reduction, the
  **mean over all B*C elements**, C times smaller than the true batch KL;
  ``reduction='batchmean'`` gives the IAD repo's ``ARD.py`` variant, per-sample
  sum / B, used there with T = 1). Defaults T = 30, alpha = 1 (the CE term is
  then exactly 0 and omitted).

  Gradients: into ``student_adv_logits`` (KL) and, if ``alpha < 1``, into
  ``student_logits`` (CE); none into ``teacher_logits``.

  Args:
    student_adv_logits: ``S(x')``.
    teacher_logits: ``T(x)``, the teacher on the CLEAN batch (eval mode).
    alpha: weight of the distillation term.
    temperature: T; both distributions are softened by it and the KL is
      multiplied by ``T**2``.
    reduction: KL reduction (official ``'mean'``).
    student_logits: ``S(x)``; required when ``alpha != 1``.
    labels: required when ``alpha != 1``.

  Returns:
    float32 scalar.

  Raises:
    ValueError: ``alpha != 1`` without ``student_logits``/``labels``.
  """
  t = temperature
  loss = alpha * t * t * kl_divergence(_sg(teacher_logits).astype(jnp.float32) / t,
                                       student_adv_logits.astype(jnp.float32) / t,
                                       reduction=reduction)
  if alpha != 1.0:
    if student_logits is None or labels is None:
      raise ValueError("ard_loss with alpha != 1 needs student_logits and labels for the "
                       "(1 - alpha) * CE(S(x), y) term")
    loss = loss + (1.0 - alpha) * cross_entropy(student_logits, labels)
  return loss


def iad_trust(teacher_adv_logits: jax.Array, labels: jax.Array, beta: float) -> jax.Array:
  """IAD's per-example trust in the teacher: ``a_i = softmax(T(x'_i))_{y_i} ** beta``.

  Source: ``ZFancy/IAD:IAD-I.py`` (``L.pow(args.beta).item()``: a constant).
  float32 ``[B]`` in [0, 1], ``stop_gradient``-ed.
  """
  probs = jax.nn.softmax(_sg(teacher_adv_logits).astype(jnp.float32), axis=-1)
  p_true = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return _sg(p_true ** beta)


def _per_example_kl(p, q):
  return jnp.sum(kl_divergence(p, q, reduction="none"), axis=-1)


def iad_loss(student_adv_logits: jax.Array, student_logits: jax.Array,
             teacher_logits: jax.Array, teacher_adv_logits: jax.Array, labels: jax.Array, *,
             beta: float = 0.1, alpha: float = 1.0, temperature: float = 1.0,
             introspect=True, natural_teacher_logits: jax.Array | None = None,
             alpha1: float = 0.5, alpha2: float = 0.25,
             detach_clean: bool = False) -> jax.Array:
  """Introspective Adversarial Distillation, IAD-I or (with a natural teacher) IAD-II.

  With ``a_i`` = :func:`iad_trust` (set to 1 while ``introspect`` is False, i.e.
  before epoch ``begin``; the official code initialises its weights to ones
  and skips the introspection term, which is the same thing), ``T`` the
  temperature, ``KL_i(P||Q)`` the per-example KL summed over classes and
  ``mean_i`` the batch mean (the official ``(1/len) * sum(... .sum(dim=1))``):

  IAD-I (``ZFancy/IAD:IAD-I.py``)::

    alpha * T^2 * mean_i KL_i(T(x)/T || S(x')/T)                 # not trust-weighted
    + alpha * mean_i (1 - a_i) KL_i(S(x) || S(x'))                # no temperature
    + (1 - alpha) * CE(S(x), y)                                   # omitted if alpha = 1

  IAD-II (``ZFancy/IAD:IAD-II.py``; pass ``natural_teacher_logits``)::

    (1 - alpha1 - alpha2) * CE(S(x'), y)
    + alpha1 * T^2 * [ mean_i a_i KL_i(T(.)/T || S(x')/T) + mean_i (1 - a_i) KL_i(S(x) || S(x')) ]
    + alpha2 * T^2 * mean_i KL_i(T_nat(.)/T || S(x')/T)

  In IAD-II the official code feeds BOTH teachers the adversarial batch
  ``x'`` (``teacher_net(pert_inputs)``), so pass ``teacher_logits =
  teacher_adv_logits = T(x')`` there; IAD-I's distillation target is the
  teacher on the clean batch ``T(x)``.

  Gradients: into ``student_adv_logits`` everywhere; into ``student_logits``
  through the introspection target ``S(x)`` (NOT detached in the official
  code; ``detach_clean=True`` is a variant) and, in IAD-I with ``alpha < 1``,
  the CE; none into any teacher logits or the trust weights.

  Args:
    student_adv_logits: ``S(x')``.
    student_logits: ``S(x)``.
    teacher_logits: the distillation target (``T(x)`` in IAD-I, ``T(x')`` in
      IAD-II).
    teacher_adv_logits: ``T(x')`` for the trust weights.
    labels: int ``[B]``.
    beta: trust exponent (0.1).
    alpha: IAD-I weight (1.0).
    temperature: T (1.0).
    introspect: bool or traced bool scalar: epoch >= begin.
    natural_teacher_logits: ``T_nat(x')`` of a naturally trained teacher;
      switches to IAD-II.
    alpha1: IAD-II weight of the (trust-weighted) robust-teacher term (0.5).
    alpha2: IAD-II weight of the natural-teacher term (0.25).
    detach_clean: ``stop_gradient`` on ``S(x)`` in the introspection term.

  Returns:
    float32 scalar.
  """
  t = temperature
  s_adv = student_adv_logits.astype(jnp.float32)
  s_clean = student_logits.astype(jnp.float32)
  a = jnp.where(introspect, iad_trust(teacher_adv_logits, labels, beta), 1.0)
  kl_teacher = _per_example_kl(_sg(teacher_logits).astype(jnp.float32) / t, s_adv / t)
  intro = _per_example_kl(_sg(s_clean) if detach_clean else s_clean, s_adv)
  intro = jnp.mean((1.0 - a) * intro)
  if natural_teacher_logits is None:
    loss = alpha * t * t * jnp.mean(kl_teacher) + alpha * intro
    if alpha != 1.0:
      loss = loss + (1.0 - alpha) * cross_entropy(s_clean, labels)
    return loss
  kl_nat = _per_example_kl(_sg(natural_teacher_logits).astype(jnp.float32) / t, s_adv / t)
  return ((1.0 - alpha1 - alpha2) * cross_entropy(s_adv, labels)
          + alpha1 * t * t * (jnp.mean(a * kl_teacher) + intro)
          + alpha2 * t * t * jnp.mean(kl_nat))


def rslad_loss(student_adv_logits: jax.Array, student_logits: jax.Array,
               teacher_logits: jax.Array, *, alpha: float = 5.0 / 6.0,
               reduction: str = "mean", target_eps: float = 1e-5) -> jax.Array:
  """RSLAD: ``alpha * KL(T(x) || S(x')) + (1 - alpha) * KL(T(x) || S(x))``, no hard labels.

  Source: Zi et al. 2021, eq. (6); ``zibojia/RSLAD:resnet18_rslad_cifar10.py``:
  ``kl_loss(a, b) = b * (log(b + 1e-5) - a)`` element-wise with ``a =
  log_softmax(S)``, ``b = softmax(T(x))`` (the teacher on the CLEAN batch for
  both terms, temperature 1), reduced by ``torch.mean`` over all B*C elements
  (``reduction='mean'``: C times smaller than the true KL; ``'batchmean'``
  gives sum / B), weights 5/6 and 1/6.

  Gradients: into both student logits; none into ``teacher_logits``.

  Args:
    student_adv_logits: ``S(x')``.
    student_logits: ``S(x)``.
    teacher_logits: ``T(x)``.
    alpha: weight of the adversarial term (5/6).
    reduction: ``'mean'`` (official) or ``'batchmean'``/``'sum'``.
    target_eps: the ``1e-5`` inside ``log(b + 1e-5)``; 0 for the exact KL.

  Returns:
    float32 scalar.
  """
  t = _sg(teacher_logits).astype(jnp.float32)
  kl_adv = kl_divergence(t, student_adv_logits, reduction=reduction, p_eps=target_eps)
  kl_nat = kl_divergence(t, student_logits, reduction=reduction, p_eps=target_eps)
  return alpha * kl_adv + (1.0 - alpha) * kl_nat
