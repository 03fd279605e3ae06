"""Per-example attack objectives. Sign convention: the attacker MAXIMISES them.

Every function maps float32 logits ``[B, K]`` (and labels int ``[B]`` or a
reference) to float32 ``[B]``. A targeted attack maximises the negated loss
towards the target label (see :func:`jaxrobust.attacks.pgd`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.losses import cross_entropy, kl_divergence, soft_target_cross_entropy

_BIG = 1e4  # masks the true class out of a max (fp16/bf16-safe, unlike 1e10).


def ce_loss(logits, labels):
  """Cross-entropy ``-log softmax(z)_y``: float32 ``[B]``.

  :func:`jaxrobust.losses.cross_entropy` with ``reduction='none'``; float
  ``[B, K]`` soft targets (Mixup/CutMix) give the soft-target CE
  ``-sum_k t_k log softmax(z)_k``
  (:func:`jaxrobust.losses.soft_target_cross_entropy`).
  """
  if labels.ndim == 2:
    return soft_target_cross_entropy(logits, labels, reduction="none")
  return cross_entropy(logits, labels, reduction="none")


def _true_and_best_other(logits, labels):
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  z_y = jnp.sum(onehot * logits, axis=-1)
  z_other = jnp.max(logits - _BIG * onehot, axis=-1)
  return z_y, z_other


def margin_loss(logits, labels):
  """Margin ``max_{j != y} z_j - z_y`` (DeepMind ``untargeted_margin``)."""
  z_y, z_o = _true_and_best_other(logits, labels)
  return z_o - z_y


def margin_floor_loss(logits, labels, floor: float = 10.0):
  """The margin floored at ``-floor``: ``max(max_{j != y} z_j - z_y, -10)``.

  The "CW" loss of Mo et al.'s evaluation (``mo666666/When-Adversarial-
  Training-Meets-Vision-Transformers:pgd.py``, ``CW_loss``, threshold 10):
  NOT the CW hinge of :func:`cw_loss` (capped above at 0, kappa 50). Its
  gradient vanishes where the true class leads by more than 10, so a PGD
  step does not move such a point.
  """
  return jnp.maximum(margin_loss(logits, labels), -floor)


def cw_loss(logits, labels, kappa: float = 50.0):
  """Carlini-Wagner hinge ``-relu(z_y - max_{j != y} z_j + kappa)``.

  The CW-inf evaluation loss of ``ZFancy/IAD:attack_generator.py`` (kappa=50)
  and RSLAD's table; maximal (0) once the margin exceeds ``kappa``.
  """
  z_y, z_o = _true_and_best_other(logits, labels)
  return -jax.nn.relu(z_y - z_o + kappa)


def kl_loss(logits, ref_logits):
  """``KL(softmax(ref) || softmax(z))`` summed over classes: float32 ``[B]``.

  The TRADES inner objective (``yaodongyu/TRADES:trades.py``) with
  ``ref_logits`` the clean logits (treated as constants):
  :func:`jaxrobust.losses.kl_divergence` summed over classes only.
  """
  return jnp.sum(kl_divergence(jax.lax.stop_gradient(ref_logits), logits, reduction="none"),
                 axis=-1)


def dlr_loss(logits, labels):
  """Difference of logits ratio (Croce & Hein 2020, eq. 5).

  ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi`` the
  logits sorted in decreasing order. Needs K >= 3.
  """
  logits = logits.astype(jnp.float32)
  z_sorted = jnp.sort(logits, axis=-1)[:, ::-1]
  z_y, z_o = _true_and_best_other(logits, labels)
  return -(z_y - z_o) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


def dlr_targeted_loss(logits, labels, targets):
  """Targeted DLR (AutoAttack APGD-T): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12)``.

  Needs K >= 4. Maximised by the attacker (it raises ``z_t`` above ``z_y``).
  """
  logits = logits.astype(jnp.float32)
  z_sorted = jnp.sort(logits, axis=-1)[:, ::-1]
  z_y = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
  z_t = jnp.take_along_axis(logits, targets[:, None], -1)[:, 0]
  return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


LOSSES = {"ce": ce_loss, "cw": cw_loss, "margin": margin_loss, "kl": kl_loss,
          "dlr": dlr_loss, "margin_floor": margin_floor_loss}
