r"""ARD, Adversarially Robust Distillation (Goldblum et al. 2020), on CIFAR-10 (``ard_distill``).

Full setup (``goldblum/AdversariallyRobustDistillation:main.py``, METHODS
2.5): student MobileNetV2, teacher a TRADES WRN-34-10 (train it with
``configs/cifar10_trades.py``; frozen, eval mode), inputs in [0, 1] without
normalisation, crop 4 + flip, batch 128. Attack: PGD-10 on the student's CE
(2/255, eps 8/255, uniform start), student in train-mode BN. Loss:
``alpha T^2 KL(T(x)/T || S(x')/T)`` with ``nn.KLDivLoss()``'s mean over
B*C elements, T = 30, alpha = 1 (so no CE term); running averages updated by
the adversarial then the clean batch (the official clean pass runs even
with alpha = 1). 200 epochs, SGD(0.9) lr 0.1, weight decay 2e-4. Learning
rate: the script asks for x0.1 at epochs 100 and 150 but multiplies a local
copy of the initial lr, so both decays set 0.01: one decay at 100, which
this config reproduces (boundaries ``(0.5, 0.75)`` and scales ``(0.1, 0.1)``
give the intended schedule).
Reference: MobileNetV2 student of a TRADES WRN-34-10: 82.63 clean / 50.22
PGD-20 (goldblum/AdversariallyRobustDistillation#2, #8); ResNet-18 student
83.93 / 52.05 / AA 49.19 (RSLAD paper).

    python -m jaxrobust.train --config configs/cifar10_ard.py \
        --config.method.teacher_workdir=runs/trades --workdir runs/ard

``:local`` — CPU-scale (not measured; roughly 2 times ``cifar10_pgd_at.py:local``
plus the teacher's forward passes): ``simple_cnn`` student, 3-step attack
(step 3/255), 5 epochs, one-cycle lr 0.2; any teacher workdir, e.g.
``runs/local`` from ``cifar10_pgd_at.py:local``:

    python -m jaxrobust.train --config configs/cifar10_ard.py:local \
        --config.method.teacher_workdir=runs/local --workdir runs/ard_local

``:smoke`` — 4 steps of a tiny student (tests; the test trains a tiny
teacher with ``cifar10_pgd_at.py:smoke`` first and sets the workdir).
"""
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False)
  c = default_config()
  c.model.name = "mobilenet_v2"
  c.model.normalize = "none"
  c.eps = 8 / 255  # every attack: training, validation, test.
  c.method = method_config(
      "ard_distill", attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="ce",
                                 random_start="uniform"),
      attack_bn="train", alpha=1.0, temperature=30.0, kl_reduction="mean",
      teacher_workdir="")  # --config.method.teacher_workdir=runs/trades
  c.train.batch_size = 128
  c.train.num_epochs = 200
  c.train.lr = 0.1
  c.train.weight_decay = 2e-4
  c.train.schedule = "piecewise"
  c.train.boundaries = (0.5,)
  c.train.scales = (0.1,)
  if arg.local or arg.smoke:
    apply_local(c)
    c.method.attack.update(num_steps=3, step_size=3 / 255)
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c)
  return c
