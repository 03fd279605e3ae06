r"""PGD-AT on CIFAR-10 with an exponential moving average of the weights (EMA).

Full setup: ``cifar10_pgd_at.py`` (Rice et al.: PreAct-ResNet-18, PGD-10, 200
epochs) plus ``config.train.ema_decay``: DeepMind's 0.995 at batch 1024
(Gowal et al. 2020, ``deepmind/deepmind-research:adversarial_robustness``)
rescaled to batch 128 as ``0.995 ** (128 / 1024)`` = 0.99937
(:func:`jaxrobust.train.state.ema_decay_for_batch_size`), with the warm-up
``min(d, (1 + t) / (10 + t))``. Validation, checkpoint selection and the
test use the EMA weights.

    python -m jaxrobust.train --config configs/cifar10_ema.py --workdir runs/ema

``:local`` — ``cifar10_pgd_at.py:local,pgd_steps=3`` (SimpleCNN, PGD-3 of
3/255, 5 epochs, one-cycle lr) plus the EMA at the same rescaled decay; the
"+EMA" row of the CPU-scale generalisation table (BENCHMARKS.md).
``:smoke`` — 4 steps of a tiny model (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg
from jaxrobust.train.state import ema_decay_for_batch_size

DECAY_AT_1024 = 0.995  # DeepMind's adversarial-robustness recipe (batch 1024).


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False)
  c = default_config()  # PGD-AT (Rice et al.), PreAct-ResNet-18, 200 epochs.
  if arg.local or arg.smoke:
    apply_local(c)
    c.method = method_config("pgd_at", attack=dict(
        name="pgd", step_size=3 / 255, num_steps=3, loss="ce", random_start="uniform_radius"))
    c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10,
                                      random_start="uniform")
  if arg.smoke:
    apply_smoke(c)
  c.train.ema_decay = ema_decay_for_batch_size(DECAY_AT_1024, c.train.batch_size)
  return c
