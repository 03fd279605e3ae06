"""Rotation self-supervision in adversarial training (Hendrycks et al., NeurIPS 2019).

"Using self-supervised learning can improve model robustness and
uncertainty", Sec. 3; official code ``hendrycks/ss-ood:adversarial/train.py``
and ``adversarial/attacks.py`` (METHODS 2.11 / 2.12). Per step:

* The batch becomes 5B images (:func:`rotation_batch`): ``x`` for the class
  loss, then ``x`` rotated by 0, 90, 180 and 270 degrees (``np.rot90(x, k)``
  over the image axes) with rotation labels ``0, 1, 2, 3``.
* One PGD (L-inf, eps 8/255, 10 steps of 2/255, uniform start) on all 5B
  maximises ``(CE_sum(f(x'_1..B), y) + CE_sum(g(x'_B+1..5B), r) / 8)`` with
  BatchNorm in train mode (:func:`joint_pgd`); ``g`` is the rotation head, a
  4-way linear layer on the penultimate features (the model's
  ``rotation_head``, ``config.model.aux_heads=('rotation',)``, see
  :func:`jaxrobust.train.builders.add_aux_heads`).
* Loss, one train-mode pass on the 5B adversarial images:
  ``CE(f(x'_1..B), y) + 0.5 * CE(g(x'_B+1..5B), r)`` (batch means).

Faithful details: the random start is not clipped to [0, 1] before the first
gradient (the official attack clips after each step); attack passes never
update the BatchNorm running averages (the library's policy; PyTorch updates
them in every train-mode attack pass). The official run trains WRN-40-2 for
100 epochs, cosine lr 0.1, Nesterov momentum, weight decay 5e-4 (also on the
head), inputs scaled to [-1, 1] inside the network.

PRNG: the attack's start uses ``fold_in(rng, 0)``, the model's random parts
in the loss ``fold_in(rng, 1)`` (none in the attack passes).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrobust.errors import ConfigError
from jaxrobust.methods.base import accuracy_sum
from jaxrobust.methods.registry import BN_VIEWS, choice, positive, register_method

NUM_ROTATIONS = 4
HEAD = "rotation_head"  # the model attribute (config.model.aux_heads=('rotation',)).


def rotation_batch(x):
  """``x`` then its four rotations, and the rotation labels.

  Args:
    x: float32 ``[B, H, W, C]`` with ``H == W``.

  Returns:
    ``(x5, r)``: float32 ``[5B, H, W, C]`` ``concat(x, rot0(x), rot90(x),
    rot180(x), rot270(x))`` (``rot_k`` = ``np.rot90(x, k, axes=(1, 2))``,
    counter-clockwise, as the official code on NCHW axes (2, 3)) and int32
    ``[4B]`` labels ``r`` of the last 4B rows (``k``, each repeated B times).

  Raises:
    ValueError: non-square images (a rotated batch would change shape).
  """
  if x.shape[1] != x.shape[2]:
    raise ValueError(f"rotation self-supervision needs square images, got {x.shape[1:3]}")
  rows = [x] + [jnp.rot90(x, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)]
  labels = jnp.repeat(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), x.shape[0])
  return jnp.concatenate(rows, 0), labels


def heads_forward(model, params, batch_stats, x, *, train: bool, key=None):
  """``(class logits [N, K], rotation logits [N, 4], new batch_stats)`` of one pass.

  The rotation head is applied to the penultimate features of the same pass
  (float32 logits). Eval mode returns ``batch_stats`` unchanged.

  Raises:
    ConfigError: the model has no rotation head.
  """
  m = nnx.merge(model.graphdef, params, batch_stats, copy=True)
  if not hasattr(m, HEAD):
    raise ConfigError("rotation_ssl needs the model's rotation head: set "
                      "config.model.aux_heads=('rotation',)")
  logits, features = m(x, train=train, key=key, return_features=True)
  rot = getattr(m, HEAD)(features).astype(jnp.float32)
  return logits, rot, (nnx.state(m, nnx.BatchStat) if train else batch_stats)


def _ce_sum(logits, y):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.sum(jnp.take_along_axis(logp, y[:, None], -1))


def joint_objective(model, params, batch_stats, x5, y, r, rotation_weight: float,
                    bn: str = "train"):
  """``CE_sum(class, first B) + rotation_weight * CE_sum(rotation, last 4B)`` at ``x5``.

  The attack's objective (official ``PGD.forward``; weight 1/8). ``x5`` float32
  ``[5B, H, W, C]``, ``y`` int32 ``[B]``, ``r`` int32 ``[4B]``. Returns a
  float32 scalar.
  """
  b = y.shape[0]
  logits, rot, _ = heads_forward(model, params, batch_stats, x5, train=bn == "train")
  return _ce_sum(logits[:b], y) + rotation_weight * _ce_sum(rot[b:], r)


def joint_pgd(model, params, batch_stats, key, x5, y, r, *, eps: float, step_size: float,
              num_steps: int, rotation_weight: float, bn: str = "train"):
  """L-inf PGD on :func:`joint_objective` (official ``adversarial/attacks.py`` ``PGD``).

  Start ``x5 + U(-eps, eps)`` (not clipped), then ``num_steps`` times: ascend
  ``step_size * sign(grad)``, project onto the eps-ball of ``x5`` and clip to
  [0, 1]. Returns float32 ``[5B, H, W, C]`` (``stop_gradient``-ed).
  """
  x5 = jax.lax.stop_gradient(x5)
  grad = jax.grad(lambda xa: joint_objective(model, params, batch_stats, xa, y, r,
                                             rotation_weight, bn))
  start = x5 + jax.random.uniform(key, x5.shape, x5.dtype, -eps, eps)

  def body(_, xa):
    xa = xa + step_size * jnp.sign(grad(xa))
    return jnp.clip(jnp.clip(xa, x5 - eps, x5 + eps), 0.0, 1.0)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, num_steps, body, start))


@dataclasses.dataclass(frozen=True)
class RotationSSL:
  """Adversarial training with the auxiliary rotation loss; see the module docstring.

  Attributes:
    eps, step_size, num_steps: the L-inf PGD on the joint objective (pixel units).
    rotation_weight: weight of the rotation CE in the loss (0.5).
    attack_rotation_weight: weight of the summed rotation CE in the attack (1/8).
    attack_bn: BatchNorm view of the attack (``'train'``, officially).
  """
  eps: float
  step_size: float
  num_steps: int
  rotation_weight: float = 0.5
  attack_rotation_weight: float = 0.125
  attack_bn: str = "train"
  name: str = "rotation_ssl"
  model_heads: tuple = ("rotation",)

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """float32 ``[5B, H, W, C]``: the adversarial :func:`rotation_batch` of ``x``."""
    del frozen, step
    x5, r = rotation_batch(x)
    return joint_pgd(model, params, batch_stats, jax.random.fold_in(rng, 0), x5, y, r,
                     eps=self.eps, step_size=self.step_size, num_steps=self.num_steps,
                     rotation_weight=self.attack_rotation_weight, bn=self.attack_bn)

  def loss(self, params, batch_stats, model, x, y, x5_adv, rng, frozen=None, step=None):
    """``CE(class, first B) + rotation_weight * CE(rotation, last 4B)``, one 5B train pass.

    Returns ``(loss, (batch_stats, sums))``; ``sums``: the loss, the class
    accuracy of the first B rows (``adv_accuracy``) and the rotation accuracy
    (``rot_accuracy``, the mean over the 4B rows), each times B.
    """
    del frozen, step
    b = y.shape[0]
    r = jnp.repeat(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), x.shape[0])
    logits, rot, new_bs = heads_forward(model, params, batch_stats, x5_adv, train=True,
                                        key=jax.random.fold_in(rng, 1))
    loss = _ce_sum(logits[:b], y) / b + self.rotation_weight * _ce_sum(rot[b:], r) / (4 * b)
    return loss, (new_bs, {"loss": loss * b, "adv_accuracy": accuracy_sum(logits[:b], y),
                           "rot_accuracy": accuracy_sum(rot[b:], r) / NUM_ROTATIONS})


def build_rotation(s, ctx) -> RotationSSL:
  """:class:`RotationSSL` from resolved settings.

  Raises:
    ConfigError: an attack other than L-inf PGD with CE loss and uniform start,
      or a negative weight.
  """
  ctx.attack(s, ("pgd",))  # validates the attack config (eps set, known keys).
  a = {k: v for k, v in dict(s["attack"]).items() if v is not None}
  if (a.get("norm", "linf"), a.get("loss", "ce"), a.get("random_start", "uniform")) != (
      "linf", "ce", "uniform"):
    raise ConfigError(f"rotation_ssl runs its own L-inf PGD (CE, uniform start) on the joint "
                      f"objective: set config.method.attack norm='linf', loss='ce', "
                      f"random_start='uniform' (got {a})")
  return RotationSSL(eps=float(a["eps"]), step_size=float(a["step_size"]),
                     num_steps=int(a["num_steps"]),
                     rotation_weight=positive(s, "rotation_weight", allow_zero=True),
                     attack_rotation_weight=positive(s, "attack_rotation_weight",
                                                     allow_zero=True),
                     attack_bn=choice(s, "attack_bn", BN_VIEWS))


# Official settings (hendrycks/ss-ood:adversarial/train.py, attacks.py): PGD-10, 2/255,
# uniform start, train-mode BN, eps 8/255 (config.eps); loss weight 0.5, attack weight 1/8.
register_method(
    "rotation_ssl",
    settings=dict(rotation_weight=0.5, attack_rotation_weight=0.125, attack_bn="train"),
    attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce", random_start="uniform"),
    build=build_rotation,
    doc="adversarial training + rotation self-supervision (Hendrycks et al. 2019)")
