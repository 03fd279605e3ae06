r"""PGD-AT on MNIST, L-inf eps 0.3, SmallCNN (the TRADES MNIST model).

Full setup: PGD-40 with step 0.01 and uniform start (Madry et al. 2018,
``MadryLab/mnist_challenge:config.json``), SmallCNN without input
normalisation, SGD(0.9) lr 0.01, batch 128, 100 epochs decayed x0.1 at 55, 75
and 90 (``yaodongyu/TRADES:train_trades_mnist.py``), no augmentation.
Evaluation: PGD-40 (0.01), eps 0.3. Reference: TRADES SmallCNN 99.48 clean,
92.46 under its strongest white-box attack (METHODS section 3).

    python -m jaxrobust.train --config configs/mnist_pgd_at.py --workdir runs/mnist

``:local`` — a CPU-scale run on the bundled MNIST (minutes): FGSM-AT with
random init (eps 0.3, step 0.375; Wong et al. 2020's MNIST setting),
2 epochs, one-cycle LR.
"""
from jaxrobust.attacks.threat import attack_config
from jaxrobust.methods import method_config
from jaxrobust.train.defaults import apply_smoke, default_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, local=False, smoke=False)
  c = default_config()
  c.data.name = "mnist"
  c.data.augment = False
  c.data.pad_mode = "constant"  # unused without augmentation (not PGD-AT's CIFAR reflect).
  c.model.name = "small_cnn"
  c.model.normalize = "none"
  c.eps = 0.3  # every attack: training, validation, test.
  c.method = method_config("pgd_at", attack=dict(name="pgd", step_size=0.01, num_steps=40,
                                                 loss="ce", random_start="uniform"))
  c.train.batch_size = 128
  c.train.num_epochs = 100
  c.train.lr = 0.01
  c.train.weight_decay = 0.0
  c.train.boundaries = (0.55, 0.75, 0.90)
  c.train.scales = (0.1, 0.1, 0.1)
  c.eval.val_attack = attack_config("pgd", step_size=0.01, num_steps=40,
                                    random_start="uniform")
  c.eval.test_attack = attack_config("pgd", step_size=0.01, num_steps=40,
                                     random_start="uniform")
  if arg.local or arg.smoke:
    c.method = method_config("fgsm_at", attack=dict(name="fgsm", step_size=0.375,
                                                    random_start="uniform"))
    c.train.num_epochs = 2
    c.train.lr = 0.05
    c.train.schedule = "cyclic"
    c.train.cyclic_peak, c.train.cyclic_base_momentum = 0.4, -1.0  # as measured.
    c.train.log_every_steps = 20
    c.eval.val_attack = attack_config("pgd", step_size=0.05, num_steps=10,
                                      random_start="uniform")
  if arg.smoke:  # a few steps, for tests.
    apply_smoke(c, model="small_cnn_tiny")
  return c
