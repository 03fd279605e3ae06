"""PNG plots of weight-space sweeps (matplotlib, Agg backend): interpolation curves, re-init tables."""
from __future__ import annotations

from typing import Sequence


def pyplot():
  """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_interpolation(records: Sequence[dict], path: str, chosen_alpha: float | None = None,
                       title: str = "Weight interpolation (WiSE-FT)",
                       xlabel: str = "alpha (0 = first run, 1 = second run)") -> None:
  """Validation clean / robust (/ OOD) accuracy against the interpolation alpha.

  Args:
    records: ``[{'alpha', 'clean', 'robust'[, 'ood']}]``, accuracies in [0, 1]
      (what :func:`jaxrobust.weights.sweep` returns).
    path: the PNG to write.
    chosen_alpha: drawn as a dashed vertical line when given.
  """
  plt = pyplot()
  alphas = [r["alpha"] for r in records]
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in (("clean", "clean"), ("robust", "robust (PGD)"), ("ood", "OOD (corrupted)")):
    if all(key in r and r[key] is not None for r in records):
      ax.plot(alphas, [100 * r[key] for r in records], marker="o", label=label)
  if chosen_alpha is not None:
    ax.axvline(chosen_alpha, color="gray", linestyle="--", label=f"chosen alpha={chosen_alpha:g}")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("validation accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_reinit(rows: Sequence[dict], path: str, baseline: dict | None = None) -> None:
  """Clean and robust accuracy per module after re-initialisation (one panel per metric).

  Args:
    rows: ``[{'module', 'mode', 'clean', 'robust'}]`` in model order
      (:func:`jaxrobust.weights.reinit_analysis`), accuracies in [0, 1].
    path: the PNG to write.
    baseline: ``{'clean', 'robust'}`` of the trained model, drawn as lines.
  """
  plt = pyplot()
  modules = list(dict.fromkeys(r["module"] for r in rows))
  modes = list(dict.fromkeys(r["mode"] for r in rows))
  acc = {(r["module"], r["mode"]): r for r in rows}
  width = 0.8 / max(len(modes), 1)
  fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(modules) + 2), 6), sharex=True)
  for ax, key in zip(axes, ("clean", "robust")):
    for j, mode in enumerate(modes):
      xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(modules))]
      ax.bar(xs, [100 * acc[(m, mode)][key] if (m, mode) in acc else 0 for m in modules],
             width=width, label=mode)
    if baseline is not None:
      ax.axhline(100 * baseline[key], color="black", linestyle="--", label="trained")
    ax.set_ylabel(f"val {key} acc. (%)")
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_title("Accuracy after re-initialising one module")
  axes[0].legend(fontsize=8)
  axes[1].set_xticks(range(len(modules)), modules, rotation=90, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


__all__ = ["plot_interpolation", "plot_reinit", "pyplot"]
