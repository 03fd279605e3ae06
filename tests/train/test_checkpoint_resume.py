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


# --- integrity: digests, NaN/inf, fallback on resume ----------------------------------------


def _with_kernel_scaled(state, factor):
  """``state`` with its first conv kernel multiplied by ``factor`` (everything else equal)."""
  params = jax.tree_util.tree_map_with_path(
      lambda p, a: a * factor if "convs" in jax.tree_util.keystr(p) and "kernel" in
      jax.tree_util.keystr(p) and "[0]" in jax.tree_util.keystr(p) else a, state.params)
  return state.replace(params=params)


def _swap_state(ck_dir, src_step, dst_step, which="latest"):
  """Puts ``src_step``'s arrays under ``dst_step`` (whose meta and digests stay)."""
  import shutil  # pylint: disable=g-import-not-at-top
  dst = ck_dir / which / str(dst_step) / "state"
  shutil.rmtree(dst)
  shutil.copytree(ck_dir / which / str(src_step) / "state", dst)


def test_digest_names_the_array_that_changed(tmp_path):
  from jaxrobust.checkpoint import DamagedCheckpointError  # pylint: disable=g-import-not-at-top
  state = _state()
  ck = Checkpointer(str(tmp_path / "ck"), keep=5)
  ck.save(1, state, {"model": "m"})
  ck.save(2, _with_kernel_scaled(state, 1.001), {"model": "m"})  # finite, plausible
  _swap_state(tmp_path / "ck", 2, 1)
  with pytest.raises(DamagedCheckpointError, match=r"latest/1 is damaged: the content of 1 of "
                     r"\d+ arrays \(\['params'\]\['convs'\]\[0\]\['kernel'\].*SHA-256"):
    ck.restore(state, step=1)
  restored, _ = ck.restore(state, step=2)  # the intact one still loads
  assert (tmp_path / "ck" / "latest" / "1").exists()  # refused, not deleted


def test_digests_do_not_depend_on_sharding(tmp_path):
  from jaxrobust.checkpoint import array_digest, host_leaves  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(8)
  state = _state()
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(1, parallel.replicate(state, mesh), {"model": "m"})
  meta = json.loads((tmp_path / "ck" / "latest" / "1" / "meta" / "metadata").read_text())
  saved = meta["integrity"]["arrays"]
  expect = {k: array_digest(np.asarray(v)) for k, v in host_leaves(
      {f: getattr(state, f) for f in ("step", "params", "batch_stats", "opt_state",
                                      "ema_params", "rng")})}
  assert saved == expect
  # A batch-sharded array's host copy is the whole array.
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  sharded = jax.device_put(x, parallel.data_sharding(mesh))
  assert len(sharded.addressable_shards) == 8
  (_, host), = host_leaves({"x": sharded})
  np.testing.assert_array_equal(host, x)
  assert array_digest(host) == array_digest(x) != array_digest(x + 1)


def test_save_refuses_nonfinite_state(tmp_path):
  from jaxrobust.checkpoint import NonFiniteStateError  # pylint: disable=g-import-not-at-top
  state = _state()
  opt = jax.tree.map(lambda a: a + np.inf if a.dtype == np.float32 else a, state.opt_state)
  ck = Checkpointer(str(tmp_path / "ck"))
  with pytest.raises(NonFiniteStateError, match="NaN/inf.*opt_state") as info:
    ck.save(1, state.replace(opt_state=opt), {"model": "m"})
  assert info.value.leaves and all("opt_state" in n for n in info.value.leaves)
  assert ck.latest_step() is None  # nothing written


def _save_without_digest(ck_dir, step, state):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from jaxrobust.checkpoint import _drop_frozen  # pylint: disable=g-import-not-at-top
  mgr = ocp.CheckpointManager(str(ck_dir / "latest"), item_names=("state", "meta"),
                              options=ocp.CheckpointManagerOptions(
                                  create=True, enable_async_checkpointing=False))
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_drop_frozen(state)),
                                         meta=ocp.args.JsonSave({"model": "m"})), force=True)
  mgr.close()


def test_checkpoint_without_digest_loads_with_a_warning(tmp_path, caplog):
  state = _state()
  _save_without_digest(tmp_path / "ck", 3, state)
  with caplog.at_level("WARNING", logger="jaxrobust"):
    restored, meta = Checkpointer(str(tmp_path / "ck")).restore(_state(), expect_meta={"model": "m"})
  assert "no content digests" in caplog.text and meta == {"model": "m"}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_falls_back_past_damaged_checkpoints_only_when_asked(tmp_path, caplog):
  from jaxrobust.checkpoint import DamagedCheckpointError  # pylint: disable=g-import-not-at-top
  ck_dir = tmp_path / "ck"
  s1, s2 = _state(), _with_kernel_scaled(_state(), 2.0)
  s2 = s2.replace(step=s2.step + 2)
  ck = Checkpointer(str(ck_dir), keep=5)
  ck.save(1, s1, {"model": "m"})
  ck.save(2, s2, {"model": "m"})
  _swap_state(ck_dir, 1, 2)  # latest/2 now holds other arrays than its digests say
  # An old-format checkpoint (no digest) holding inf: refused by the finiteness check.
  bad = s1.replace(params=jax.tree.map(lambda a: a * np.inf, s1.params), step=s1.step + 3)
  _save_without_digest(ck_dir, 3, bad)
  ck = Checkpointer(str(ck_dir), keep=5)
  with pytest.raises(DamagedCheckpointError, match="latest/3 is damaged.*NaN/inf"):
    ck.restore(s1)  # evaluation-style: no fallback, nothing moved
  assert sorted(int(p.name) for p in (ck_dir / "latest").iterdir()) == [1, 2, 3]
  with caplog.at_level("WARNING", logger="jaxrobust"):
    restored, _ = ck.restore(s1, fallback=True, expect_meta={"model": "m"})
  assert int(restored.step) == int(s1.step)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(restored.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert caplog.text.count("CHECKPOINT DAMAGED") == 2
  assert ck.latest_step() == 1
  assert sorted(p.name for p in (ck_dir / "damaged").iterdir()) == ["latest_2", "latest_3"]
  ck.save(2, s2, {"model": "m"})  # training goes on: the step is free again
  assert ck.restore(s1, step=2)[0].step == s2.step


def test_fallback_with_nothing_intact_moves_nothing(tmp_path):
  from jaxrobust.checkpoint import DamagedCheckpointError  # pylint: disable=g-import-not-at-top
  ck_dir = tmp_path / "ck"
  state = _state()
  ck = Checkpointer(str(ck_dir))
  ck.save(1, state, {"model": "m"})
  ck.save(2, _with_kernel_scaled(state, 3.0), {"model": "m"})
  _swap_state(ck_dir, 2, 1)
  (ck_dir / "latest" / "2" / "meta" / "metadata").write_text("{not json")
  with pytest.raises(DamagedCheckpointError, match="latest/2.*no older intact checkpoint"):
    Checkpointer(str(ck_dir)).restore(state, fallback=True)
  assert sorted(p.name for p in (ck_dir / "latest").iterdir()) == ["1", "2"]
  assert not (ck_dir / "damaged").exists()
