"""Runs named evaluations (suite attacks and AutoAttack) on a trained model."""
from __future__ import annotations

import time

import jax
import numpy as np

from jaxrobust.data import ArrayDataset
from jaxrobust.errors import ConfigError
from jaxrobust.evaluate.autoattack import AutoAttackSettings, run_autoattack
from jaxrobust.accuracy import evaluate_model
from jaxrobust.evaluate.suite import SUITE_NAMES, suite_attacks

AA_NAMES = ("aa-standard", "aa-plus", "aa-rand", "aa-custom")


def evaluation_names() -> list[str]:
  """Every name ``--attacks`` accepts: the suite's and AutoAttack's (``aa-*``)."""
  return list(SUITE_NAMES) + list(AA_NAMES)


def canonical_evaluation_name(name: str) -> str:
  """``name`` in its canonical spelling: ``'aa_standard'`` -> ``'aa-standard'``.

  Raises:
    ConfigError: unknown name; the message lists every valid name.
  """
  key = str(name).strip().lower()
  if key.startswith("aa_"):
    key = "aa-" + key[3:]
  if key in SUITE_NAMES or key in AA_NAMES:
    return key
  raise ConfigError(f"unknown evaluation {name!r}; choose from {evaluation_names()} "
                    f"(AutoAttack also as aa_standard, ...)")


def evaluate_names(trained, test: ArrayDataset, names, eps, norm, *, batch_size, mesh,
                   seed=0, aa_attacks=(), aa_state=None, save_adv=None, verbose=False,
                   should_stop=None) -> dict:
  """Accuracy of ``trained`` on ``test`` for each evaluation name.

  Args:
    trained: a restored model (``jaxrobust.train.restore.TrainedModel``);
      a stochastic one gets a fresh key in every forward pass.
    test: the examples.
    names: evaluation names (:func:`evaluation_names`; ``aa_standard`` is
      accepted for ``aa-standard``).
    eps: budget in pixel units; None: 8/255 (L-inf) or 0.5 (L2).
    norm: ``'linf'`` or ``'l2'``.
    batch_size, mesh, seed: as :func:`jaxrobust.evaluate.evaluate_model`.
    aa_attacks: the cascade of ``aa-custom`` (registered names or their
      hyphen spellings, e.g. ``apgd-ce,square``).
    aa_state: AutoAttack resume directory.
    should_stop: with ``aa_state``, polled between AutoAttack batches; a
      signal name stops the evaluation after saving its state
      (:func:`jaxrobust.evaluate.autoattack.run_autoattack`).
    save_adv: ``.npz`` path for the AutoAttack adversarial examples.
    verbose: print a table.

  Returns:
    ``{'accuracy': {name: acc}, 'seconds': {name: s}, 'attacks': {name: cfg}}``
    plus ``'autoattack'`` (per-attack cumulative robust accuracy, times,
    warnings) when an ``aa-*`` name is requested.

  Raises:
    ConfigError: an unknown name (checked before anything runs), more than
      one AutoAttack version, or invalid settings.
  """
  out = {"accuracy": {}, "seconds": {}, "attacks": {}}
  names = [canonical_evaluation_name(n) for n in names]
  suite = [n for n in names if n not in AA_NAMES]
  aa = [n for n in names if n in AA_NAMES]
  if len(aa) > 1:
    raise ConfigError(f"run one AutoAttack version at a time, got {aa}")
  cfgs = suite_attacks(suite, eps, norm)
  for name, cfg in cfgs.items():
    t0 = time.time()
    acc = evaluate_model(trained.model_fns, trained.params, trained.batch_stats, test,
                         {name: cfg}, batch_size, mesh, seed, desc=name if verbose else None)
    out["accuracy"][name] = acc[name]
    out["seconds"][name] = round(time.time() - t0, 2)
    out["attacks"][name] = cfg
    if verbose:
      print(f"{name:>14s}: {100 * acc[name]:6.2f} %   ({out['seconds'][name]:.1f} s)", flush=True)
  if aa:
    name = aa[0]
    version = name.split("-", 1)[1]
    if eps is None:
      eps = 8 / 255 if norm == "linf" else 0.5
    settings = AutoAttackSettings.for_version(
        eps, norm, version, attacks=tuple(aa_attacks) if version == "custom" else None)
    t0 = time.time()
    res = run_autoattack(trained.logits_fn(), test.images, test.labels, settings,
                         batch_size=batch_size, mesh=mesh, seed=seed, state_dir=aa_state,
                         progress=verbose, should_stop=should_stop)
    out["accuracy"][name] = float(res.robust.mean())
    out["seconds"][name] = round(time.time() - t0, 2)
    out["attacks"][name] = {"eps": settings.eps, "norm": norm, "version": version,
                            "attacks": list(settings.attacks)}
    out["autoattack"] = {"robust_accuracy": res.robust_accuracy, "seconds": res.seconds,
                         "warnings": res.warnings}
    if verbose:
      for k, v in res.robust_accuracy.items():
        t = res.seconds.get(k)
        print(f"{'AA ' + k:>14s}: {100 * v:6.2f} %" + (f"   ({t:.1f} s)" if t else ""))
      print(f"{name:>14s}: {100 * out['accuracy'][name]:6.2f} %   "
            f"({out['seconds'][name]:.1f} s)", flush=True)
    if save_adv and jax.process_index() == 0:
      np.savez_compressed(save_adv, x_adv=res.x_adv, robust=res.robust, labels=test.labels)
  return out


def plot_curve(curve: dict, path: str, norm: str) -> None:
  """Robust accuracy vs eps (one line per attack) saved as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  eps = sorted(curve, key=float)
  attacks = sorted({a for e in eps for a in curve[e]})
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for a in attacks:
    ax.plot([float(e) for e in eps], [100 * curve[e].get(a, np.nan) for e in eps], "o-",
            label=a)
  ax.set_xlabel(f"eps ({norm}, x 1/255)")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
