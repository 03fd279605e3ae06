"""RegMixup (Pinto et al., NeurIPS 2022): CE on the clean batch plus mixup as a regulariser.

Per step, as ``FrancescoPinto/RegMixup:models/regmixup.py`` and
``models/regularizers/mixup.py`` (METHODS 2.11):

* One ``lam ~ Beta(alpha, beta)`` per batch (``lam = 1`` when ``alpha`` or
  ``beta`` is 0) and one random permutation ``pi`` of the batch;
  ``x_mix = lam x + (1 - lam) x[pi]``.
* The batch becomes ``concat(x, x_mix)`` (2B images, ONE train-mode forward
  pass, so BatchNorm normalises with the statistics of all 2B), and the loss
  is the official ``lam CE(f, y_a) + (1 - lam) CE(f, y_b)`` averaged over the
  2B rows, with ``y_a = concat(y, y)`` and ``y_b = concat(y, y[pi])``. That is
  ``(CE(f(x), y) + eta * CE_mix) / 2`` with ``CE_mix = lam CE(f(x_mix), y) +
  (1 - lam) CE(f(x_mix), y[pi])`` (batch means) and ``eta = 1``: the paper's
  Eq. (3), ``CE + eta CE_mix``, up to the factor 1/2 of the 2B mean (a learning
  rate scale). ``eta`` is kept as an option.
* ``alpha = beta = 20`` for CIFAR-10 (10 for CIFAR-100), ``commands.sh``;
  350 epochs, lr 0.1, batch 128 there.

``regmixup_at`` is OUR OWN adversarial variant (the paper has none): the
configured attack (PGD-AT's by default: PGD-10, 2/255, uniform start,
train-mode BN, on the CE of the clean batch) crafts ``x_adv``, and the RegMixup
loss is taken on ``concat(x_adv, mix(x_adv))``. Not a published method: name
it so when reporting.

PRNG: the attack uses ``fold_in(rng, 0)`` (:func:`attack_in_view`), the
model's random parts ``fold_in(rng, 1)``, the mixup draw ``fold_in(rng, 2)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxrobust.methods.base import accuracy_sum, attack_in_view
from jaxrobust.methods.registry import BN_VIEWS, choice, positive, register_method

MIX_KEY = 2  # fold_in index of the mixup draw (0: attack, 1: dropout).


def regmixup_batch(key, x, y, alpha: float, beta: float):
  """The RegMixup batch: the clean rows, then their mixup.

  Args:
    key: PRNG key of the draw (``lam``, then the permutation).
    x: float32 ``[B, H, W, C]`` images in [0, 1] (clean, or ``x_adv``).
    y: int32 ``[B]`` labels.
    alpha, beta: the Beta distribution of ``lam`` (official: ``np.random.beta(
      alpha, beta)``); ``lam = 1`` when either is <= 0.

  Returns:
    ``(x2, y_a, y_b, lam)``: float32 ``[2B, H, W, C]`` ``concat(x, x_mix)``,
    int32 ``[2B]`` ``concat(y, y)`` and ``concat(y, y[pi])``, float32 scalar
    ``lam``.
  """
  k_lam, k_perm = jax.random.split(key)
  if alpha > 0 and beta > 0:
    lam = jax.random.beta(k_lam, alpha, beta).astype(jnp.float32)
  else:
    lam = jnp.float32(1.0)
  perm = jax.random.permutation(k_perm, x.shape[0])
  x_mix = lam * x + (1.0 - lam) * x[perm]
  return (jnp.concatenate([x, x_mix], 0), jnp.concatenate([y, y], 0),
          jnp.concatenate([y, y[perm]], 0), lam)


def regmixup_loss(logits, y_a, y_b, lam, eta: float = 1.0):
  """``(CE(clean) + eta * CE_mix) / 2`` over the 2B rows of :func:`regmixup_batch`.

  ``logits`` float32 ``[2B, K]`` (clean rows first). With ``eta = 1`` this is
  the official ``regmixup_criterion``: ``lam CE(logits, y_a) + (1 - lam)
  CE(logits, y_b)``, each CE the mean over the 2B rows. Returns a float32
  scalar.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll_a = -jnp.take_along_axis(logp, y_a[:, None], -1)[:, 0]
  nll_b = -jnp.take_along_axis(logp, y_b[:, None], -1)[:, 0]
  per_row = lam * nll_a + (1.0 - lam) * nll_b  # the clean rows have y_a == y_b.
  b = logits.shape[0] // 2
  return (jnp.mean(per_row[:b]) + eta * jnp.mean(per_row[b:])) / 2.0


@dataclasses.dataclass(frozen=True)
class RegMixup:
  """RegMixup training (``attack=None``) or our adversarial variant ``regmixup_at``.

  Attributes:
    attack: None (RegMixup on clean images) or ``attack(logits_fn, rng, x, y)
      -> x_adv`` (``regmixup_at``: RegMixup on ``x_adv``).
    alpha, beta: Beta(alpha, beta) of the mixing weight (20, 20 on CIFAR-10).
    eta: weight of the mixup term (1: the official loss).
    attack_bn: BatchNorm view of the attack (``'train'``, as PGD-AT).
    name: ``'regmixup'`` or ``'regmixup_at'``.
  """
  attack: Callable | None = None
  alpha: float = 20.0
  beta: float = 20.0
  eta: float = 1.0
  attack_bn: str = "train"
  name: str = "regmixup"

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """``x`` (RegMixup) or the attack's float32 ``x_adv`` (``regmixup_at``)."""
    del frozen, step
    if self.attack is None:
      return x
    return attack_in_view(self.attack, model, params, batch_stats, x, y, rng, bn=self.attack_bn)

  def loss(self, params, batch_stats, model, x, y, x_train, rng, frozen=None, step=None):
    """:func:`regmixup_loss` of one train-mode pass on the 2B batch of ``x_train``.

    Returns ``(loss, (batch_stats, sums))``; ``sums`` has the loss, the
    accuracy of the first B rows (``accuracy`` or ``adv_accuracy``) and the
    mixing weight (``mix_lambda``), each times B.
    """
    del x, frozen, step
    x2, y_a, y_b, lam = regmixup_batch(jax.random.fold_in(rng, MIX_KEY), x_train, y,
                                       self.alpha, self.beta)
    logits, new_bs = model.apply(params, batch_stats, x2, train=True,
                                 key=jax.random.fold_in(rng, 1))
    loss = regmixup_loss(logits, y_a, y_b, lam, self.eta)
    n = y.shape[0]
    acc = "accuracy" if self.attack is None else "adv_accuracy"
    return loss, (new_bs, {"loss": loss * n, acc: accuracy_sum(logits[:n], y),
                           "mix_lambda": lam * n})


def _settings(s) -> dict:
  """Validated alpha, beta, eta (ConfigError naming the key)."""
  return dict(alpha=positive(s, "alpha", allow_zero=True),
              beta=positive(s, "beta", allow_zero=True),
              eta=positive(s, "eta", allow_zero=True))


# Official CIFAR-10 settings (commands.sh: --mixup_alpha 20 --mixup_beta 20); CIFAR-100: 10.
register_method(
    "regmixup", settings=dict(alpha=20.0, beta=20.0, eta=1.0),
    build=lambda s, ctx: RegMixup(None, **_settings(s), name="regmixup"),
    doc="RegMixup (Pinto et al. 2022): CE on clean + mixup, one pass over 2B")
# Our own design (no published adversarial RegMixup): PGD-AT's attack, RegMixup on x_adv.
register_method(
    "regmixup_at", settings=dict(alpha=20.0, beta=20.0, eta=1.0, attack_bn="train"),
    attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce", random_start="uniform"),
    build=lambda s, ctx: RegMixup(ctx.attack(s, ("pgd", "fgsm")), **_settings(s),
                                  attack_bn=choice(s, "attack_bn", BN_VIEWS),
                                  name="regmixup_at"),
    doc="RegMixup on PGD-AT's adversarial examples (jaxrobust's own variant, not published)")
