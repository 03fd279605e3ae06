"""Optimiser and learning-rate schedules (optax).

SGD with momentum and PyTorch-style coupled weight decay (``wd * w`` added to
the gradient of every parameter, as ``torch.optim.SGD(weight_decay=...)``).
Schedules are per step; epochs are converted with ``steps_per_epoch``.
"""
from __future__ import annotations

import jax
import optax

from jaxrobust.errors import ConfigError
from jaxrobust.utils.paths import select_leaves


def make_schedule(t, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """LR schedule from ``config.train``.

  * ``piecewise``: ``lr`` times the product of ``scales[i]`` for every
    ``boundaries[i]`` (a fraction of training) already passed (Rice et al.:
    x0.1 at 50 %, x0.01 at 75 %).
  * ``cosine``: cosine decay from ``lr`` to 0.
  * ``cyclic``: linear 0 -> ``lr`` until fraction ``cyclic_peak`` of training,
    then linearly back to 0 (Wong et al. 2020's one-cycle schedule for fast
    FGSM-AT, peak at 2/5).
  * ``constant``.
  An optional linear warm-up of ``warmup_epochs`` precedes the schedule.
  """
  warmup = int(round(t.warmup_epochs * steps_per_epoch))
  main = max(1, total_steps - warmup)
  if t.schedule == "piecewise":
    sched = optax.piecewise_constant_schedule(
        t.lr, {int(round(b * main)): s for b, s in zip(t.boundaries, t.scales)})
  elif t.schedule == "cosine":
    sched = optax.cosine_decay_schedule(t.lr, main)
  elif t.schedule == "cyclic":
    half = min(main - 1, max(1, int(round(t.cyclic_peak * main))))
    sched = optax.join_schedules([optax.linear_schedule(0.0, t.lr, half),
                                  optax.linear_schedule(t.lr, 0.0, main - half)], [half])
  elif t.schedule == "constant":
    sched = optax.constant_schedule(t.lr)
  else:
    raise ConfigError(f"unknown schedule {t.schedule!r}")
  if warmup > 0:
    sched = optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup), sched], [warmup])
  return sched


def make_optimizer(t, total_steps: int, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD(momentum, nesterov) with coupled weight decay and the configured schedule.

  ``t.trainable`` (a regex over dotted parameter names such as
  ``'convs.1.kernel'``; '' = all) restricts the update to the matching
  parameters: the others get an exact zero update (``optax.set_to_zero``) and
  no weight decay, as parameters with ``requires_grad=False`` in PyTorch
  (RiFT's module fine-tuning).
  """
  sched = make_schedule(t, total_steps, steps_per_epoch)
  tx = optax.chain(optax.add_decayed_weights(t.weight_decay),
                   optax.sgd(sched, momentum=t.momentum or None, nesterov=t.nesterov))
  pattern = t.get("trainable", "")
  if not pattern:
    return tx

  def labels(params):
    mask = select_leaves(params, pattern, "config.train.trainable")
    return jax.tree.map(lambda m: "train" if m else "freeze", mask)

  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
