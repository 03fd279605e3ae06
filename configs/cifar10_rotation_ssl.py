r"""Adversarial training with rotation self-supervision (Hendrycks et al. NeurIPS 2019).

Official setup (``hendrycks/ss-ood:adversarial/train.py``, METHODS 2.11):
WRN-40-2 (``wrn_28_10`` with ``depth=40, width=2``), 100 epochs, batch 128,
SGD Nesterov momentum 0.9, lr 0.1 cosine, weight decay 5e-4, eps 8/255; the
attack is PGD-10 of 2/255 (uniform start, train-mode BN) on class CE +
rotation CE / 8 over the 5B rotated batch, the loss CE + 0.5 rotation CE; a
4-way rotation head on the penultimate features
(``config.model.aux_heads=('rotation',)``; :mod:`jaxrobust.methods.rotation`).
The official network scales inputs to [-1, 1]; here the model normalises with
the CIFAR-10 mean / std.

    python -m jaxrobust.train --config configs/cifar10_rotation_ssl.py --workdir runs/rotation

``:local`` — SimpleCNN, PGD-3 of 3/255 on the joint objective, 5 epochs,
one-cycle lr (each step runs the model on 5B images: about 5 times
``cifar10_pgd_at.py:local,pgd_steps=3``). ``:smoke`` — 4 steps of a tiny
model (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False)
  c = default_config()
  c.model.name = "wrn_28_10"
  c.model.kwargs = dict(depth=40, width=2)
  c.model.aux_heads = ("rotation",)
  c.method = method_config("rotation_ssl")
  c.train.num_epochs = 100
  c.train.schedule = "cosine"
  c.train.nesterov = True
  if arg.local or arg.smoke:
    apply_local(c)
    c.model.kwargs = {}
    c.train.nesterov = False
    c.method.attack.update(step_size=3 / 255, num_steps=3)
    c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10,
                                      random_start="uniform")
  if arg.smoke:
    apply_smoke(c)
  return c
