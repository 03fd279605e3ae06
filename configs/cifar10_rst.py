r"""Robust self-training (Carmon et al. NeurIPS 2019) on CIFAR-10 with 4,000 labels.

The papers' controlled setting: a seeded, random 4,000 of the training
examples keep their labels (``config.data.train_size``), the other 45,000
(the validation split of 1,000 held out) are the unlabeled set
(``config.method.unlabeled='rest'``, images only). Three runs:

1. ``:teacher`` — the standard (non-robust) model on the 4,000 labels that
   pseudo-labels the unlabeled set: ``rst`` with ``beta = 0`` (no attack,
   clean CE) and ``unsup_fraction = 0``, as the official README trains it
   (``robust_self_training.py --beta 0 --unsup_fraction 0``); best checkpoint
   by validation clean accuracy.
2. default — RST (``yaircarmon/semisup-adv:robust_self_training.py``):
   every batch half labeled, half pseudo-labeled (``unsup_fraction = 0.5``),
   TRADES with beta 6 (10 steps of 0.007 on the KL, eps 0.031, eval-mode BN),
   WRN-28-10, batch 256, 200 "epochs" of (4,000 + 45,000) / 256 batches
   (officially 50K points), SGD lr 0.1 Nesterov momentum 0.9, weight decay
   5e-4, cosine schedule. Pseudo-labels are computed before the first step and
   cached in ``<workdir>/pseudo_labels.npz`` (:mod:`jaxrobust.train.semisup`).
3. ``:supervised`` — the baseline: the same TRADES loss and schedule on the
   same 4,000 labels only (``unsup_fraction = 0``, as the official vanilla
   runs of the script).

    python -m jaxrobust.train --config configs/cifar10_rst.py:teacher --workdir runs/rst_teacher
    python -m jaxrobust.train --config configs/cifar10_rst.py --workdir runs/rst \
        --config.method.teacher_workdir=runs/rst_teacher
    python -m jaxrobust.train --config configs/cifar10_rst.py:supervised --workdir runs/rst_sup

Another unlabeled set (e.g. 500K TinyImages as an .npz of images):
``--config.method.unlabeled=/path/ti_500k.npz --config.data.train_size=0``.

``:local`` — SimpleCNN, TRADES with 3 steps of 0.012, 5 epochs, one-cycle lr
0.2, batch 128 (about 380 steps per epoch; the teacher: clean CE, the same
step count). ``:smoke`` — a few steps of a tiny model on 256 labeled and
256 unlabeled images (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg

NUM_LABELED = 4000


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, teacher=False, supervised=False)
  c = default_config()
  c.model.name = "wrn_28_10"
  c.eps = 0.031
  c.data.train_size = NUM_LABELED
  c.method = method_config("rst", unlabeled="rest", unsup_fraction=0.5)
  c.train.batch_size = 256
  c.train.num_epochs = 200
  c.train.lr = 0.1
  c.train.nesterov = True
  c.train.weight_decay = 5e-4
  c.train.schedule = "cosine"
  c.eval.val_attack = attack_config("pgd", step_size=0.007, num_steps=10, loss="ce",
                                    random_start="uniform")
  if arg.local or arg.smoke:
    apply_local(c)
    c.train.nesterov = False
    c.train.batch_size = 128
    c.method.attack.update(num_steps=3, step_size=0.012)
    c.eval.val_attack.update(step_size=2 / 255)
  if arg.smoke:
    apply_smoke(c)
    c.method.unlabeled_size = 256
  if arg.teacher:
    c.method.beta = 0.0
    c.method.unsup_fraction = 0.0
    c.eval.select = "val_clean"
  elif arg.supervised:
    c.method.unsup_fraction = 0.0
  return c
