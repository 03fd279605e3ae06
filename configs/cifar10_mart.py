r"""MART (Wang et al. 2020) on CIFAR-10, L-inf eps 0.031.

Full setup (``YisenWang/MART:train_wideresnet.py, mart.py``, METHODS 2.3):
WRN-34-10, inputs in [0, 1] without normalisation, crop 4 + flip, batch 128,
SGD(0.9) lr 0.1, weight decay 7e-4, 90 epochs; lr x0.1 from (1-indexed) epoch
75 and x0.01 at epoch 90 (after 74 and 89 epochs here). Attack: CE PGD-10,
step 0.007, eps 0.031, start ``x + 0.001 N(0,1)``, eval-mode BN. Loss: BCE +
6 * misclassification-weighted KL, clean branch not detached; running
averages updated by the clean then the adversarial batch. Evaluation
(``_pgd_whitebox``): PGD-20, step eps/10 = 0.0031, eps 0.031, uniform start.
Reference: about 84.2 clean / 58.6 PGD-20 (MART paper, WRN-34-10 without
extra data; METHODS section 3, unverified); MART-AWP 84.43 / AA 54.23 (AWP
README).

    python -m jaxrobust.train --config configs/cifar10_mart.py --workdir runs/mart

``:resnet18`` — the ResNet-18 script (``train_resnet.py``): beta 5, lr 0.01,
weight decay 3.5e-3, 120 epochs, x0.1 at (1-indexed) epochs 75, 90 and 100.

``:local`` — CPU-scale (not measured; roughly 3 times ``cifar10_pgd_at.py:local``):
``simple_cnn``, 3-step attack (step 0.012), 5 epochs, one-cycle lr 0.2.
``:smoke`` — 4 steps of a tiny model on a slice of the data (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, resnet18=False)
  c = default_config()
  c.model.name = "wrn_34_10"
  c.model.normalize = "none"
  c.eps = 0.031  # every attack: training, validation, test.
  c.method = method_config(
      "mart", attack=dict(name="pgd", step_size=0.007, num_steps=10, loss="ce",
                          random_start="normal"),
      attack_bn="eval", beta=6.0)
  c.train.batch_size = 128
  c.train.num_epochs = 90
  c.train.lr = 0.1
  c.train.weight_decay = 7e-4
  c.train.schedule = "piecewise"
  c.train.boundaries = (74 / 90, 89 / 90)
  c.train.scales = (0.1, 0.1)
  c.eval.val_attack = attack_config("pgd", step_size=0.0031, num_steps=10, loss="ce",
                                    random_start="uniform")
  c.eval.test_attack = attack_config("pgd", step_size=0.0031, num_steps=20, loss="ce",
                                     random_start="uniform")
  if arg.resnet18:
    c.model.name = "resnet18"
    c.method.beta = 5.0
    c.train.num_epochs = 120
    c.train.lr = 0.01
    c.train.weight_decay = 3.5e-3
    c.train.boundaries = (74 / 120, 89 / 120, 99 / 120)
    c.train.scales = (0.1, 0.1, 0.1)
  if arg.local or arg.smoke:
    apply_local(c)
    c.method.attack.update(num_steps=3, step_size=0.012)
    c.eval.val_attack.update(step_size=2 / 255)
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c)
  return c
