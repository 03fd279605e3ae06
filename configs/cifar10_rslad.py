r"""RSLAD, Robust Soft Label Adversarial Distillation (Zi et al. 2021), on CIFAR-10.

Full setup (``zibojia/RSLAD:resnet18_rslad_cifar10.py, rslad_loss.py``,
METHODS 2.7): student ResNet-18 (``:mobilenet``: MobileNetV2, the same
script otherwise), teacher a TRADES WRN-34-10 (train it with
``configs/cifar10_trades.py``; frozen, eval mode), inputs in [0, 1], crop 4
+ flip, batch 128, seed 0. Inner max: 10 signed steps of 2/255 on the summed
``KL(p_T(x) || p_S(x'))`` from ``x + 0.001 N(0,1)``, eps 8/255, student in
eval-mode BN. Loss: ``5/6 KL(T(x) || S(x')) + 1/6 KL(T(x) || S(x))`` with
the official ``p_T (log(p_T + 1e-5) - log p_S)`` reduced by the mean over
B*C; running averages updated by the adversarial then the clean batch.
300 epochs, SGD(0.9) lr 0.1, weight decay 2e-4, lr x0.1 after epochs 215,
260 and 285. Evaluation: PGD-20, step 0.003, eps 8/255, uniform start (the
official in-loop ``attack_pgd``). Reference: ResNet-18 83.38 clean / 54.24
PGD-20 / AA 51.49 (best checkpoint), 83.33 / 54.14 / 51.32 (last);
MobileNetV2 83.40 / 53.16 / 50.17 (RSLAD paper).

    python -m jaxrobust.train --config configs/cifar10_rslad.py \
        --config.method.teacher_workdir=runs/trades --workdir runs/rslad

With a large teacher, ``--config.method.teacher_dtype=bfloat16`` runs the
teacher forward in bf16 (the official CIFAR-100 script runs its WRN-70-16
teacher in fp16).

``:local`` — CPU-scale (not measured; roughly 3 times ``cifar10_pgd_at.py:local``
plus the teacher's passes): ``simple_cnn`` student, 3-step inner max, 5
epochs, one-cycle lr 0.2.
``:smoke`` — 4 steps of a tiny student (tests; the test trains a tiny
teacher with ``cifar10_pgd_at.py:smoke`` first).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, mobilenet=False)
  c = default_config()
  c.model.name = "mobilenet_v2" if arg.mobilenet else "resnet18"
  c.model.normalize = "none"
  c.eps = 8 / 255  # every attack: training, validation, test.
  c.method = method_config(
      "rslad", attack=dict(name="pgd", step_size=2 / 255, num_steps=10, loss="kl",
                           random_start="normal"),
      attack_bn="eval", alpha=5 / 6, kl_reduction="mean",
      teacher_workdir="")  # --config.method.teacher_workdir=runs/trades
  c.train.batch_size = 128
  c.train.num_epochs = 300
  c.train.lr = 0.1
  c.train.weight_decay = 2e-4
  c.train.schedule = "piecewise"
  c.train.boundaries = (215 / 300, 260 / 300, 285 / 300)
  c.train.scales = (0.1, 0.1, 0.1)
  c.eval.val_attack = attack_config("pgd", step_size=0.003, num_steps=10, loss="ce",
                                    random_start="uniform")
  c.eval.test_attack = attack_config("pgd", step_size=0.003, num_steps=20, loss="ce",
                                     random_start="uniform")
  if arg.local or arg.smoke:
    apply_local(c)
    c.method.attack.update(num_steps=3, step_size=3 / 255)
    c.eval.val_attack.update(step_size=2 / 255)
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c)
  return c
