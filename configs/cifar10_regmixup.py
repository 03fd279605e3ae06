r"""RegMixup on CIFAR-10: our adversarial variant (``regmixup_at``) or the published one.

``regmixup_at`` (default; jaxrobust's own combination, not a published
method): PGD-AT's attack (PGD-10 of 2/255, uniform start, train-mode BN) crafts
``x_adv`` and the RegMixup loss (Pinto et al. NeurIPS 2022,
``FrancescoPinto/RegMixup``) is taken on ``concat(x_adv, mixup(x_adv))`` with
``lambda ~ Beta(20, 20)`` per batch; the rest is ``cifar10_pgd_at.py``
(PreAct-ResNet-18, 200 epochs). ``clean`` — the published RegMixup (clean
images, no attack) with the same budget (the paper: 350 epochs, lr 0.1, batch
128, ``commands.sh``).

    python -m jaxrobust.train --config configs/cifar10_regmixup.py --workdir runs/regmixup_at

``:local`` — the ``cifar10_pgd_at.py:local,pgd_steps=3`` budget (SimpleCNN,
PGD-3 of 3/255, 5 epochs); each step runs one pass on 2B images.
``:smoke`` — 4 steps of a tiny model (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, clean=False)
  c = default_config()
  c.method = method_config("regmixup") if arg.clean else method_config("regmixup_at")
  if arg.local or arg.smoke:
    apply_local(c)
    if not arg.clean:
      c.method.attack.update(step_size=3 / 255, num_steps=3)
    c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10,
                                      random_start="uniform")
  if arg.smoke:
    apply_smoke(c)
  return c
