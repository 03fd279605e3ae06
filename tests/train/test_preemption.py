"""Preemption (SIGTERM/SIGUSR1 -> checkpoint at the current step, exit 75, resume) and one
writer per workdir (``<workdir>/.lock``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrobust.checkpoint import Checkpointer
from jaxrobust.errors import EXIT_PREEMPTED, WorkdirInUseError
from jaxrobust.models import create_model
from jaxrobust.train import create_train_state, default_config, make_optimizer
from jaxrobust.train.preemption import PreemptionGuard, WorkdirLock

from .helpers import REPO

NUM_STEPS = 24  # 3 epochs of 8 steps (256 images, batch 32); checkpoints at epoch ends.


def _train_cmd(workdir):
  return [sys.executable, "-m", "jaxrobust.train", "--config",
          str(REPO / "configs" / "cifar10_pgd_at.py") + ":smoke", "--workdir", str(workdir),
          f"--config.train.num_steps={NUM_STEPS}", "--config.train.keep_checkpoints=30",
          "--config.train.log_every_steps=2", "--config.eval.every_epochs=0"]


def _steps(workdir):
  latest = workdir / "checkpoints" / "latest"
  return sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())


def _restore(workdir, step):
  tx = make_optimizer(default_config().train, 10, 10)
  target = create_train_state(create_model("simple_cnn_tiny"), tx, seed=3, ema=False)[1]
  return Checkpointer(str(workdir / "checkpoints"), keep=30).restore(target, step=step)


def _assert_same_state(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit-identical


def _wait_for_first_log_line(proc, workdir, timeout=120):
  """Blocks until the run has logged its first metrics (step 2): it is mid-run, lock held."""
  log = workdir / "logs" / "metrics.jsonl"
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if log.exists() and log.read_text().strip():
      return
    time.sleep(0.005)
  raise AssertionError(f"the run logged nothing (exit status {proc.poll()})")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """``(state, meta)`` at the last step of an uninterrupted run."""
  workdir = tmp_path_factory.mktemp("full")
  subprocess.run(_train_cmd(workdir), check=True, cwd=REPO, capture_output=True)
  assert _steps(workdir)[-1] == NUM_STEPS
  return _restore(workdir, NUM_STEPS)


def _preempt(workdir, sig):
  """Starts a run, sends ``sig`` once it is mid-run; checks the stop; returns its step."""
  proc = subprocess.Popen(_train_cmd(workdir), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_first_log_line(proc, workdir)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
  last = [ln for ln in err.splitlines() if ln.strip()][-1]
  prefix = f"preempted ({sig.name}): saved the checkpoint of step "
  assert last.startswith(prefix), last
  step = int(last[len(prefix):].split()[0])
  # Stopped mid-run at the step it was on: that checkpoint is the newest, nothing after it.
  assert 2 <= step < NUM_STEPS
  assert _steps(workdir)[-1] == step
  assert f"checkpoints/latest/{step} " in last
  state, meta = _restore(workdir, step)
  assert int(state.step) == step and meta["epoch"] == step / 8
  logged = [json.loads(ln)["step"] for ln in (workdir / "logs" / "metrics.jsonl").open()]
  assert max(logged) <= step
  assert not (workdir / "report.json").exists()
  assert (workdir / ".lock").read_text() == ""  # released, no owner left behind
  return step


def test_sigusr1_saves_the_current_step_and_exits_75(tmp_path):
  _preempt(tmp_path / "run", signal.SIGUSR1)


def test_sigterm_saves_the_current_step_exits_75_and_resumes_bit_identical(
    tmp_path, uninterrupted):
  workdir = tmp_path / "run"
  _preempt(workdir, signal.SIGTERM)
  # Rerunning the same command resumes to the same final state as the uninterrupted run.
  done = subprocess.run(_train_cmd(workdir), cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  state, meta = _restore(workdir, NUM_STEPS)
  _assert_same_state(uninterrupted[0], state)
  assert meta["data"] == uninterrupted[1]["data"]
  assert json.loads((workdir / "report.json").read_text())["last"]["step"] == NUM_STEPS


def test_second_process_on_a_workdir_is_refused_and_the_first_is_untouched(
    tmp_path, uninterrupted):
  workdir = tmp_path / "run"
  first = subprocess.Popen(_train_cmd(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  _wait_for_first_log_line(first, workdir)
  first.send_signal(signal.SIGSTOP)  # keeps it mid-run (lock held) however slow the second is
  try:
    second = subprocess.run(_train_cmd(workdir), cwd=REPO, capture_output=True, text=True,
                            timeout=120)
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 2
  errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, second.stderr[-3000:]
  assert errors[0].startswith(f"error: --workdir {workdir} is in use by another run "
                              f"(pid {first.pid} on host "), errors[0]
  _, err = first.communicate(timeout=120)
  assert first.returncode == 0, err[-3000:]
  _assert_same_state(uninterrupted[0], _restore(workdir, NUM_STEPS)[0])


def test_rift_refuses_a_workdir_in_use(tmp_path):
  with WorkdirLock(str(tmp_path)):
    out = subprocess.run(
        [sys.executable, "-m", "jaxrobust.rift", "--config",
         str(REPO / "configs" / "cifar10_rift.py"), "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith(
      f"error: --workdir {tmp_path} is in use by another run (pid {os.getpid()} on host ")


def test_lock_of_a_dead_process_is_taken_over_and_a_live_one_is_not(tmp_path):
  lock = tmp_path / ".lock"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import fcntl, os, sys, time\n"
       f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
       "fcntl.flock(fd, fcntl.LOCK_EX)\n"
       "os.write(fd, f'pid {os.getpid()} on host h'.encode())\n"
       "print('locked', flush=True)\ntime.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirInUseError, match=rf"in use by another run \(pid {holder.pid} on "
                       r"host h; lock .*\.lock\); wait for it to finish or stop it"):
      with WorkdirLock(str(tmp_path)):
        pass
  finally:
    holder.kill()
    holder.wait()
  # The holder died without cleaning up: its file (and pid) remain, its lock does not.
  assert lock.read_text() == f"pid {holder.pid} on host h"
  with WorkdirLock(str(tmp_path)):
    assert lock.read_text().startswith(f"pid {os.getpid()} on host ")
    with pytest.raises(WorkdirInUseError):  # one writer, also within one process
      WorkdirLock(str(tmp_path)).__enter__()
  assert lock.read_text() == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_guard_stops_after_a_signal_and_restores_the_handlers(sig):
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
  with PreemptionGuard() as guard:
    assert guard.mode == "local"
    assert not guard.should_stop(1)
    os.kill(os.getpid(), sig)  # Python runs the handler before the next bytecode
    assert guard.should_stop(2) and guard.signal_name == sig.name
  assert {s: signal.getsignal(s) for s in before} == before


def _stub(path, text):
  path.write_text(text)
  path.chmod(0o755)


@pytest.mark.parametrize("sig", ["USR1", "TERM"])
def test_slurm_script_forwards_the_signal_and_requeues_on_75(tmp_path, sig):
  """launch/slurm.sbatch with stub srun/scontrol and a stub trainer that exits 75 on a signal."""
  _stub(tmp_path / "srun", '#!/usr/bin/env bash\nexec "$@"\n')
  _stub(tmp_path / "scontrol", f'#!/usr/bin/env bash\necho "$*" >> {tmp_path}/scontrol.log\n')
  _stub(tmp_path / "python", f"#!{sys.executable}\n" + (
      "import signal, sys, time\n"
      "got = []\n"
      "for s in (signal.SIGUSR1, signal.SIGTERM):\n"
      "  signal.signal(s, lambda n, f: got.append(signal.Signals(n).name))\n"
      "print('args', *sys.argv[1:], flush=True)\n"
      "deadline = time.time() + 30\n"
      "while not got and time.time() < deadline:\n"
      "  time.sleep(0.01)\n"
      "time.sleep(0.3)  # still saving when the script's wait is interrupted\n"
      "print('trainer got', *got, flush=True)\n"
      f"sys.exit({EXIT_PREEMPTED} if got else 0)\n"))
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", PYTHON=str(tmp_path / "python"),
             SLURM_JOB_ID="123")
  job = subprocess.Popen(["bash", str(REPO / "launch" / "slurm.sbatch"), "cfg.py", "wd", "--x=1"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in job.stdout:
    lines.append(line.strip())
    if line.startswith("args"):
      break
  job.send_signal(getattr(signal, f"SIG{sig}"))  # what Slurm sends the batch shell
  rest, _ = job.communicate(timeout=60)
  lines += rest.splitlines()
  assert job.returncode == 0, lines
  assert lines[1] == "args -m jaxrobust.train --config cfg.py --workdir wd --x=1"
  assert f"trainer got SIG{sig}" in lines
  assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "123"]

  # Any other exit status is the job's status, without a requeue.
  (tmp_path / "scontrol.log").unlink()
  _stub(tmp_path / "python", "#!/usr/bin/env bash\nexit 3\n")
  done = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), "cfg.py", "wd"],
                        env=env, capture_output=True, text=True, timeout=60)
  assert done.returncode == 3 and not (tmp_path / "scontrol.log").exists()


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("service", ["true", "false"], ids=["sync_point", "allgather"])
def test_two_processes_stop_at_the_same_step_when_one_is_signalled(tmp_path, service):
  """Multi-host: SIGUSR1 to process 1 only -> both save at one step and exit 75, through JAX's
  preemption sync point, or (preemption service off) a per-step gather of the flags."""
  workdir, port = tmp_path / "run", _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_ENABLE_PREEMPTION_SERVICE"] = service
  procs = []
  for i in range(2):
    procs.append(subprocess.Popen(
        _train_cmd(workdir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=dict(env, JAXROBUST_DISTRIBUTED="1", JAX_PLATFORMS="cpu",
                            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                            JAX_PROCESS_ID=str(i),
                            XLA_FLAGS="--xla_force_host_platform_device_count=2")))
  try:
    _wait_for_first_log_line(procs[0], workdir)  # process 0 writes the logs
    procs[1].send_signal(signal.SIGUSR1)
    errs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [EXIT_PREEMPTED] * 2, [e[-2000:] for e in errs]
  lasts = [[ln for ln in e.splitlines() if ln.strip()][-1] for e in errs]
  assert lasts[0].startswith("preempted (preemption notice): saved the checkpoint of step ")
  assert lasts[1].startswith("preempted (SIGUSR1): saved the checkpoint of step ")
  steps = {int(ln.split("of step ")[1].split()[0]) for ln in lasts}
  assert len(steps) == 1, lasts  # one step for every process
  step = steps.pop()
  assert 2 <= step < NUM_STEPS and _steps(workdir)[-1] == step
  assert int(_restore(workdir, step)[0].step) == step


def test_a_save_killed_before_its_rename_leaves_no_latest(tmp_path):
  """Orbax writes ``latest/<step>`` into a temporary directory and renames it when complete:
  a process killed at that point (all files written, no rename) leaves the older step newest."""
  ck_dir = tmp_path / "ck"
  script = (
      "import os, sys\n"
      "import orbax.checkpoint._src.path.atomicity as atomicity\n"
      "from jaxrobust.checkpoint import Checkpointer\n"
      "from jaxrobust.models import create_model\n"
      "from jaxrobust.train import create_train_state, default_config, make_optimizer\n"
      "tx = make_optimizer(default_config().train, 10, 10)\n"
      "state = create_train_state(create_model('simple_cnn_tiny'), tx, seed=3, ema=False)[1]\n"
      f"ck = Checkpointer({str(ck_dir)!r}, keep=30)\n"
      "ck.save(1, state.replace(step=state.step + 1), {'model': 'm'})\n"
      "async def killed(self):\n"
      "  os._exit(9)\n"
      "atomicity.AtomicRenameTemporaryPath.finalize = killed\n"
      "ck.save(2, state.replace(step=state.step + 2), {'model': 'm'})\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 9, out.stderr[-2000:]
  names = sorted(p.name for p in (ck_dir / "latest").iterdir())
  assert "1" in names and "2" not in names
  assert any(n.startswith("2.orbax-checkpoint-tmp") for n in names)  # the unfinished write
  ck = Checkpointer(str(ck_dir), keep=30)
  tx = make_optimizer(default_config().train, 10, 10)
  target = create_train_state(create_model("simple_cnn_tiny"), tx, seed=3, ema=False)[1]
  assert ck.latest_step() == 1
  state, meta = ck.restore(target, fallback=True, expect_meta={"model": "m"})
  assert int(state.step) == 1 and meta["model"] == "m"
  ck.save(2, state.replace(step=state.step + 1), {"model": "m"})  # the resumed run saves step 2
  assert ck.restore(target, step=2)[0].step == 2


def test_async_save_survives_donation_and_restores_exactly(tmp_path):
  """``async_save``: save() returns before the files are written; the caller may donate the
  saved arrays at once (as the jitted train step does) and the checkpoint still holds them."""
  tx = make_optimizer(default_config().train, 10, 10)
  state = create_train_state(create_model("simple_cnn_tiny"), tx, seed=3, ema=True)[1]
  expected = jax.tree.map(lambda a: np.array(a, copy=True), state)
  ck = Checkpointer(str(tmp_path / "ck"), keep=5, async_save=True)
  ck.save(1, state, {"model": "m"})
  state = jax.jit(lambda t: jax.tree.map(lambda a: a + 1, t), donate_argnums=0)(state)
  ck.save(2, state, {"model": "m"})  # waits for the first write, then starts the next
  ck.close()
  restored, meta = Checkpointer(str(tmp_path / "ck"), keep=5).restore(expected, step=1)
  _assert_same_state(expected, restored)  # also checked against the saved SHA-256 digests
  assert meta["model"] == "m"
  restored2, _ = Checkpointer(str(tmp_path / "ck"), keep=5).restore(expected, step=2)
  _assert_same_state(state, restored2)
