"""Checkpoint round trip, kill-and-resume equality, corrupt/mismatched checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrobust import parallel
from jaxrobust.checkpoint import Checkpointer
from jaxrobust.errors import CheckpointError
from jaxrobust.models import create_model
from jaxrobust.train import create_train_state, default_config, make_optimizer

from .helpers import REPO

pytestmark = pytest.mark.slow


def _state(model="simple_cnn_tiny", ema=True):
  tx = make_optimizer(default_config().train, 10, 10)
  return create_train_state(create_model(model), tx, seed=3, ema=ema)[1]


def test_round_trip_into_abstract_tree(tmp_path):
  state = _state()
  state = state.replace(step=state.step + 7)
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(7, state, {"data": {"epoch": 1, "index": 2}, "model": "m"}, best=True)
  target = _state()  # different values, same structure
  for which in ("latest", "best"):
    restored, meta = ck.restore(target, which, expect_meta={"model": "m"})
    assert meta["data"] == {"epoch": 1, "index": 2}
    assert type(restored) is type(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ck.close()


def test_restore_into_sharded_target(tmp_path):
  mesh = parallel.make_mesh(8)
  state = parallel.replicate(_state(), mesh)
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(1, state, {"model": "m"})
  restored, _ = ck.restore(state)
  leaf = jax.tree.leaves(restored.params)[0]
  assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)


def test_mismatched_model_is_a_clear_error(tmp_path):
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(1, _state("simple_cnn_tiny"), {"model": "a"})
  with pytest.raises(CheckpointError, match="does not match this run"):
    ck.restore(_state("resnet_tiny"), expect_meta={"model": "b"})
  with pytest.raises(CheckpointError, match="different model"):
    ck.restore(_state("resnet_tiny"))


def test_corrupt_checkpoint_is_a_clear_error_and_kept(tmp_path):
  ck = Checkpointer(str(tmp_path / "ck"))
  state = _state()
  ck.save(1, state, {"model": "m"})
  step_dir = tmp_path / "ck" / "latest" / "1" / "state"
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert files
  for p in files:
    p.write_bytes(b"\x00garbage" * 3)
  with pytest.raises(CheckpointError, match="corrupt"):
    ck.restore(state)
  assert step_dir.exists()  # the saved work is not deleted


def _train_cmd(workdir, extra=()):
  return [sys.executable, "-m", "jaxrobust.train", "--config",
          str(REPO / "configs" / "cifar10_pgd_at.py") + ":smoke", "--workdir", str(workdir),
          "--config.train.num_steps=12", "--config.train.checkpoint_every_steps=2",
          "--config.train.keep_checkpoints=30", *extra]


def _final_params(workdir):
  state = _state(ema=False)
  ck = Checkpointer(str(workdir / "checkpoints"), keep=30)
  restored, meta = ck.restore(state, step=12)
  return restored, meta


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
  env = dict(os.environ)
  full = tmp_path / "full"
  subprocess.run(_train_cmd(full), check=True, env=env, cwd=REPO, capture_output=True)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_train_cmd(killed), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  latest = killed / "checkpoints" / "latest"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if latest.exists() and any(p.name.isdigit() and int(p.name) >= 4 for p in latest.iterdir()):
      break
    time.sleep(0.005)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
  assert steps and steps[-1] < 12 and not (killed / "report.json").exists()

  subprocess.run(_train_cmd(killed), check=True, env=env, cwd=REPO, capture_output=True)
  a, meta_a = _final_params(full)
  b, meta_b = _final_params(killed)
  assert meta_a["data"] == meta_b["data"]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  report = json.loads((killed / "report.json").read_text())
  assert report["last"]["step"] == 12
