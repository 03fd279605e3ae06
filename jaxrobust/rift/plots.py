"""PNG plots of a RiFT run (matplotlib, Agg backend)."""
from __future__ import annotations

from typing import Sequence


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_mrc(rows: Sequence[dict], path: str, chosen: str | None = None) -> None:
  """Bar charts of MRC and robust-accuracy drop per module (model order)."""
  plt = _pyplot()
  names = [r["name"] for r in rows]
  fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(rows) + 2), 6), sharex=True)
  colors = ["tab:green" if n == chosen else "tab:blue" for n in names]
  axes[0].bar(range(len(rows)), [r["mrc"] for r in rows], color=colors)
  axes[0].set_ylabel("MRC (robust loss increase)")
  axes[0].set_title("Module robust criticality" + (f" (fine-tuned: {chosen})" if chosen else ""))
  axes[1].bar(range(len(rows)), [100 * r["acc_drop"] for r in rows], color=colors)
  axes[1].set_ylabel("robust acc. drop (pp)")
  axes[1].set_xticks(range(len(rows)), names, rotation=90, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_interpolation(records: Sequence[dict], path: str, chosen_alpha: float | None = None
                       ) -> None:
  """Validation clean / robust / OOD accuracy against the interpolation alpha."""
  plt = _pyplot()
  alphas = [r["alpha"] for r in records]
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label in (("clean", "clean"), ("robust", "robust (PGD)"), ("ood", "OOD (corrupted)")):
    if all(key in r and r[key] is not None for r in records):
      ax.plot(alphas, [100 * r[key] for r in records], marker="o", label=label)
  if chosen_alpha is not None:
    ax.axvline(chosen_alpha, color="gray", linestyle="--", label=f"chosen alpha={chosen_alpha}")
  ax.set_xlabel("alpha (0 = adversarially trained, 1 = fine-tuned)")
  ax.set_ylabel("validation accuracy (%)")
  ax.set_title("RiFT weight interpolation")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
