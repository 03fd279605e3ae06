"""PNG plots of a RiFT run (matplotlib, Agg backend)."""
from __future__ import annotations

from typing import Sequence

from jaxrobust.weights.plots import plot_interpolation as _plot_interpolation
from jaxrobust.weights.plots import pyplot as _pyplot


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
  _plot_interpolation(records, path, chosen_alpha, title="RiFT weight interpolation",
                      xlabel="alpha (0 = adversarially trained, 1 = fine-tuned)")
