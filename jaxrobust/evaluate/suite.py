"""The named evaluation attacks, each the protocol of the evaluation code it is named after.

The columns of the distillation tables (RSLAD, Zi et al. 2021; IAD, Zhu et al.
2022) and the TRADES / MART READMEs are measured with different settings; each
name below is one protocol, with the code that ran it (all untargeted, CE
unless stated, eval-mode BatchNorm, every random start clipped to [0, 1]):

* ``clean``
* ``fgsm``: FGSM (Goodfellow et al. 2015): one signed step of size eps from
  ``x``, no random start. The textbook attack; none of the official
  evaluation scripts of this family runs it.
* ``fgsm_iad``: IAD's FGSM (``ZFancy/IAD:basic_eval.py`` ->
  ``attack_generator.eval_robust(perturb_steps=1, step_size=eps,
  random=True)``): a uniform start in the eps-ball, then one signed step of
  eps, projected. The script prints "FGSM without Random Start" but passes
  ``random=True``; this is what its FGSM figures measure.
* ``pgd20``: "PGD_SAT" (Madry et al.'s setting as IAD's ``basic_eval.py``
  and the AWP / Rice et al. code run it): 20 steps of eps/4 (2/255), uniform
  start, eps 8/255.
* ``pgd20_trades``: the TRADES protocol (``yaodongyu/TRADES:
  pgd_attack_cifar10.py``, also MART's): 20 steps of 0.003, uniform start, eps
  **0.031**. (The script takes its first gradient at the unclipped start.)
* ``pgd20_rslad``: RSLAD's evaluation (``zibojia/RSLAD:
  resnet18_rslad_cifar10.py`` -> ``rslad_loss.attack_pgd(attack_iters=20,
  step_size=0.003, epsilon=8/255)``): 20 steps of 0.003, uniform start, eps
  **8/255** -- the TRADES step at the 8/255 budget, RSLAD's "PGD_TRADES".
* ``cw30``: CW-inf (``ZFancy/IAD:basic_eval.py``): 30 steps of eps/4 on the
  CW hinge loss with kappa = 50, uniform start.

Also (not in the default list), the evaluation of Mo et al.'s ViT paper
(``mo666666/When-Adversarial-Training-Meets-Vision-Transformers:pgd.py``):

* ``cw20``: 20 PGD steps of eps/4 on the margin floored at -10
  (``CW_loss``: ``max(max_{j != y} z_j - z_y, -10)``, attack loss
  ``margin_floor``), uniform start, only still-correct points updated
  (``early_stop``).
* ``pgd20_mo``: PGD-20, CE, step eps/4, uniform start, only still-correct
  points updated (``attack_pgd`` with 20 iterations): ``pgd20`` with
  ``early_stop``, the paper's PGD-20 column and the trainer's test attack of
  ``configs/cifar10_vit_pgd_at.py``. A point fooled at some step stays fooled,
  so it reads at most ``pgd20``'s accuracy.
* ``pgd100``: PGD-100, CE, step eps/4, uniform start, only still-correct
  points updated (``attack_pgd``).

``--eps`` rescales every budget and step proportionally (for L2 the steps are
eps/4; the TRADES protocol uses eps and step eps * 0.003 / 0.031, RSLAD's
step eps * 0.003 / (8/255)). The evaluation CLI passes the run's own
``config.eps`` / ``config.norm`` when its config has them and no flag
overrides them. Each entry is an attack config of the attack registry
(:func:`jaxrobust.attacks.attack_from_config`).
"""
from __future__ import annotations

from jaxrobust.errors import ConfigError

DEFAULT_SUITE = ("clean", "fgsm", "fgsm_iad", "pgd20", "pgd20_trades", "pgd20_rslad", "cw30")
# The code each name reproduces (see the module docstring).
PROTOCOL_SOURCES = {
    "fgsm": "Goodfellow et al. 2015 (no random start)",
    "fgsm_iad": "ZFancy/IAD:basic_eval.py (random=True)",
    "pgd20": "PGD_SAT: ZFancy/IAD:basic_eval.py, csdongxian/AWP",
    "pgd20_trades": "yaodongyu/TRADES:pgd_attack_cifar10.py",
    "pgd20_rslad": "zibojia/RSLAD:resnet18_rslad_cifar10.py",
    "cw30": "ZFancy/IAD:basic_eval.py",
    "cw20": "mo666666/When-Adversarial-Training-Meets-Vision-Transformers:pgd.py",
    "pgd20_mo": "mo666666/When-Adversarial-Training-Meets-Vision-Transformers:pgd.py",
    "pgd100": "mo666666/When-Adversarial-Training-Meets-Vision-Transformers:pgd.py",
}
# Named evaluations outside the default list (Mo et al.'s ViT protocol).
EXTRA_SUITE = ("cw20", "pgd20_mo", "pgd100")
SUITE_NAMES = DEFAULT_SUITE + EXTRA_SUITE
_LINF_8 = 8 / 255


def suite_attacks(names, eps: float | None = None, norm: str = "linf") -> dict:
  """``{name: attack config or None}`` for the requested evaluation names.

  Args:
    names: iterable of names from :data:`SUITE_NAMES` (each one protocol;
      see the module docstring and :data:`PROTOCOL_SOURCES`).
    eps: budget in pixel units; None -> 8/255 (L-inf) or 0.5 (L2).
    norm: ``'linf'`` or ``'l2'``.

  Returns:
    name -> the attack config (``clean``: None), eps / step in pixel units.

  Raises:
    ConfigError: unknown name or norm, or eps <= 0.
  """
  if norm not in ("linf", "l2"):
    raise ConfigError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
  if eps is not None and not eps > 0:
    raise ConfigError(f"eps must be > 0 (pixel units), got {eps}")
  if eps is None:
    eps = _LINF_8 if norm == "linf" else 0.5
  at_8 = norm == "linf" and abs(eps - _LINF_8) < 1e-9
  trades_eps = 0.031 if at_8 else eps  # TRADES states its budget as 0.031.
  rslad_step = 0.003 if at_8 else eps * 0.003 / _LINF_8
  out = {}
  for name in names:
    if name == "clean":
      out[name] = None
    elif name == "fgsm":
      out[name] = dict(name="fgsm", eps=eps, step_size=eps, norm=norm, random_start="none")
    elif name == "fgsm_iad":
      out[name] = dict(name="fgsm", eps=eps, step_size=eps, norm=norm, random_start="uniform")
    elif name == "pgd20":
      out[name] = dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=20, norm=norm,
                       loss="ce", random_start="uniform")
    elif name == "pgd20_trades":
      out[name] = dict(name="pgd", eps=trades_eps, step_size=trades_eps * 0.003 / 0.031,
                       num_steps=20, norm=norm, loss="ce", random_start="uniform")
    elif name == "pgd20_rslad":
      out[name] = dict(name="pgd", eps=eps, step_size=rslad_step, num_steps=20, norm=norm,
                       loss="ce", random_start="uniform")
    elif name == "cw30":
      out[name] = dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=30, norm=norm,
                       loss="cw", kappa=50.0, random_start="uniform")
    elif name == "cw20":
      out[name] = dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=20, norm=norm,
                       loss="margin_floor", random_start="uniform", early_stop=True)
    elif name in ("pgd20_mo", "pgd100"):
      out[name] = dict(name="pgd", eps=eps, step_size=eps / 4,
                       num_steps=20 if name == "pgd20_mo" else 100, norm=norm,
                       loss="ce", random_start="uniform", early_stop=True)
    else:
      raise ConfigError(f"unknown evaluation {name!r}; choose from {SUITE_NAMES} (or an "
                        f"AutoAttack version: aa-standard, aa-plus, aa-rand, aa-custom)")
  return out
