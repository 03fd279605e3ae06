"""Preemption signals and one writer per workdir, for training runs.

:class:`PreemptionGuard` notes SIGTERM / SIGUSR1 (Slurm sends SIGUSR1 ahead of
a time limit with ``--signal``, SIGTERM on preemption or ``scancel``) and tells
the training loop, between steps, when to save a checkpoint and stop; every
process of a multi-host job stops at the same step. The loop then raises
:class:`jaxrobust.errors.Preempted`; the entry points exit with
:data:`jaxrobust.errors.EXIT_PREEMPTED`, on which ``launch/slurm.sbatch``
requeues the job.

:class:`WorkdirLock` takes ``<workdir>/.lock`` (``fcntl.flock``) for the
lifetime of a run, so that a second process started on the same workdir (two
jobs, a requeued job racing the old one) is refused instead of interleaving
checkpoints. The kernel drops the lock when its owner dies, so the lock of a
dead run is simply taken over.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import logging
import os
import signal
import socket
import threading

import jax
import numpy as np

from jaxrobust.errors import WorkdirInUseError

log = logging.getLogger("jaxrobust")

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
LOCK_NAME = ".lock"


def _preemption_sync_manager():
  """JAX's preemption sync manager of this multi-process job, or None."""
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.preemption_sync_manager
  except (ImportError, AttributeError):
    return None


class PreemptionGuard:
  """Notes SIGTERM/SIGUSR1 and answers, after each step, "save and stop now?".

  Use as a context manager around the training loop (it installs the signal
  handlers on entry and puts the previous ones back on exit) and call
  :meth:`should_stop` once after every step with the new step count. Nothing
  runs inside the jitted step; the handler only sets a Python flag.

  Modes (``self.mode``):

  * ``'local'`` (one process): stop after the step during which the first
    signal arrived.
  * ``'jax'`` (multi-process, JAX's preemption service on, the default): SIGTERM
    is left to JAX's preemption notifier and SIGUSR1 is handed on to it as a
    SIGTERM; :func:`jax.experimental.multihost_utils.reached_preemption_sync_point`
    picks the step (the largest step any process has reached, plus one) at
    which every process saves, so no host saves alone.
  * ``'allgather'`` (multi-process without the preemption service): every
    process's flag is gathered after each step (one small host collective per
    step) and all stop once any process was signalled.

  Source: JAX, ``jax/experimental/multihost_utils.py``
  (``reached_preemption_sync_point``) and the multi-process guide.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}
    self._warned = False
    if jax.process_count() == 1:
      self.mode = "local"
    elif _preemption_sync_manager() is not None:
      self.mode = "jax"  # its SIGTERM notifier (a C++ handler) was installed by initialize().
    else:
      self.mode = "allgather"

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is not threading.main_thread():
      log.warning("training outside the main thread: SIGTERM/SIGUSR1 are not handled (a "
                  "preemption loses the steps since the last checkpoint)")
      return self
    for sig in PREEMPTION_SIGNALS:
      if self.mode == "jax" and sig == signal.SIGTERM:
        continue
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
    if self.mode == "jax":  # let JAX's notifier start the step agreement.
      os.kill(os.getpid(), signal.SIGTERM)

  @property
  def signalled(self) -> bool:
    """True once this process received SIGTERM or SIGUSR1."""
    return self.signal_name is not None

  def should_stop(self, step: int) -> bool:
    """True when every process should save a checkpoint at ``step`` and stop.

    Args:
      step: the number of training steps done (the state's ``step``); called
        once after every step, on every process, from the same start step.
    """
    if self.mode == "local":
      return self.signalled
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if self.mode == "jax":
      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      flags = multihost_utils.process_allgather(np.int32(self.signalled))
      stop = bool(np.max(flags))
    if stop and self.signal_name is None:
      self.signal_name = "preemption notice"
    return stop


class WorkdirLock:
  """``<workdir>/.lock``, held by one process for the lifetime of a run.

  Process 0 takes an exclusive ``fcntl.flock`` on the file (atomic; released
  by the kernel when the process exits or dies, so a dead run's lock is taken
  over) and writes its pid, host and start time into it; in a multi-process
  job the outcome is broadcast so every process refuses together. A file
  system without lock support (some network file systems) logs a warning and
  runs unlocked.

  Raises (on entry):
    WorkdirInUseError: another live process holds the lock; the message names
      its pid and host.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    owner = None
    if jax.process_index() == 0:
      owner = self._acquire()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      busy = int(multihost_utils.broadcast_one_to_all(np.int32(owner is not None)))
      if busy and owner is None:
        owner = "see process 0's error"
    if owner is not None:
      raise WorkdirInUseError(
          f"--workdir {os.path.dirname(self.path)} is in use by another run ({owner}; lock "
          f"{self.path}); wait for it to finish or stop it, or use another --workdir")
    return self

  def _acquire(self) -> str | None:
    """Takes the lock; returns None, or a description of the live owner."""
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        try:
          owner = os.read(fd, 512).decode("utf-8", "replace").strip() or "owner unknown"
        finally:
          os.close(fd)
        return owner
      os.close(fd)
      log.warning("cannot lock %s (%s); this file system has no file locks, so nothing stops "
                  "a second run from writing to the same workdir", self.path, e.strerror or e)
      return None
    previous = os.read(fd, 512).decode("utf-8", "replace").strip()
    if previous:
      log.info("took over the lock of a finished run (%s)", previous)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
    self._fd = fd
    return None

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # a clean exit leaves no owner behind.
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
