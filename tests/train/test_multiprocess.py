"""Multi-host code path: 2 local processes x 2 CPU devices through jax.distributed."""
import json
import os
import subprocess
import sys

import pytest

from .helpers import REPO

pytestmark = pytest.mark.slow


def test_two_processes_train_and_report(tmp_path, data_dir):
  del data_dir
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHON"] = sys.executable  # the script runs this interpreter, not whatever is on PATH.
  out = subprocess.run(
      ["bash", str(REPO / "launch" / "multiprocess_cpu.sh"), "2", "2",
       str(REPO / "configs" / "cifar10_pgd_at.py") + ":smoke", str(tmp_path / "run")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  # Both processes joined one 4-device computation (gloo collectives over 4 ranks).
  assert "Expected number of connected peer ranks is : 3" in out.stdout + out.stderr
  report = json.loads((tmp_path / "run" / "report.json").read_text())
  assert report["last"]["step"] == 4 and report["last"]["count"] == 100
  assert (tmp_path / "run" / "checkpoints" / "latest" / "4").is_dir()


def test_launch_scripts_run_the_python_in_PYTHON(tmp_path):
  """launch/*.sh run "$PYTHON" (here a stub that prints its arguments), not `python` on PATH."""
  stub = tmp_path / "stub_python"
  stub.write_text('#!/usr/bin/env bash\necho "stub $JAX_PROCESS_ID $*"\n')
  stub.chmod(0o755)
  env = dict(os.environ, PYTHON=str(stub))
  local = subprocess.run(["bash", str(REPO / "launch" / "local.sh"), "cfg.py", "wd", "--x=1"],
                         env=env, capture_output=True, text=True, timeout=60)
  assert local.returncode == 0, local.stderr
  assert local.stdout.split() == ["stub", "-m", "jaxrobust.train", "--config", "cfg.py",
                                  "--workdir", "wd", "--x=1"]
  multi = subprocess.run(["bash", str(REPO / "launch" / "multiprocess_cpu.sh"), "2", "1",
                          "cfg.py", "wd"], env=env, capture_output=True, text=True, timeout=60)
  assert multi.returncode == 0, multi.stderr
  assert sorted(multi.stdout.splitlines()) == [
      f"stub {i} -m jaxrobust.train --config cfg.py --workdir wd" for i in range(2)]
