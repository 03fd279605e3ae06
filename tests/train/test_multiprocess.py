"""Multi-host code path: 2 local processes x 2 CPU devices through jax.distributed."""
import json
import os
import subprocess

import pytest

from .helpers import REPO

pytestmark = pytest.mark.slow


def test_two_processes_train_and_report(tmp_path, data_dir):
  del data_dir
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
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
