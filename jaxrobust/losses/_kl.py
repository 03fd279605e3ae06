"""One KL divergence with every reduction the robust-training literature uses.

The official PyTorch code bases differ in how they reduce the element-wise KL
``P_bc (log P_bc - log Q_bc)`` of a ``[B, C]`` batch, and the differences are
not small (pytorch/pytorch#2259, the RSLAD README's x10 for CIFAR-100):

============== ============================ =====================================
reduction      value                        used by (``torch`` spelling)
============== ============================ =====================================
``batchmean``  ``sum / B`` (true mean KL)   TRADES, TRADES-AWP (``size_average=
                                            False`` then ``/ batch_size``, or
                                            ``reduction='batchmean'``); IAD and
                                            MART (per-sample ``.sum(1)`` / B)
``mean``       ``sum / (B * C)``            ARD (``nn.KLDivLoss()``: legacy
                                            default), RSLAD (``torch.mean``)
``sum``        ``sum``                      TRADES / RSLAD attack objectives
``none``       element-wise ``[B, C]``      building block (MART, IAD weights)
============== ============================ =====================================
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

REDUCTIONS = ("batchmean", "mean", "sum", "none")


def log_probs(logits: jax.Array) -> jax.Array:
  """``log_softmax`` over the last axis, computed in float32 (the one place it is written)."""
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def reduce_elementwise(elementwise: jax.Array, reduction: str) -> jax.Array:
  """Reduces an element-wise ``[B, C]`` loss as ``torch.nn.KLDivLoss`` does.

  Args:
    elementwise: float32 ``[B, C]``.
    reduction: ``'batchmean'`` (sum / B), ``'mean'`` (sum / (B*C)), ``'sum'``
      or ``'none'`` (returned unchanged).

  Returns:
    float32 scalar, or ``[B, C]`` for ``'none'``.

  Raises:
    ValueError: unknown reduction.
  """
  if reduction == "none":
    return elementwise
  if reduction == "sum":
    return jnp.sum(elementwise)
  if reduction == "mean":
    return jnp.mean(elementwise)
  if reduction == "batchmean":
    return jnp.sum(elementwise) / elementwise.shape[0]
  raise ValueError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")


def kl_divergence(p: jax.Array, q: jax.Array, *, reduction: str = "batchmean",
                  from_logits: bool = True, p_eps: float = 0.0,
                  q_eps: float = 0.0) -> jax.Array:
  """``KL(P || Q) = sum_c P_c (log P_c - log Q_c)`` over the last axis, reduced.

  ``P`` is the reference ("target") distribution and ``Q`` the model's, i.e.
  ``kl_divergence(p, q, reduction=r)`` equals PyTorch's
  ``F.kl_div(F.log_softmax(q, 1), F.softmax(p, 1), reduction=r)`` (note the
  swapped argument order of ``F.kl_div(input=log Q, target=P)``). Rows where
  ``P_c`` underflows to 0 contribute 0, as ``torch``'s ``xlogy``.

  Gradients flow into BOTH ``p`` and ``q``; callers ``stop_gradient`` what the
  official code detaches (teacher outputs), nothing else.

  Args:
    p: float ``[B, C]`` logits (``from_logits=True``) or log-probabilities of
      the reference distribution P.
    q: float ``[B, C]`` logits or log-probabilities of Q.
    reduction: one of :data:`REDUCTIONS` (see the module table).
    from_logits: ``p`` and ``q`` are logits (``log_softmax`` is applied) rather
      than normalised log-probabilities.
    p_eps: if > 0, ``log P`` is computed as ``log(P + p_eps)`` (RSLAD's
      ``kl_loss``: ``p_eps=1e-5``).
    q_eps: if > 0, ``log Q`` is computed as ``log(Q + q_eps)`` (MART:
      ``log(adv_probs + 1e-12)``, ``q_eps=1e-12``).

  Returns:
    float32 scalar, or the element-wise ``[B, C]`` terms for ``'none'``.

  Raises:
    ValueError: unknown reduction or mismatched shapes.
  """
  if p.shape != q.shape or p.ndim != 2:
    raise ValueError(f"kl_divergence needs two [B, C] arrays, got {p.shape} and {q.shape}")
  if reduction not in REDUCTIONS:
    raise ValueError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")
  p = p.astype(jnp.float32)
  q = q.astype(jnp.float32)
  log_p = log_probs(p) if from_logits else p
  log_q = log_probs(q) if from_logits else q
  prob_p = jnp.exp(log_p)
  if p_eps:
    log_p = jnp.log(prob_p + p_eps)
  if q_eps:
    log_q = jnp.log(jnp.exp(log_q) + q_eps)
  return reduce_elementwise(prob_p * (log_p - log_q), reduction)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  reduction: str = "mean") -> jax.Array:
  """``-log softmax(logits)_y``: mean over the batch (``F.cross_entropy``) or per example.

  Args:
    logits: float ``[B, C]``.
    labels: int ``[B]``.
    reduction: ``'mean'`` (scalar) or ``'none'`` (float32 ``[B]``).
  """
  logp = log_probs(logits)
  per = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  if reduction == "none":
    return per
  if reduction == "mean":
    return jnp.mean(per)
  raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'none'")


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array,
                              reduction: str = "mean") -> jax.Array:
  """``-sum_c t_c log softmax(logits)_c``: CE against soft targets (Mixup/CutMix labels).

  timm's ``SoftTargetCrossEntropy`` (``timm/loss/cross_entropy.py``), the
  criterion of Mo et al.'s AT branch with Mixup/CutMix (``mo666666/When-
  Adversarial-Training-Meets-Vision-Transformers:train_cifar.py``). With
  one-hot targets it equals :func:`cross_entropy`.

  Args:
    logits: float ``[B, C]``.
    targets: float ``[B, C]``, rows summing to 1 (not checked).
    reduction: ``'mean'`` over the batch (scalar) or ``'none'`` (float32 ``[B]``).

  Raises:
    ValueError: mismatched shapes or an unknown reduction.
  """
  if targets.shape != logits.shape:
    raise ValueError(f"soft targets {targets.shape} do not match logits {logits.shape}")
  per = -jnp.sum(targets.astype(jnp.float32) * log_probs(logits), axis=-1)
  if reduction == "none":
    return per
  if reduction == "mean":
    return jnp.mean(per)
  raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'none'")
