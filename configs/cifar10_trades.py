r"""TRADES (Zhang et al. 2019) on CIFAR-10, L-inf eps 0.031, beta = 6.

Full setup (``yaodongyu/TRADES:train_trades_cifar10.py, trades.py``, METHODS
2.2): WRN-34-10, inputs in [0, 1] without normalisation, random crop 4 +
flip, batch 128, SGD(0.9) lr 0.1, weight decay 2e-4, 76 epochs with the lr
x0.1 from (1-indexed) epoch 75 on, i.e. after 74 epochs (the 90/100 decays of
the script are never reached). Inner max: 10 signed steps of 0.007 on the
summed KL from ``x + 0.001 N(0,1)``, eps 0.031, eval-mode BN. Outer: CE +
6 * batchmean KL, clean branch not detached; running averages updated by the
clean, adversarial and clean batch (``bn_updates='official'``). Evaluation:
PGD-20, step 0.003, eps 0.031, uniform start (``pgd_attack_cifar10.py``).
The official code keeps the last epoch; we report last and the best by
validation PGD accuracy. Reference: 84.92 clean / 56.61 PGD-20 / AA 53.08
(TRADES README, RobustBench Zhang2019Theoretically). Runtime: about 11
forward-backward passes per step at batch 128 on WRN-34-10 (GPU days on one
device; not measured here).

    python -m jaxrobust.train --config configs/cifar10_trades.py --workdir runs/trades

This run is also the teacher of ``cifar10_ard.py`` and ``cifar10_rslad.py``.

``:local`` — CPU-scale (not measured; roughly 3-4 times ``cifar10_pgd_at.py:local``):
``simple_cnn``, 3-step inner max (step 0.012), 5 epochs, one-cycle lr 0.2.
``:teacher`` (= ``:local,teacher``) — the CPU-scale distillation teacher: the same TRADES
objective on a 2x-wide ``simple_cnn`` (widths 64 / 128 / 256 instead of
32 / 64 / 128, about 4x the student's FLOPs) trained 3x as long (15 epochs),
so that it is clearly more robust than the ``:local`` students of
``cifar10_ard.py``, ``cifar10_iad.py`` and ``cifar10_rslad.py`` (RSLAD's and
ARD's papers distil from a TRADES WRN-34-10 into much smaller students).
Resumable like any run (checkpoints every epoch).
``:smoke`` — 4 steps of a tiny model on a slice of the data (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, teacher=False)
  c = default_config()
  c.model.name = "wrn_34_10"
  c.model.normalize = "none"
  c.eps = 0.031  # every attack: training, validation, test.
  c.method = method_config(
      "trades", attack=dict(name="pgd", step_size=0.007, num_steps=10, loss="kl",
                            random_start="normal"),
      attack_bn="eval", beta=6.0, kl_reduction="batchmean")
  c.train.batch_size = 128
  c.train.num_epochs = 76
  c.train.lr = 0.1
  c.train.weight_decay = 2e-4
  c.train.schedule = "piecewise"
  c.train.boundaries = (74 / 76,)
  c.train.scales = (0.1,)
  c.eval.val_attack = attack_config("pgd", step_size=0.003, num_steps=10, loss="ce",
                                    random_start="uniform")
  c.eval.test_attack = attack_config("pgd", step_size=0.003, num_steps=20, loss="ce",
                                     random_start="uniform")
  if arg.local or arg.smoke or arg.teacher:
    apply_local(c)
    c.method.attack.update(num_steps=3, step_size=0.012)
    c.eval.val_attack.update(step_size=2 / 255)
    if arg.teacher and not arg.smoke:
      c.model.kwargs = dict(widths=(64, 128, 256))
      c.train.num_epochs = 15
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c)
  return c
