"""The named evaluation attacks of the RSLAD table (Jia et al. 2022, Table 1).

* ``clean``
* ``fgsm``: one step of size eps, no random start.
* ``pgd20``: PGD-20, CE, step eps/4 (2/255), uniform start ("PGD_SAT").
* ``pgd20_trades``: the TRADES protocol (``yaodongyu/TRADES:
  pgd_attack_cifar10.py``): eps 0.031, step 0.003, 20 steps, uniform start.
* ``cw30``: CW-inf, 30 PGD steps of eps/4 on the CW hinge loss with kappa=50,
  uniform start (``ZFancy/IAD:basic_eval.py``).

Also (not in the default list), the evaluation of Mo et al.'s ViT paper
(``mo666666/When-Adversarial-Training-Meets-Vision-Transformers:pgd.py``):

* ``cw20``: 20 PGD steps of eps/4 on the margin floored at -10
  (``CW_loss``: ``max(max_{j != y} z_j - z_y, -10)``, attack loss
  ``margin_floor``), uniform start, only still-correct points updated
  (``early_stop``).
* ``pgd100``: PGD-100, CE, step eps/4, uniform start, only still-correct
  points updated (``attack_pgd``).

(Mo et al.'s PGD-20 is ``pgd20`` with ``early_stop``; the trainer's test
attack of ``configs/cifar10_vit_pgd_at.py`` runs it.)

``--eps`` rescales every budget and step proportionally (for L2, the steps are
eps/4 and the TRADES protocol uses eps and step eps * 0.003 / 0.031). The
evaluation CLI passes the run's own ``config.eps`` / ``config.norm`` when its
config has them and no flag overrides them. Each entry is an attack config of
the attack registry (:func:`jaxrobust.attacks.attack_from_config`).
"""
from __future__ import annotations

from jaxrobust.errors import ConfigError

DEFAULT_SUITE = ("clean", "fgsm", "pgd20", "pgd20_trades", "cw30")
# Named evaluations outside the default list (Mo et al.'s ViT protocol).
EXTRA_SUITE = ("cw20", "pgd100")
SUITE_NAMES = DEFAULT_SUITE + EXTRA_SUITE


def suite_attacks(names, eps: float | None = None, norm: str = "linf") -> dict:
  """``{name: attack config or None}`` for the requested evaluation names.

  Args:
    names: iterable of names from :data:`SUITE_NAMES`.
    eps: budget in pixel units; None -> 8/255 (L-inf) or 0.5 (L2).
    norm: ``'linf'`` or ``'l2'``.

  Raises:
    ConfigError: unknown name or norm.
  """
  if norm not in ("linf", "l2"):
    raise ConfigError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
  if eps is not None and not eps > 0:
    raise ConfigError(f"eps must be > 0 (pixel units), got {eps}")
  if eps is None:
    eps = 8 / 255 if norm == "linf" else 0.5
  trades_eps = 0.031 if (norm == "linf" and abs(eps - 8 / 255) < 1e-9) else eps
  out = {}
  for name in names:
    if name == "clean":
      out[name] = None
    elif name == "fgsm":
      out[name] = dict(name="fgsm", eps=eps, step_size=eps, norm=norm, random_start="none")
    elif name == "pgd20":
      out[name] = dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=20, norm=norm,
                       loss="ce", random_start="uniform")
    elif name == "pgd20_trades":
      out[name] = dict(name="pgd", eps=trades_eps, step_size=trades_eps * 0.003 / 0.031,
                       num_steps=20, norm=norm, loss="ce", random_start="uniform")
    elif name == "cw30":
      out[name] = dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=30, norm=norm,
                       loss="cw", kappa=50.0, random_start="uniform")
    elif name == "cw20":
      out[name] = dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=20, norm=norm,
                       loss="margin_floor", random_start="uniform", early_stop=True)
    elif name == "pgd100":
      out[name] = dict(name="pgd", eps=eps, step_size=eps / 4, num_steps=100, norm=norm,
                       loss="ce", random_start="uniform", early_stop=True)
    else:
      raise ConfigError(f"unknown evaluation {name!r}; choose from {SUITE_NAMES} (or an "
                        f"AutoAttack version: aa-standard, aa-plus, aa-rand, aa-custom)")
  return out
