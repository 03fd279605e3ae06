"""launch/tpu_vm.sh: the commands it runs for a pod slice (dry run and through a stub gcloud)."""
from __future__ import annotations

import os
import subprocess

import pytest

from ..train.helpers import REPO

SCRIPT = str(REPO / "launch" / "tpu_vm.sh")
ARGS = ["my-tpu", "us-central2-b", "configs/cifar10_pgd_at.py", "gs://b/runs/x",
        "--config.eps=0.02"]


def _stub_gcloud(tmp_path):
  """A ``gcloud`` on PATH that appends its arguments (one call per line) to a log."""
  stub = tmp_path / "bin" / "gcloud"
  stub.parent.mkdir()
  stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {tmp_path}/gcloud.log\n')
  stub.chmod(0o755)
  return dict(os.environ, PATH=f"{stub.parent}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("accelerator,hosts,devices", [
    ("v4-32", 4, 16), ("v3-8", 1, 8), ("v5p-128", 16, 64), ("v5litepod-16", 4, 16),
    ("v6e-8", 1, 8)])
def test_dry_run_prints_the_slice_and_runs_nothing(tmp_path, accelerator, hosts, devices):
  env = _stub_gcloud(tmp_path)
  out = subprocess.run(["bash", SCRIPT, "--dry-run", "--accelerator", accelerator, *ARGS],
                       env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert not (tmp_path / "gcloud.log").exists()  # nothing was run
  lines = out.stdout.splitlines()
  assert lines[0].startswith(f"# {accelerator}: {hosts} worker(s), ")
  assert f"{devices} JAX device(s)" in lines[0]
  assert f"jax.process_count() == {hosts}, jax.device_count() == {devices}" in lines[1]
  cmds = lines[2:]
  assert len(cmds) == 3 and all(c.startswith("gcloud compute tpus tpu-vm ") for c in cmds)
  assert "--worker=all" in cmds[0] and f"{REPO} my-tpu:~/jaxrobust" in cmds[0]
  assert 'pip install -q -e ".[tpu]"' in cmds[1]
  assert cmds[2].endswith(
      "'cd ~/jaxrobust && JAXROBUST_DISTRIBUTED=1 ${PYTHON:-python3} -m jaxrobust.train "
      "--config configs/cifar10_pgd_at.py --workdir gs://b/runs/x --config.eps=0.02'")


def test_without_dry_run_the_same_commands_run(tmp_path):
  env = _stub_gcloud(tmp_path)
  dry = subprocess.run(["bash", SCRIPT, "--dry-run", *ARGS], env=env, capture_output=True,
                       text=True, timeout=60)
  real = subprocess.run(["bash", SCRIPT, *ARGS], env=env, capture_output=True, text=True,
                        timeout=60)
  assert real.returncode == 0, real.stderr
  calls = (tmp_path / "gcloud.log").read_text().splitlines()
  assert len(calls) == 3
  for printed, called in zip(dry.stdout.splitlines(), calls):
    # The stub sees the arguments after the shell removed the quotes.
    assert printed.replace("'", "").replace('"', "") == "gcloud " + called.replace('"', "")


def test_unknown_slice_type_is_refused(tmp_path):
  out = subprocess.run(["bash", SCRIPT, "--dry-run", "--accelerator", "v9-8", *ARGS],
                       env=_stub_gcloud(tmp_path), capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and "unknown accelerator type v9-8" in out.stderr
