r"""PGD-AT on CIFAR-10 with stochastic weight averaging (SWA), BatchNorm recomputed.

Full setup: ``cifar10_pgd_at.py`` (Rice et al.: PreAct-ResNet-18, PGD-10, 200
epochs, lr x0.1 at 50 % and 75 %) plus SWA (Izmailov et al. 2018; for
adversarial training Chen et al. ICLR 2021, "Robust overfitting may be
mitigated by properly learned smoothening"): an equal-weight average of the
weights after every epoch from epoch 101 (the first lr decay; our choice of
start), kept with the checkpoints; at the end the average's BatchNorm
statistics are recomputed by one pass over the training data
(``config.train.swa_bn``), the average is tested (``report.json["swa"]``) and
written as the workdir ``<workdir>/swa`` (:mod:`jaxrobust.train.swa`).

    python -m jaxrobust.train --config configs/cifar10_swa.py --workdir runs/swa

Variants: ``bn=clean`` (default; Chen et al.), ``bn=adversarial`` (statistics
of the training attack's images), ``bn=none`` (the raw model's running
averages: what forgetting the recomputation gives). ``:local`` —
``cifar10_pgd_at.py:local,pgd_steps=3`` (5 epochs) averaging epochs 3-5.
``:smoke`` — a few steps of a tiny model (tests; averages after the first
epoch of 4 steps).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.errors import ConfigError
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg

BN = {"clean": "recompute_clean", "adversarial": "recompute_adversarial", "none": "none"}


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, bn="clean")
  if arg.bn not in BN:
    raise ConfigError(f"cifar10_swa.py: bn={arg.bn!r}; use one of {sorted(BN)}")
  c = default_config()  # PGD-AT (Rice et al.), PreAct-ResNet-18, 200 epochs.
  c.train.swa_start = 101  # epochs 101..200: after the first lr decay (epoch 100).
  if arg.local or arg.smoke:
    apply_local(c)
    c.method = method_config("pgd_at", attack=dict(
        name="pgd", step_size=3 / 255, num_steps=3, loss="ce", random_start="uniform_radius"))
    c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10,
                                      random_start="uniform")
    c.train.swa_start = 3  # epochs 3, 4, 5 of 5.
  if arg.smoke:
    apply_smoke(c)
    c.train.swa_start = 1
    c.train.num_steps = 16  # two epochs of 8 steps (256 images, batch 32): two averages.
  c.train.swa_bn = BN[arg.bn]
  return c
