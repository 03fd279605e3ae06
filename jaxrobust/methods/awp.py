"""Adversarial Weight Perturbation (Wu, Xia & Wang 2020) around PGD-AT or TRADES.

Per step, as ``csdongxian/AWP:AT_AWP/{utils_awp.py,train_cifar10.py}`` and
``trades_AWP/{utils_awp.py,train_trades_cifar.py}`` (METHODS 2.4):

1. The base method crafts ``x'`` (``base.perturb``).
2. ``perturb`` then takes ONE proxy ascent step on the base method's robust
   loss at ``x'`` (train-mode BN, as ``proxy.train()``; the proxy's running
   averages are thrown away, as the official separate proxy model's are):
   ``dw = proxy_lr * grad_w L(w)`` (plain SGD on ``-L``). For every conv /
   linear kernel (a ``'kernel'`` leaf with ``ndim > 1``; PyTorch: a
   ``'weight'`` tensor with ``ndim > 1``; BatchNorm scales and biases are
   left alone) the perturbation is rescaled layer-wise relative to the
   weight, ``v_l = gamma * ||w_l|| / (||dw_l|| + 1e-20) * dw_l``, so
   ``||v_l|| = gamma ||w_l||`` (Frobenius norms). ``perturb`` returns
   ``(x', v)``; ``v`` is zero for the other leaves, and everywhere during
   the warm-up (``step < warmup_steps``) or when ``gamma = 0``.
3. ``loss`` evaluates the base loss at ``w + v`` (BN running averages are
   updated by that pass, as the official perturbed model's are).

Why the perturbation is never stored: the official code adds ``v`` to the
weights (``perturb``: ``add_into_weights(diff, coeff=gamma)``),
back-propagates, takes the optimiser step and subtracts ``v`` again
(``restore``), i.e. ``w_new = (w + v - lr * u(g(w + v))) - v = w - lr *
u(g(w + v))`` with ``g`` the gradient at the perturbed point and ``u`` the
optimiser's update (momentum is linear in the gradient). Here ``loss(w) = L_base(w + stop_gradient(v))``,
whose gradient with respect to ``w`` is exactly ``g(w + v)`` (the Jacobian
of ``w -> w + v`` is the identity), and the optimiser updates the
unperturbed ``w``: the same ``w_new``, with nothing to undo. The one term
that sees the weights themselves is PyTorch's coupled weight decay
(``g + wd * (w + v)`` at the perturbed point); ``coupled_weight_decay = wd``
adds ``wd * <v, w>`` to the loss so the gradient gains exactly ``wd * v``
and the trainer's ``wd * w`` completes ``wd * (w + v)`` (the trainer passes
``config.train.weight_decay``).

Official defaults: AT-AWP gamma 0.01, proxy lr 0.01, no warm-up; TRADES-AWP
gamma 0.005, proxy lr 0.1 (the main lr, not scheduled), AWP from the
official epoch 10 on (1-indexed, so 9 warm-up epochs here), the TRADES loss
with its passes in the order adversarial, clean, clean. The proxy lr only
enters through the 1e-20 guard (it cancels in the relative scaling).

Deliberate difference: the Rice et al. / AT_AWP training loop runs one more
train-mode clean forward pass after the update, for logging, which also
updates the running averages; neither ``pgd_at`` nor this method does.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxrobust.errors import ConfigError
from jaxrobust.methods.adversarial import AdversarialTraining
from jaxrobust.methods.registry import (BN_VIEWS, choice, positive, register_method)
from jaxrobust.methods.trades import TRADES_ATTACK, TRADES_SETTINGS, build_trades

AWP_EPS = 1e-20
AWP_BASES = ("pgd_at", "trades")


def is_perturbed_leaf(path, leaf) -> bool:
  """True for conv / linear kernels: a ``'kernel'`` parameter with ``ndim > 1``."""
  names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  names = [n for n in names if n != "value"]
  return bool(names) and names[-1] == "kernel" and leaf.ndim > 1


def relative_weight_perturbation(params, delta, gamma: float):
  """``v_l = gamma * ||w_l|| / (||delta_l|| + 1e-20) * delta_l`` on kernels, 0 elsewhere.

  Source: ``csdongxian/AWP:AT_AWP/utils_awp.py`` (``diff_in_weights`` then
  ``add_into_weights(coeff=gamma)``).

  Args:
    params: weights ``w`` (an ``nnx.State`` / pytree).
    delta: same structure: the proxy's weight change.
    gamma: relative size.

  Returns:
    ``v`` with the structure and dtypes of ``params``.
  """
  def one(path, w, d):
    if not is_perturbed_leaf(path, w):
      return jnp.zeros_like(w)
    w32, d32 = w.astype(jnp.float32), d.astype(jnp.float32)
    scale = gamma * jnp.linalg.norm(w32.ravel()) / (jnp.linalg.norm(d32.ravel()) + AWP_EPS)
    return (scale * d32).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(one, params, delta)


@dataclasses.dataclass(frozen=True)
class AWP:
  """AWP wrapped around ``base`` (an ``AdversarialTraining`` or ``TRADES``).

  Attributes:
    base: the base method (its ``perturb`` crafts ``x'``, its ``loss`` is
      the robust loss).
    gamma: relative perturbation size (0: AWP off).
    proxy_lr: learning rate of the proxy step.
    warmup_steps: optimiser steps before AWP starts (0: from the start; None:
      given in epochs but not resolved, an error once ``step`` is passed).
    coupled_weight_decay: the trainer's coupled weight decay (see module).
  """
  base: Any
  gamma: float = 0.01
  proxy_lr: float = 0.01
  warmup_steps: int | None = 0
  coupled_weight_decay: float = 0.0
  name: str = "awp"

  def _perturbation(self, model, params, batch_stats, x, y, x_adv, rng, frozen):
    def robust_loss(p):
      return self.base.loss(p, batch_stats, model, x, y, x_adv, rng, frozen=frozen)[0]

    grads = jax.grad(robust_loss)(params)
    delta = jax.tree.map(lambda g: self.proxy_lr * g, grads)
    return relative_weight_perturbation(params, delta, self.gamma)

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """``(x_adv, v)``: the base method's ``x'`` and the weight perturbation (params-shaped)."""
    x_adv = self.base.perturb(model, params, batch_stats, x, y, rng, frozen=frozen, step=step)
    x_adv = jax.lax.stop_gradient(x_adv)
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
    if self.gamma == 0:
      return x_adv, zeros()
    key = jax.random.fold_in(rng, 7)
    compute = lambda: self._perturbation(model, params, batch_stats, x, y, x_adv, key,  # noqa
                                         frozen)
    if step is None or self.warmup_steps == 0:
      return x_adv, compute()
    if self.warmup_steps is None:
      raise ValueError("AWP's warm-up is given in epochs but the method was built without "
                       "steps_per_epoch: use method_from_config(..., steps_per_epoch=...)")
    return x_adv, jax.lax.cond(step >= self.warmup_steps, compute, zeros)

  def loss(self, params, batch_stats, model, x, y, aux, rng, frozen=None, step=None):
    """The base loss at ``params + v`` (gradient = the gradient at the perturbed point).

    Metrics and the new running averages are the base method's at ``params + v``.
    """
    x_adv, v = aux
    v = jax.lax.stop_gradient(v)
    perturbed = jax.tree.map(lambda w, d: w + d, params, v)
    loss, (new_bs, metrics) = self.base.loss(perturbed, batch_stats, model, x, y, x_adv, rng,
                                             frozen=frozen, step=step)
    if self.coupled_weight_decay:
      extra = sum(jnp.vdot(d, w) for d, w in zip(jax.tree.leaves(v), jax.tree.leaves(params)))
      loss = loss + self.coupled_weight_decay * extra
    return loss, (new_bs, metrics)


# Official settings per base method: AT-AWP (``AT_AWP/train_cifar10.py``: gamma 0.01, proxy
# lr 0.01, no warm-up, the PGD-AT attack in train-mode BN) and TRADES-AWP
# (``trades_AWP/train_trades_cifar.py``: gamma 0.005, proxy lr 0.1, AWP from epoch 10,
# the TRADES inner max and loss with the passes adversarial, clean, clean).
AWP_OFFICIAL = {
    "pgd_at": dict(awp_base="pgd_at", attack_bn="train", awp_gamma=0.01,
                   awp_warmup_epochs=0.0, proxy_lr=0.01),
    "trades": dict(awp_base="trades", **TRADES_SETTINGS, awp_gamma=0.005,
                   awp_warmup_epochs=9.0, proxy_lr=0.1),
}
AWP_ATTACKS = {
    "pgd_at": dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce",
                   random_start="uniform_radius"),  # attack_pgd: L2 radius U(0, 1) eps.
    "trades": dict(TRADES_ATTACK, step_size=2 / 255),
}


def _awp_settings(given):
  base = given.get("awp_base", "pgd_at")
  if base not in AWP_BASES:
    raise ConfigError(f"config.method.awp_base must be one of {AWP_BASES}, got {base!r}")
  return AWP_OFFICIAL[base]


def build_awp(settings, ctx) -> AWP:
  """:class:`AWP` around the ``awp_base`` method, from resolved settings.

  Raises:
    ConfigError: invalid base, gamma, proxy lr or base settings.
  """
  if choice(settings, "awp_base", AWP_BASES) == "pgd_at":
    base = AdversarialTraining(ctx.attack(settings, ("pgd", "fgsm")),
                               choice(settings, "attack_bn", BN_VIEWS), "pgd_at")
    # attack_bn_updates='official': attack_pgd's passes, its final pass on x_adv, then the
    # loss pass at the perturbed weights (the proxy's own updates are discarded).
    base = ctx.attack_passes_update_bn(
        base, extra_passes=int(settings["attack"]["name"] == "pgd"))
  else:
    base = build_trades(settings, ctx, bn_sequence=("adv", "clean", "clean"))
  return AWP(base, gamma=positive(settings, "awp_gamma", allow_zero=True),
             proxy_lr=positive(settings, "proxy_lr"),
             warmup_steps=ctx.epochs_to_steps(settings["awp_warmup_epochs"]),
             coupled_weight_decay=ctx.weight_decay)


# Random-crop padding: AT_AWP pads the training set with reflect (AT_AWP/utils.py ``pad``),
# trades_AWP uses torchvision's RandomCrop(32, padding=4) (zeros).
register_method("awp", settings=_awp_settings,
                attack=lambda s: AWP_ATTACKS[s["awp_base"]], build=build_awp,
                pad_mode=lambda s: "reflect" if s["awp_base"] == "pgd_at" else "constant",
                doc="adversarial weight perturbation (Wu et al. 2020) around pgd_at or trades")
