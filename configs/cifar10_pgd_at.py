r"""PGD-AT (Madry et al. 2018) on CIFAR-10, L-inf eps 8/255.

Full setup (Rice et al. 2020 / ``csdongxian/AWP:AT_AWP/train_cifar10.py``,
METHODS 2.1): PreAct-ResNet-18, PGD-10 with step 2/255 and uniform start
(``random_start='uniform_radius'``: with ``--config.norm=l2`` a uniform
direction with radius U(0, 1) eps, as ``attack_pgd``), attack in train-mode
BN, random crop of the reflect-padded images (4 pixels, ``AT_AWP/utils.py``;
``--config.data.pad_mode=constant`` pads with zeros) and flip, 200 epochs,
batch 128, SGD(0.9) lr 0.1 decayed x0.1 at 50 % and 75 %, weight decay 5e-4,
best checkpoint by validation PGD accuracy. Reference (AWP logs, selected on
test): 81.70 clean / 52.79 PGD-20 best epoch; 84.60 / 43.75 last epoch.

    python -m jaxrobust.train --config configs/cifar10_pgd_at.py --workdir runs/pgd_at

``:local`` — a CPU-scale run on the bundled CIFAR-10 (about 20 minutes on 2
cores): a small CNN trained with FGSM-AT with random init (Wong et al. 2020;
zero padding, as its official code), one-cycle LR. Measured figures are in
BENCHMARKS.md. ``:local,pgd_steps=3`` trains with PGD-AT (3 steps of 3/255,
uniform start, reflect padding) instead, the budget of the other methods'
``:local`` variants (the "SAT" row of the CPU-scale comparison).
``standard`` (e.g. ``:local,standard``) trains on clean images (the ``standard``
method) with everything else unchanged: a non-robust baseline, a clean
fine-tune (``--config.train.init_from``) or a distillation's natural teacher.

    python -m jaxrobust.train --config configs/cifar10_pgd_at.py:local --workdir runs/local
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, pgd_steps=0, standard=False)
  c = default_config()  # PGD-10 (2/255) in train-mode BN at c.eps = 8/255, L-inf.
  if arg.local or arg.smoke:
    apply_local(c)
    c.method = method_config("fgsm_at", attack=dict(name="fgsm", step_size=10 / 255,
                                                    random_start="uniform"))
    if arg.pgd_steps:
      c.method = method_config("pgd_at", attack=dict(
          name="pgd", step_size=3 / 255, num_steps=arg.pgd_steps, loss="ce",
          random_start="uniform_radius"))
    c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10,
                                      random_start="uniform")
  if arg.standard:
    c.method = method_config("standard")
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c)
  return c
