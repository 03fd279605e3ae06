r"""The PGD-AT teacher of IAD (Zhu et al. 2022) on CIFAR-10, L-inf eps 8/255.

IAD's own teacher recipe (``ZFancy/IAD:pre_train/AT.py`` with its
``pre_train/attack_generator.py``; METHODS 2.6), the teacher that
``configs/cifar10_iad.py`` distils from: ResNet-18 on inputs in [0, 1]
without normalisation; attack PGD-10 on the mean CE, step 2/255, eps 8/255,
uniform start clipped to [0, 1], run in eval-mode BN (``PGD`` calls
``model.eval()``; ``model.train()`` only for the loss pass, whose running
averages alone update); training loss mean CE on ``x_adv``; random crop 4 with
zero padding (torchvision ``RandomCrop(32, padding=4)``, not the reflect
padding of ``cifar10_pgd_at.py``) + flip; batch 128; SGD(0.9) lr 0.1, weight
decay 2e-4; 200 epochs; the lr is set once per epoch to ``lr_schedule(epoch
+ 1)`` (piecewise at 50 % / 75 % of 200 epochs), so it drops x0.1 after 99
and again after 149 epochs (0-indexed epochs 99 and 149). The official script
keeps the epoch with the best test PGD-10 accuracy (2/255, uniform start,
eval mode); ours selects on the validation split with the same attack
(``eval.val_attack``) and reports test PGD-20.

    python -m jaxrobust.train --config configs/cifar10_iad_teacher.py --workdir runs/iad_teacher
    python -m jaxrobust.train --config configs/cifar10_iad.py \
        --config.method.teacher_workdir=runs/iad_teacher --workdir runs/iad

``:local`` — CPU-scale (not measured; about ``cifar10_pgd_at.py:local,pgd_steps=3``):
``simple_cnn``, 3 attack steps of 3/255, 5 epochs, one-cycle lr 0.2, the
teacher of ``cifar10_iad.py:local``.
``:smoke`` — 4 steps of a tiny model on a slice of the data (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False)
  c = default_config()
  c.model.name = "resnet18"
  c.model.normalize = "none"
  c.eps = 8 / 255  # every attack: training, validation, test.
  c.method = method_config(
      "pgd_at", attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce",
                            random_start="uniform"),
      attack_bn="eval")
  c.data.pad_mode = "constant"  # RandomCrop(32, padding=4): zeros.
  c.train.batch_size = 128
  c.train.num_epochs = 200
  c.train.lr = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = 2e-4
  c.train.schedule = "piecewise"
  c.train.boundaries = (99 / 200, 149 / 200)
  c.train.scales = (0.1, 0.1)
  c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10, loss="ce",
                                    random_start="uniform")
  if arg.local or arg.smoke:
    apply_local(c)
    c.method.attack.update(num_steps=3, step_size=3 / 255)
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c)
  return c
