r"""AWP (Wu et al. 2020) on CIFAR-10, L-inf eps 8/255: AT-AWP, or TRADES-AWP with ``:trades``.

AT-AWP (default; ``csdongxian/AWP:AT_AWP/train_cifar10.py, utils_awp.py``,
METHODS 2.4): the Rice et al. PGD-AT setup of ``cifar10_pgd_at.py``
(PreAct-ResNet-18, mean/std inside the model, PGD-10 2/255 uniform start in
train-mode BN, crop of the reflect-padded images + flip, 200 epochs, SGD(0.9)
lr 0.1 x0.1 at 50 % and 75 %, weight decay 5e-4 applied at the perturbed
weights as PyTorch does) plus one proxy ascent step per batch and a
layer-wise relative weight perturbation of gamma = 0.01 on every conv/linear
kernel, from the first epoch. Best-epoch
selection by validation PGD (the official code selects on test). Reference
(official logs): best 81.18 clean / 55.39 PGD-20, last 81.65 / 54.30
(PreActRN-18); WRN-34-10 (``model=wrn_34_10``): 85.36 clean / AA 53.97.

    python -m jaxrobust.train --config configs/cifar10_awp.py --workdir runs/at_awp

``:trades`` — TRADES-AWP (``trades_AWP/train_trades_cifar.py``): WRN-34-10
without input normalisation, the TRADES inner max (10 x 2/255 on the summed
KL from ``x + 0.001 N(0,1)``, eps 8/255, eval-mode BN), zero padding, TRADES
loss with beta 6 (passes adversarial, clean, clean), gamma 0.005, proxy lr
0.1, AWP from (1-indexed) epoch 10, i.e. after 9 warm-up epochs, 200 epochs, weight
decay 5e-4, lr x0.1 from (1-indexed) epochs 100 and 150 (after 99 and 149).
Reference: 85.36 clean / AA 56.17 (AWP README, RobustBench Wu2020Adversarial).

    python -m jaxrobust.train --config configs/cifar10_awp.py:trades --workdir runs/trades_awp

Runtime: one extra forward-backward pass per step on top of the base method.

``:local`` — CPU-scale (not measured; roughly 2 times ``cifar10_pgd_at.py:local``):
``simple_cnn``, FGSM-RS inner max (or a 3-step KL one with ``:trades``), 5
epochs, one-cycle lr 0.2, AWP from the start.
``:smoke`` — 4 steps of a tiny model on a slice of the data (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, trades=False, model="")
  c = default_config()  # Rice et al. PGD-AT of PreAct-ResNet-18, eps 8/255.
  c.eps = 8 / 255  # every attack: training, validation, test.
  c.method = method_config(
      "awp", awp_base="pgd_at",
      attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce",
                  random_start="uniform_radius"),  # L2: radius U(0, 1) eps, as attack_pgd.
      attack_bn="train", awp_gamma=0.01, awp_warmup_epochs=0.0, proxy_lr=0.01)
  if arg.trades:
    c.model.name = "wrn_34_10"
    c.model.normalize = "none"
    c.method = method_config(
        "awp", awp_base="trades",
        attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="kl",
                    random_start="normal"),
        attack_bn="eval", beta=6.0, kl_reduction="batchmean", awp_gamma=0.005,
        awp_warmup_epochs=9.0, proxy_lr=0.1)
    c.train.num_epochs = 200
    c.train.weight_decay = 5e-4
    c.train.boundaries = (99 / 200, 149 / 200)
    c.train.scales = (0.1, 0.1)
  if arg.model:
    c.model.name = arg.model
  if arg.local or arg.smoke:
    apply_local(c)
    if arg.trades:
      c.method.attack.update(num_steps=3, step_size=0.012)
    else:
      c.method.attack = attack_config("fgsm", step_size=10 / 255, random_start="uniform")
    c.method.awp_warmup_epochs = 0.0
    c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10,
                                      random_start="uniform")
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c)
  return c
