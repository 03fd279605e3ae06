r"""RiFT, robust critical fine-tuning (Zhu et al., ICCV 2023), on CIFAR-10.

Two protocols (:mod:`jaxrobust.rift.config`); every PGD uses step 2/255 (the
official code's ``alpha=2/225`` is a typo for 2/255).

Default, ``protocol='validation'`` (no test-set leakage): MRC of every
conv/dense kernel with xi = 0.1, 10 ascent epochs of SGD lr 1 (batch 512) over
a fixed PGD-10 set (8/255) of the validation split; clean fine-tuning of the
lowest-MRC module on train minus validation, lr 0.001, 10 epochs, x0.1 at
epoch 5, SGD(0.9), wd 5e-4, batch 128, BatchNorm in train mode, epoch of best
validation clean accuracy; interpolation over alpha = 0, 0.1, ..., 1 and alpha
chosen on validation (max clean accuracy within 1 pp of the robust model's
PGD-10 accuracy); test: clean, PGD-20 (one run), AutoAttack on the first
1000, OOD = 15 corruptions x 5 severities on 1000 images (CIFAR-10-C through
TFDS where prepared, else generated). Its figures are this library's own and
are NOT comparable like for like with the paper's. Reference (``:local``,
BENCHMARKS.md "RiFT at CPU scale"): test[:1000] clean 49.8 -> 51.9 %, PGD-20
27.0 -> 25.2 %, OOD (generated, severities 1/3/5) 32.1 -> 33.2 %.

    python -m jaxrobust.rift --config configs/cifar10_rift.py \
        --config.at_workdir=runs/pgd_at --workdir runs/rift

``:official`` — the paper's / official code's protocol, for like-for-like
comparison with published numbers (selection on test: leaks): MRC over all
10,000 test images; fine-tuning on all 50,000 training images with the epoch
of best clean test accuracy; alpha grid on test (clean, one PGD-10 run);
test: clean and PGD-10 (worst accuracy of 3 runs) on the whole test split,
OOD = the official CIFAR-10-C files, 18 corruptions x 5 severities x 10,000
images (``utils.py`` ``evaluate_cifar_corruption``; missing files stop the
run with one error naming them). Paper, Table 1 (ResNet-18, CIFAR-10, AT;
not re-checked against the PDF offline): clean 81.46 -> 83.44, PGD-10 53.63
-> 53.65. Caveat on this machine: the
bundled CIFAR-10 test images 1000-9999 are JPEG-derived; the run refuses
them unless ``--config.eval.allow_lossy_test=True`` (the report then counts
them).

    python -m jaxrobust.rift --config configs/cifar10_rift.py:official \
        --config.at_workdir=runs/pgd_at --workdir runs/rift_official

``:local`` — CPU scale for a ``cifar10_pgd_at.py:local`` model (the official
MRC and fine-tuning settings, which are cheap for a small CNN): AutoAttack on
200 test images, OOD on 200 validation / 500 test images at severities 1, 3, 5
(``:official,local`` keeps the official evaluation, only the batch changes).
``:smoke`` — a few steps, tiny sets (tests); ``:official,smoke`` names its
prefixes explicitly (MRC on test[:64], test[:80]) and skips OOD.
"""
from jaxrobust.rift.config import default_rift_config
from jaxrobust.train.defaults import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, official=False)
  c = default_rift_config("official" if arg.official else "validation")
  if not arg.official:
    c.eval.autoattack_examples = 1000
  if arg.local or arg.smoke:
    c.eval.batch_size = 250
    if not arg.official:
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
    if arg.official:
      c.eval.ood.source = "none"  # the official CIFAR-10-C files are not bundled.
      c.eval.ood.val_examples = 0
  return c
