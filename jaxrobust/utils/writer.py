"""Metric writing: TensorBoard event files (tensorboardX) and a JSONL log."""
from __future__ import annotations

import json
import math
import os


class MetricWriter:
  """Writes scalars to ``<logdir>/events.*`` and ``<logdir>/metrics.jsonl``.

  Only process 0 writes; on other hosts the writer is a no-op.
  """

  def __init__(self, logdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      os.makedirs(logdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(logdir)
      self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, metrics: dict) -> None:
    """Writes ``{name: float}`` at ``step``."""
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": int(step), **{
        k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
