r"""RiFT, robust critical fine-tuning (Zhu et al., ICCV 2023), on CIFAR-10.

Full setup (``microsoft/robustlearn:RiFT/main.py``, METHODS 2.8): MRC of every
conv/dense kernel with xi = 0.1, 10 ascent epochs of SGD lr 1 (batch 512) over a
fixed PGD-10 set (8/255, step 2/255; built from the validation split, the
official code uses the test split: ``--config.mrc.split=test``); clean
fine-tuning of the lowest-MRC module, lr 0.001, 10 epochs, x0.1 at epoch 5,
SGD(0.9), wd 5e-4, batch 128, BatchNorm in train mode; interpolation over
alpha = 0, 0.1, ..., 1 and alpha chosen on validation (max clean accuracy
within 1 pp of the robust model's PGD-10 accuracy); test: clean, PGD-20,
AutoAttack on the first 1000, CIFAR-10-C (15 corruptions x 5 severities).
Paper (ResNet-18, CIFAR-10, AT): 81.46 -> 83.44 clean at 53.63 -> 53.65 PGD-10.

    python -m jaxrobust.rift --config configs/cifar10_rift.py \
        --config.at_workdir=runs/pgd_at --workdir runs/rift

``:local`` — CPU scale for a ``cifar10_pgd_at.py:local`` model (the official
MRC and fine-tuning settings, which are cheap for a small CNN): AutoAttack on
200 test images, OOD on 200 validation / 500 test images at severities 1, 3, 5.
``:smoke`` — a few steps, tiny sets (tests).
"""
from jaxrobust.rift.config import default_rift_config
from jaxrobust.train.defaults import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False)
  c = default_rift_config()
  c.eval.autoattack_examples = 1000
  if arg.local or arg.smoke:
    c.eval.batch_size = 250
    c.eval.autoattack_examples = 200
    c.eval.ood.severities = (1, 3, 5)
    c.eval.ood.val_examples = 200
    c.eval.ood.test_examples = 500
  if arg.smoke:
    c.mrc.num_examples = 64
    c.mrc.num_epochs = 2
    c.mrc.batch_size = 32
    c.mrc.attack.num_steps = 2
    c.finetune.num_steps = 4
    c.finetune.batch_size = 32
    c.interpolation.alphas = (0.0, 0.5, 1.0)
    c.eval.batch_size = 40
    c.eval.test_size = 80
    c.eval.val_attack.num_steps = 2
    c.eval.test_attack.num_steps = 2
    c.eval.autoattack_examples = 0
    c.eval.ood.corruptions = ("gaussian_noise", "fog")
    c.eval.ood.severities = (1, 5)
    c.eval.ood.val_examples = 40
    c.eval.ood.test_examples = 40
  return c
