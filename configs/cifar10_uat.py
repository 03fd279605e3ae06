r"""Unsupervised adversarial training (Alayrac et al. NeurIPS 2019) on CIFAR-10 with 4,000 labels.

"Are labels required for improving adversarial robustness?": the controlled
setting of ``cifar10_rst.py`` (4,000 labeled training examples, the other
45,000 unlabeled: ``config.method.unlabeled='rest'``), every batch half
labeled, half unlabeled, eps 8/255.

* ``ot`` (default) — UAT-OT: on the unlabeled rows the KL from the model's
  own clean prediction (held fixed) to its prediction at ``x_adv``, ``x_adv``
  maximising that KL; adversarial CE on the labeled rows; one PGD-10 of 2/255
  (uniform start, eval-mode BN) on both.
* ``ft`` — UAT-FT: the unlabeled rows take the pseudo-labels of the standard
  teacher of ``cifar10_rst.py:teacher``; PGD-AT (PGD-10 of 2/255, train-mode
  BN, CE on ``x_adv``) on all rows.
* ``supervised`` — the baseline: PGD-AT on the same 4,000 labels only (UAT-FT
  with ``unsup_fraction = 0``), same schedule.

Loss ``mean_labeled + unsup_weight * mean_unlabeled`` (``unsup_weight`` 1).
No official code was released; the budget is that of ``cifar10_rst.py``
(WRN-28-10, batch 256, 200 epochs of 49,000 / 256 batches, SGD lr 0.1
Nesterov, weight decay 5e-4, cosine) so that the two methods compare.

    python -m jaxrobust.train --config configs/cifar10_uat.py:ot --workdir runs/uat_ot
    python -m jaxrobust.train --config configs/cifar10_uat.py:ft --workdir runs/uat_ft \
        --config.method.teacher_workdir=runs/rst_teacher
    python -m jaxrobust.train --config configs/cifar10_uat.py:supervised --workdir runs/uat_sup

``:local`` — SimpleCNN, PGD-3 of 3/255, 5 epochs, one-cycle lr 0.2, batch 128.
``:smoke`` — a few steps of a tiny model on 256 labeled and 256 unlabeled
images (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg

NUM_LABELED = 4000


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, ot=False, ft=False, supervised=False)
  c = default_config()
  c.model.name = "wrn_28_10"
  c.data.train_size = NUM_LABELED
  name = "uat_ft" if (arg.ft or arg.supervised) else "uat_ot"
  c.method = method_config(name, unlabeled="rest", unsup_fraction=0.5)
  c.train.batch_size = 256
  c.train.num_epochs = 200
  c.train.lr = 0.1
  c.train.nesterov = True
  c.train.weight_decay = 5e-4
  c.train.schedule = "cosine"
  if arg.local or arg.smoke:
    apply_local(c)
    c.train.nesterov = False
    c.train.batch_size = 128
    c.method.attack.update(num_steps=3, step_size=3 / 255)
    c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10,
                                      random_start="uniform")
  if arg.smoke:
    apply_smoke(c)
    c.method.unlabeled_size = 256
  if arg.supervised:
    c.method.unsup_fraction = 0.0
  return c
