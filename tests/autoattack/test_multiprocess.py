"""AutoAttack across 2 processes (jax.distributed, 2 CPU devices each) = 1 process with 4 devices."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("mp_autoattack.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAXROBUST_DISTRIBUTED") and not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             **extra)
  return env


def _load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def test_two_process_autoattack_equals_one_process(tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  single.mkdir()
  multi.mkdir()
  one = subprocess.run([sys.executable, str(SCRIPT), str(single)], env=_env(4),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(SCRIPT), str(multi)],
      env=_env(2, JAXROBUST_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    for p in procs:
      _, err = p.communicate(timeout=600)
      assert p.returncode == 0, err[-3000:]
  finally:  # a failed or hung process must not keep its peer waiting at the coordinator.
    for p in procs:
      if p.poll() is None:
        p.kill()

  ref = _load(single / "result_0.npz")
  assert int(ref["process_count"]) == 1 and int(ref["device_count"]) == 4
  acc = json.loads(str(ref["robust_accuracy"]))
  # The case exercises every stage: points misclassified from the start, points the
  # attacks break, points left robust for the later attacks.
  assert acc["clean"] == 0.85 and 0 < acc["apgd_t"] < acc["clean"], acc
  for i in range(2):
    got = _load(multi / f"result_{i}.npz")
    assert int(got["process_count"]) == 2 and int(got["device_count"]) == 4
    assert json.loads(str(got["robust_accuracy"])) == acc
    np.testing.assert_array_equal(got["robust"], ref["robust"])
    np.testing.assert_allclose(got["x_adv"], ref["x_adv"], rtol=0, atol=1e-6)
  # One writer: process 0 saved the resumable state, and it holds the same flags.
  meta = json.loads((multi / "state" / "aa_state.json").read_text())
  assert meta["robust_accuracy"] == acc
  with np.load(multi / "state" / "aa_state.npz") as z:
    np.testing.assert_array_equal(z["robust"], ref["robust"])
