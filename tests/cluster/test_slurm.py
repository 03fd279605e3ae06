"""launch/slurm.sbatch under a real (single-node) Slurm: 2 tasks x 2 CPU devices, a preemption
signal mid-run, requeue, resume, and the final parameters of a 1-process run.

Needs slurmctld/slurmd/munged (``launch/slurm_single_node.sh install``, root); skipped without
them unless ``JAXROBUST_REQUIRE_SLURM=1`` (``.ci/run`` sets it once it has installed Slurm).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrobust.checkpoint import Checkpointer
from jaxrobust.models import create_model
from jaxrobust.train import create_train_state, default_config, make_optimizer

from ..train.helpers import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NUM_STEPS = 16  # 2 epochs of 8 steps (256 images, batch 32)
OVERRIDES = [f"--config.train.num_steps={NUM_STEPS}", "--config.train.keep_checkpoints=30",
             "--config.train.log_every_steps=2", "--config.eval.every_epochs=0"]
SMOKE = str(REPO / "configs" / "cifar10_pgd_at.py") + ":smoke"


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")) + \
      f" --xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [
      os.environ.get("PYTHONPATH")] if p])
  env.update(extra)
  return env


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  """``SLURM_CONF`` of a single-node cluster started for this module (stopped after it)."""
  if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
    msg = "Slurm is not installed (run: launch/slurm_single_node.sh install)"
    if os.environ.get("JAXROBUST_REQUIRE_SLURM") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  state = tmp_path_factory.mktemp("slurm")
  script = str(REPO / "launch" / "slurm_single_node.sh")
  up = subprocess.run(["bash", script, "start", str(state)], capture_output=True, text=True,
                      timeout=120)
  assert up.returncode == 0, up.stdout + up.stderr
  conf = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
  yield conf
  subprocess.run(["bash", script, "stop", str(state)], timeout=60)


def _job_field(conf: str, job: str, field: str) -> str:
  out = subprocess.run(["scontrol", "show", "job", job], env=dict(os.environ, SLURM_CONF=conf),
                       capture_output=True, text=True, timeout=30).stdout
  m = re.search(rf"\b{field}=(\S+)", out)
  return m.group(1) if m else ""


def _final_params(*workdirs):
  """The parameters of step NUM_STEPS of each workdir (one restore target built for all)."""
  tx = make_optimizer(default_config().train, 10, 10)
  target = create_train_state(create_model("simple_cnn_tiny"), tx, seed=3, ema=False)[1]
  return [Checkpointer(str(w / "checkpoints"), keep=30).restore(target, step=NUM_STEPS)[0].params
          for w in workdirs]


def test_sbatch_preempt_requeue_resume_equals_one_process(slurm, tmp_path, data_dir):
  # The reference: one process with the same 4 devices, global batch and seed. It runs while
  # the Slurm job does (that job spends much of its time waiting for Slurm: start, requeue).
  ref_log = tmp_path / "ref.log"
  with open(ref_log, "w", encoding="utf-8") as f:
    ref = subprocess.Popen([sys.executable, "-m", "jaxrobust.train", "--config", SMOKE,
                            "--workdir", str(tmp_path / "ref"), *OVERRIDES], cwd=REPO,
                           env=_env(4), stdout=f, stderr=subprocess.STDOUT)
  try:
    _sbatch_preempt_requeue_resume(slurm, tmp_path, data_dir)
    assert ref.wait(timeout=600) == 0, ref_log.read_text()[-3000:]
  finally:
    if ref.poll() is None:
      ref.kill()
      ref.wait()

  workdir = tmp_path / "run"
  got, want = _final_params(workdir, tmp_path / "ref")
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  # The test set, split over the two processes and gathered, gives the 1-process figures.
  report = json.loads((workdir / "report.json").read_text())
  ref_report = json.loads((tmp_path / "ref" / "report.json").read_text())
  assert report["last"] == ref_report["last"] and report["last"]["count"] == 100


def _sbatch_preempt_requeue_resume(slurm, tmp_path, data_dir):
  """The 2-task job in ``tmp_path/run``: USR1 after its first metrics, requeue, resume."""
  workdir, log = tmp_path / "run", tmp_path / "slurm.out"
  env = _env(2, SLURM_CONF=slurm, PYTHON=sys.executable, JAXROBUST_DATA_DIR=str(data_dir))
  job = subprocess.run(
      ["sbatch", "--parsable", "--gpus-per-node=0", "--nodes=1", "--ntasks-per-node=2",
       f"--output={log}", str(REPO / "launch" / "slurm.sbatch"), SMOKE, str(workdir),
       *OVERRIDES], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert job.returncode == 0, job.stderr
  job_id = job.stdout.strip().split(";")[0]

  metrics = workdir / "logs" / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().strip()):
    assert time.time() < deadline, log.read_text() if log.exists() else "no job output"
    time.sleep(0.05)
  # What Slurm does before a time limit (--signal=B:USR1@120): USR1 to the batch shell.
  subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=env, check=True,
                 timeout=30)

  # A requeued job may start again once its credential expired (cred_expire=10 s in the
  # single-node config; Slurm's default holds it 120 s). Starting it earlier by hand races
  # the revocation of the old credential ("Job credential revoked").
  deadline = time.time() + 600
  while (state := _job_field(slurm, job_id, "JobState")) not in ("COMPLETED", "FAILED",
                                                                  "CANCELLED", "TIMEOUT"):
    assert time.time() < deadline, f"job {job_id} still {state}:\n{log.read_text()}"
    time.sleep(1)
  out = log.read_text()
  ctld = pathlib.Path(slurm).parent / "log" / "slurmctld.log"
  assert state == "COMPLETED", out[-3000:] + "\nslurmctld:\n" + ctld.read_text()[-2000:]
  assert _job_field(slurm, job_id, "Restarts") == "1"
  stopped = re.findall(r"preempted \(SIGUSR1\): saved the checkpoint of step (\d+)", out)
  assert len(stopped) == 2 and len(set(stopped)) == 1, out[-3000:]  # both tasks, one step
  assert 2 <= int(stopped[0]) < NUM_STEPS
  assert f"requeueing job {job_id}" in out and "(restart 1)" in out
