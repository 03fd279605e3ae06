"""Shared entry-point plumbing: CPU defaults, logging, one-line errors."""
from __future__ import annotations

import os
import sys

# XLA:CPU defaults chosen from the measurements in BENCHMARKS.md; a user's own
# XLA_FLAGS always win (we only add flags that are not already set).
CPU_XLA_FLAGS = ()


def apply_cpu_defaults() -> None:
  """Adds the library's default XLA:CPU flags to ``XLA_FLAGS`` (before jax import)."""
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in CPU_XLA_FLAGS:
    name = flag.split("=")[0]
    if name not in flags:
      flags = f"{flags} {flag}".strip()
  if flags:
    os.environ["XLA_FLAGS"] = flags


def run_main(main, argv=None) -> None:
  """Runs ``main`` under absl; JaxRobustError -> one ``error:`` line, exit 2."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from jaxrobust.errors import JaxRobustError  # pylint: disable=g-import-not-at-top

  def wrapped(args):
    try:
      return main(args)
    except JaxRobustError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  try:
    app.run(wrapped, argv=argv)
  except SystemExit:
    raise
