"""What a training method is: an optional input perturbation and a loss.

A method is the only place that knows which BatchNorm view each branch uses.
The trainer calls, inside one jitted step::

    aux = method.perturb(model, params, batch_stats, x, y, rng, frozen=..., step=...)  # no grad
    loss, (batch_stats, metrics) = grad(method.loss)(
        params, batch_stats, model, x, y, aux, rng, frozen=..., step=...)              # grad

``model`` is a :class:`ModelFns` that evaluates the NNX graph functionally;
``aux`` is whatever ``perturb`` returns (usually ``x_adv``; a pytree, e.g.
``(x_adv, weight_perturbation)`` for AWP); ``frozen`` is ``TrainState.frozen``
(read-only inputs such as a teacher's weights, or None); ``step`` is the int32
optimiser step (``TrainState.step``; methods with epoch-dependent behaviour
compare it with a step computed from ``steps_per_epoch``; None when a method is
called outside the trainer, which means "schedule fully active").
``metrics`` are per-step sums (the trainer divides by the example count).

BatchNorm running averages: by default attack passes never update them (see
:mod:`jaxrobust.methods.adversarial`). A loss that runs several train-mode
passes uses :func:`train_passes` and :func:`replay_bn_updates` to apply the
official code's exact sequence of running-average updates (e.g. TRADES's
clean, adversarial, clean) without re-running passes whose input repeats.
With ``config.train.attack_bn_updates='official'`` (the default) a method whose
attack runs in the train view is wrapped in :class:`AttackBNUpdates`: every forward pass
of the attack updates the running averages first, in order, as PyTorch's
train-mode attack does (:func:`attack_bn_updates`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxrobust.errors import ConfigError

from jaxrobust.models.functional import ModelFns  # noqa: F401  (re-exported)
from jaxrobust.types import is_stochastic


def train_passes(model: ModelFns, params, batch_stats, inputs: Mapping[str, jax.Array],
                 key) -> tuple[dict, dict]:
  """Train-mode forward passes, each from the same ``batch_stats``.

  In train mode the logits depend only on the weights and the batch (BatchNorm
  normalises with batch statistics), not on the running averages, so passes
  started from the same running averages give exactly the logits of passes
  run one after another; :func:`replay_bn_updates` then composes the updates.

  Args:
    model: the student's :class:`ModelFns`.
    params, batch_stats: its weights and running averages.
    inputs: name -> float32 ``[B, H, W, C]`` batch (e.g. ``{'clean': x,
      'adv': x_adv}``).
    key: PRNG key; pass ``i`` (in ``inputs`` order) uses ``fold_in(key, i + 1)``
      for dropout.

  Returns:
    ``(logits, stats)``: name -> float32 ``[B, K]`` logits, and name -> the
    running averages after ONE update with that batch from ``batch_stats``.
  """
  logits, stats = {}, {}
  for i, (name, x) in enumerate(inputs.items()):
    logits[name], stats[name] = model.apply(params, batch_stats, x, train=True,
                                            key=jax.random.fold_in(key, i + 1))
  return logits, stats


def replay_bn_updates(batch_stats, stats: Mapping[str, Any], sequence: Sequence[str],
                      momentum: float | None):
  """The running averages after train-mode passes on the batches ``sequence``, in order.

  One pass on batch ``b`` maps ``r -> m r + (1 - m) mu_b`` where ``mu_b`` (the
  batch mean / variance of every BatchNorm layer) does not depend on ``r``.
  From ``stats[b] = m r0 + (1 - m) mu_b`` (one pass from ``r0 =
  batch_stats``) the increment ``d_b = stats[b] - m r0`` is known, and any
  sequence is ``r <- m r + d_b`` folded over it: exact (up to float32
  rounding) without re-running a pass whose batch repeats.

  Args:
    batch_stats: running averages before the passes.
    stats: name -> running averages after one pass from ``batch_stats``
      (:func:`train_passes`).
    sequence: names in the order the official code runs its train-mode
      passes, e.g. ``('clean', 'adv', 'clean')`` for TRADES; may be empty
      (no update).
    momentum: :meth:`ModelFns.bn_momentum` (None: the model has no BatchNorm).

  Returns:
    The new running averages (structure of ``batch_stats``).
  """
  if not sequence or not jax.tree.leaves(batch_stats):
    return batch_stats
  if momentum is None:
    raise ValueError("the model has running averages but no BatchNorm momentum")
  out = stats[sequence[0]]
  incr = {}
  for name in sequence[1:]:
    if name not in incr:
      incr[name] = jax.tree.map(lambda new, old: new - momentum * old, stats[name],
                                batch_stats)
    out = jax.tree.map(lambda r, d: momentum * r + d, out, incr[name])
  return out


def accuracy_sum(logits, y):
  """Number of correct predictions as float32."""
  return jnp.sum((jnp.argmax(logits, -1) == y).astype(jnp.float32))


def cross_entropy(logits, y):
  """Mean cross-entropy over the batch (``torch.nn.CrossEntropyLoss()``)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], -1))


def attack_in_view(attack: Callable, model: ModelFns, params, batch_stats, x, y, rng, *,
                   bn: str, **extra) -> Any:
  """Runs a method's training attack against the model in BatchNorm view ``bn``.

  The one body of every method's ``perturb``: ``attack(model.logits_fn(params,
  batch_stats, bn=bn), fold_in(rng, 0), x, y, **extra)``. Neither view
  updates the running averages (see :meth:`ModelFns.logits_fn`).

  Args:
    attack: ``attack(logits_fn, rng, x, y, **extra) -> x_adv``.
    model: the student's :class:`ModelFns`.
    params, batch_stats: its weights and running averages.
    x: float32 ``[B, H, W, C]`` clean batch in [0, 1].
    y: int32 ``[B]`` labels.
    rng: the step's PRNG key (the attack gets ``fold_in(rng, 0)``).
    bn: ``'train'`` (batch statistics) or ``'eval'`` (running averages).
    **extra: passed to the attack (e.g. RSLAD's ``ref_logits``).

  Returns:
    What the attack returns (float32 ``x_adv`` of ``x``'s shape).

  Raises:
    ValueError: unknown ``bn``.
  """
  logits_fn = model.logits_fn(params, batch_stats, bn=bn)
  return attack(logits_fn, jax.random.fold_in(rng, 0), x, y, **extra)


def attack_bn_updates(attack: Callable, model: ModelFns, params, batch_stats, x, y, rng, *,
                      extra_passes: int = 0, replay: bool = False,
                      **extra) -> tuple[jax.Array, Any]:
  """A train-view attack and the running averages its forward passes leave, as PyTorch's.

  In PyTorch every forward pass of a model in train mode updates each
  BatchNorm layer's running averages, ``r <- m r + (1 - m) mu_b`` (``m`` =
  :meth:`ModelFns.bn_momentum`, ``mu_b`` the batch mean / variance of that
  pass), attack passes included: Rice et al. / AT-AWP's ``attack_pgd`` runs
  ``num_steps`` passes plus one on the final point (its restart-selection
  loss), ARD's and IAD's ``AttackPGD`` ``num_steps`` passes before the loss
  passes. This runs the attack exactly as :func:`attack_in_view` does in the
  ``'train'`` view (same key, same ``x_adv``) and threads the running
  averages through its forward passes (the attack's ``model_state``): each
  train-mode pass of the attack returns them updated with its own batch
  statistics, in order, from ``batch_stats``, so no pass is run twice and
  no input is stored, whatever the attack's loop unroll. Train-mode logits
  do not depend on the running averages, so the sequence is exact.

  A stochastic model (:func:`jaxrobust.attacks.stochastic`, e.g. input
  noise) and ``replay=True`` instead take the inputs of the attack's passes
  (``return_trace``) and replay one deterministic train-mode pass per input
  (``key=None``) to get its statistics: the earlier form, kept as the
  reference the threaded form is tested against.

  Args:
    attack: ``attack(logits_fn, rng, x, y, model_state=..., **extra) ->
      (x_adv, state)`` (and ``return_trace=True`` for the replay): the
      built-in ``pgd`` / ``fgsm``.
    model: the student's :class:`ModelFns`.
    params, batch_stats: its weights and running averages before the attack.
    x: float32 ``[B, H, W, C]`` clean batch in [0, 1].
    y: int32 ``[B]`` labels.
    rng: the step's PRNG key (the attack gets ``fold_in(rng, 0)``).
    extra_passes: further passes on ``x_adv`` after the attack's own (1 for
      ``attack_pgd``'s final ``all_loss`` pass).
    replay: use the trace-and-replay form (see above).
    **extra: passed to the attack.

  Returns:
    ``(x_adv, batch_stats)``: float32 ``x_adv`` like ``x`` and the running
    averages after the passes (unchanged for a model without BatchNorm).

  Raises:
    ConfigError: the attack cannot report its forward passes.
  """
  logits_fn = model.logits_fn(params, batch_stats, bn="train")
  key = jax.random.fold_in(rng, 0)
  if not replay and not is_stochastic(logits_fn) and batch_stats is not None:

    def forward(x_pass, stats):
      return model.apply(params, stats, x_pass, train=True)

    try:
      x_adv, new_stats = attack(forward, key, x, y, model_state=batch_stats, **extra)
    except TypeError as e:
      raise ConfigError(f"config.train.attack_bn_updates='official' needs an attack that "
                        f"threads the BatchNorm state through its forward passes "
                        f"(model_state: the built-in pgd / fgsm); {e}") from e
    for _ in range(extra_passes):
      new_stats = model.apply(params, new_stats, x_adv, train=True)[1]
    return x_adv, new_stats

  try:
    x_adv, trace = attack(logits_fn, key, x, y, return_trace=True, **extra)
  except TypeError as e:
    raise ConfigError(f"config.train.attack_bn_updates='official' needs an attack that reports "
                      f"its forward passes (return_trace: the built-in pgd / fgsm); {e}") from e
  if extra_passes:
    trace = jnp.concatenate([trace, jnp.broadcast_to(x_adv, (extra_passes,) + x_adv.shape)])
  if not jax.tree.leaves(batch_stats):
    return x_adv, batch_stats

  def one_pass(stats, x_pass):
    return model.apply(params, stats, x_pass, train=True)[1], None

  # Unrolled: on XLA:CPU a convolution inside a loop body misses the fast path (a rolled
  # scan doubled the FGSM-AT step).
  new_stats, _ = jax.lax.scan(one_pass, batch_stats, trace, unroll=True)
  return x_adv, new_stats


@dataclasses.dataclass(frozen=True)
class AttackBNUpdates:
  """A method whose train-view attack updates the running averages, pass by pass.

  ``perturb`` runs ``base.attack`` through :func:`attack_bn_updates` and
  returns ``(x_adv, batch_stats_after_attack)``; ``loss`` is ``base.loss``
  started from those running averages, so the step's final running averages
  are the attack passes' updates followed by the loss passes' (PyTorch's
  order). ``base`` needs ``attack`` and ``attack_bn == 'train'`` and a
  ``perturb`` that is :func:`attack_in_view` of them (``pgd_at``,
  ``fgsm_at``, ARD, IAD; AT-AWP wraps its base).

  Attributes:
    base: the method.
    extra_passes: passes on ``x_adv`` after the attack's (see
      :func:`attack_bn_updates`).
    replay: the trace-and-replay form of :func:`attack_bn_updates` (same
      ``x_adv`` and running averages up to float rounding, more work; a
      reference for tests).
  """
  base: Any
  extra_passes: int = 0
  replay: bool = False

  @property
  def name(self) -> str:
    return self.base.name

  def __getattr__(self, attr):
    """The base method's settings (``temperature``, ``gamma``, ...) read through the wrapper."""
    if attr == "base" or attr.startswith("__"):
      raise AttributeError(attr)
    return getattr(self.base, attr)

  def perturb(self, model, params, batch_stats, x, y, rng, frozen=None, step=None):
    """``(x_adv, batch_stats)``: ``base``'s ``x_adv`` and the running averages after it."""
    del frozen, step
    return attack_bn_updates(self.base.attack, model, params, batch_stats, x, y, rng,
                             extra_passes=self.extra_passes, replay=self.replay)

  def loss(self, params, batch_stats, model, x, y, aux, rng, frozen=None, step=None):
    """``base.loss`` from the running averages after the attack passes."""
    del batch_stats
    x_adv, after_attack = aux
    return self.base.loss(params, after_attack, model, x, y, x_adv, rng, frozen=frozen,
                          step=step)
