"""The library's XLA:CPU defaults reach XLA whenever they still can.

XLA reads ``XLA_FLAGS`` once, when JAX creates its backend, so each case runs
in a fresh interpreter.
"""
import os
import subprocess
import sys

import pytest

from jaxrobust.cli import CPU_XLA_FLAGS

FLAG = CPU_XLA_FLAGS[0]


def _run(code: str, **env) -> subprocess.CompletedProcess:
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXROBUST_XLA_DEFAULTS")}
  return subprocess.run([sys.executable, "-W", "always", "-c", code], env={**base, **env},
                        capture_output=True, text=True, timeout=120, check=True)


REPORT = "import os; print('FLAGS=' + os.environ.get('XLA_FLAGS', ''))"


@pytest.mark.parametrize("prelude", ["", "import jax\n"])
def test_defaults_applied_before_backend_starts(prelude):
  # Importing jax first is fine: its backend does not exist until first use.
  out = _run(prelude + "import jaxrobust\n" + REPORT)
  assert f"FLAGS={FLAG}" in out.stdout
  assert "RuntimeWarning" not in out.stderr


def test_user_flags_win_and_are_kept():
  name = FLAG.split("=")[0]
  out = _run("import jaxrobust\n" + REPORT,
             XLA_FLAGS=f"--xla_cpu_enable_fast_math=false {name}=individual_dot")
  assert out.stdout.strip() == f"FLAGS=--xla_cpu_enable_fast_math=false {name}=individual_dot"


def test_too_late_warns_and_opt_out_is_silent():
  late = "import jax\njax.numpy.ones(1).block_until_ready()\nimport jaxrobust\n" + REPORT
  out = _run(late)
  assert "FLAGS=\n" in out.stdout or out.stdout.strip() == "FLAGS="
  assert "RuntimeWarning" in out.stderr and "Import jaxrobust before" in out.stderr
  quiet = _run(late, JAXROBUST_XLA_DEFAULTS="0")
  assert "RuntimeWarning" not in quiet.stderr
  assert quiet.stdout.strip() == "FLAGS="
