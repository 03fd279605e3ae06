r"""Adversarial training of Vision Transformers on CIFAR-10 (Mo et al., NeurIPS 2022), eps 8/255.

Full setup (``mo666666/When-Adversarial-Training-Meets-Vision-Transformers:
train_cifar.py, parser_cifar.py, run_cifar.sh``, METHODS 2.9 / 2.12): DeiT-Ti
on 32 x 32 inputs with patch 4 (an 8 x 8 token grid; ``config.model.kwargs``),
normalisation inside the model; PGD-10 of 2/255 from a uniform start in eval
mode, with attention random dropping and perturbation random masking (keep
probability r(t) = min(t / 10, 1), fractional epoch t); Mixup (alpha 0.8) /
CutMix (alpha 1.0) with probability 0.3 and switch probability 0.5 (timm's
batch mode) on the batch before the attack, soft-target CE for attack and
loss; batch 64, 40 epochs, SGD(0.9) lr 0.1 set every iteration (x0.1 from
epoch 35, x0.01 from epoch 38), weight decay 1e-4 on every parameter, the
raw gradient clipped to global norm 1.0 first; random crop 4 (zero padding) +
flip. Evaluation as the paper's ``pgd.py``: PGD-20 of 2/255 that updates
only still-correct points (``early_stop``); ``python -m jaxrobust.evaluate
--attacks clean,cw20,pgd20_mo,pgd100,aa-standard`` gives the rest of its table.
The official run keeps the last epoch; we report last and the best by
validation PGD accuracy.

The published numbers start from ImageNet-pretrained timm weights (patch
kernels summed 16x16 -> 4x4, position embeddings resized); this config trains
from scratch (``--scratch`` in the official script). Absolute CIFAR-10
reference numbers are not available offline (METHODS section 3: the paper
reports ARD / PRM / both as about +1.2 / +1.1 / +1.3 AA points for Swin).

    python -m jaxrobust.train --config configs/cifar10_vit_pgd_at.py --workdir runs/vit_at

Arguments (``:arg,arg=value``):

* ``ard=false`` / ``prm=false``: switch attention random dropping / perturbation
  random masking off (``prm=false`` runs plain PGD); ``ard=false,prm=false``
  is the official "vanilla" AT run.
* ``objective=trades`` / ``objective=mart``: the official TRADES / MART
  branches (methods ``vit_trades`` / ``vit_mart``): the same ARD / PRM inner
  max of TRADES's KL / MART's CE from ``x + 0.001 N(0, 1)``, beta 6, plain
  labels (no Mixup).
* ``mixup=false``: no Mixup/CutMix (hard-label CE; ``mixup_prob=0``).
* ``eps_warmup=E``: eps grows linearly over the first E epochs, constant
  within an epoch and 0 in the first (Debenedetti et al.'s light recipe; NOT
  Mo et al.'s, whose code keeps eps fixed).
* ``model=NAME``: another ViT (``vit_s``, ``vit_b``, ``deit_s``,
  ``vit_small_patch16_224``), patch 4.

``:local`` — CPU scale on the bundled CIFAR-10: ``vit_cifar_tiny`` (patch 4,
width 128, depth 4), 5 epochs (``epochs=N``), PGD-3 of 3/255 in training,
n_w and the LR decays scaled with the epochs (n_w = E/4, decays at 35/40 and
38/40 of E); the rest as the full recipe. One step of batch 64 takes about
2.4 s on the shared 2-core machine (PGD-3; 4.6 s with PGD-10).
``:smoke`` — 4 steps of ``vit_cifar_tiny`` on a slice of the data (tests).
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.errors import ConfigError
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_local, apply_smoke, default_config, parse_arg

PATCH = 4  # the ViT's patch size; PRM masks the same grid.
OBJECTIVES = ("at", "trades", "mart")


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False, ard=True, prm=True, mixup=True,
                  eps_warmup=0.0, epochs=0, model="deit_ti", objective="at")
  c = default_config()
  c.model.name = arg.model
  c.model.normalize = "cifar10"
  c.model.kwargs = dict(patch_size=PATCH)
  if arg.objective not in OBJECTIVES:
    raise ConfigError(f"unknown objective {arg.objective!r}; choose one of {OBJECTIVES}")
  # AT: uniform start, CE; TRADES: KL to the clean output, MART: CE, both from x + 0.001 N(0,1).
  attack = dict(name="pgd", step_size=2 / 255, num_steps=10,
                loss="kl" if arg.objective == "trades" else "ce",
                random_start="uniform" if arg.objective == "at" else "normal")
  if arg.prm:
    attack.update(name="pgd_prm", patch_size=PATCH, prm_mode="faithful")
  schedule = dict(attention_random_drop=arg.ard, warmup_epochs=10.0, keep_final=1.0,
                  attack_bn="eval", eps_warmup_epochs=arg.eps_warmup)
  if arg.objective == "at":
    c.method = method_config("vit_pgd_at", attack=attack, **schedule, mixup_alpha=0.8,
                             cutmix_alpha=1.0, mixup_prob=0.3 if arg.mixup else 0.0,
                             mixup_switch_prob=0.5, label_smoothing=0.0)
  else:  # the official TRADES / MART branches: plain labels, beta 6.
    c.method = method_config(f"vit_{arg.objective}", attack=attack, **schedule, beta=6.0)
  t = c.train
  t.batch_size = 64
  t.num_epochs = 40
  t.optimizer = "sgd"
  t.lr = 0.1
  t.momentum = 0.9
  t.weight_decay = 1e-4
  t.weight_decay_mask = "all"
  t.clip_by_global_norm = 1.0
  t.schedule = "piecewise"
  t.boundaries_epochs = (35.0, 38.0)  # E - 5 and E - 2, checked every iteration.
  t.scales = (0.1, 0.1)
  c.eval.val_attack = attack_config("pgd", step_size=2 / 255, num_steps=10, loss="ce",
                                    random_start="uniform")
  c.eval.test_attack = attack_config("pgd", step_size=2 / 255, num_steps=20, loss="ce",
                                     random_start="uniform", early_stop=True)
  if arg.local or arg.smoke:
    epochs = arg.epochs or 5
    apply_local(c, model="vit_cifar_tiny", num_epochs=epochs)
    # apply_local's one-cycle budget is for the CNNs: keep the recipe's optimiser, scaled.
    t.lr, t.weight_decay, t.schedule = 0.1, 1e-4, "piecewise"
    t.boundaries_epochs = (epochs * 35 / 40, epochs * 38 / 40)
    c.method.warmup_epochs = epochs / 4
    c.method.attack.update(num_steps=3, step_size=3 / 255)
  elif arg.epochs:
    t.num_epochs = arg.epochs
    t.boundaries_epochs = (arg.epochs - 5.0, arg.epochs - 2.0)
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c, model="vit_cifar_tiny")
  return c
