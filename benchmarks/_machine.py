"""Machine facts and CPU-load accounting shared by the benchmark scripts (Linux)."""
from __future__ import annotations

import os
import platform
import subprocess
import time


def cpu_threads() -> int:
  """CPUs this process may run on: the size of XLA:CPU's intra-op pool."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux.
    return os.cpu_count() or 1


def cpu_model() -> str:
  """The CPU's model name from ``lscpu`` (or ``platform.processor()``)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or "unknown"


def busy_cpu_s() -> float:
  """CPU-seconds all processes have spent busy since boot (``/proc/stat``)."""
  with open("/proc/stat", encoding="ascii") as f:
    vals = [int(v) for v in f.readline().split()[1:]]
  idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
  return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s(children: bool = False) -> float:
  """CPU-seconds of this process (plus its waited-for children if asked)."""
  t = os.times()
  own = t.user + t.system
  return own + t.children_user + t.children_system if children else own


def call_times(fn, repeats: int) -> list[float]:
  """Wall seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call.

  ``fn`` must block until its result is ready (e.g. ``jax.block_until_ready``).
  """
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times
