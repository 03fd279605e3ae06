"""A thin Orbax wrapper: periodic latest checkpoints plus the best one.

Layout under ``directory``::

    latest/<step>/{state, meta}   the newest ``keep`` checkpoints (resume from here)
    best/<step>/{state, meta}     the single best by the selection metric

``state`` is the :class:`~jaxrobust.train.state.TrainState` pytree
(``StandardSave``), ``meta`` a JSON dict (data-iterator position, epoch, best
metric, model fingerprint, content digests). Saves are atomic (Orbax writes
``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>`` once complete),
so a killed run leaves only complete checkpoints behind; an unfinished
temporary directory is never read. With ``async_save`` the files are written
in a background thread after :meth:`Checkpointer.save` returns (the arrays are
copied to the host first, so the caller may donate or overwrite them);
:meth:`Checkpointer.restore`, :meth:`Checkpointer.wait` and
:meth:`Checkpointer.close` wait for pending writes.

Integrity: every save records the SHA-256 of each saved array (of its host
copy: dtype, shape and bytes) under ``meta['integrity']`` and refuses a state
holding NaN/inf; every restore recomputes the digests and refuses a checkpoint
whose arrays changed after saving (a bit flip, a partial copy, an edited file)
or that holds NaN/inf, with a :class:`DamagedCheckpointError` naming it. Only a
resumed training run (``restore(..., fallback=True)``) then falls back to an
older intact checkpoint, moving the damaged one to ``<directory>/damaged/`` and
logging a warning; evaluation and teacher loading refuse. Checkpoints written
before digests existed load with a warning (their finiteness is still checked).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxrobust.errors import CheckpointError
from jaxrobust.parallel import host_array

log = logging.getLogger("jaxrobust")

INTEGRITY_KEY = "integrity"
DIGEST_ALGORITHM = "sha256"
_DEFAULT_FIX = ("rerun the training command in the same --workdir to resume from an older "
                "intact checkpoint (it moves this one aside), or move it away yourself")


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose content changed after saving, or that holds NaN/inf.

  Attributes:
    path: the checkpoint's step directory.
    problem: what is wrong with it (without the fix).
  """

  def __init__(self, path: str, problem: str, fix: str = _DEFAULT_FIX):
    self.path, self.problem = path, problem
    super().__init__(f"checkpoint {path} is damaged: {problem}; {fix}")

  def with_fix(self, fix: str) -> "DamagedCheckpointError":
    """The same error with another suggested fix (e.g. for evaluation)."""
    return DamagedCheckpointError(self.path, self.problem, fix)


class NonFiniteStateError(CheckpointError):
  """A state to be saved holds NaN/inf; nothing was written.

  Attributes:
    leaves: key paths of the non-finite arrays.
  """

  def __init__(self, leaves: list[str]):
    self.leaves = leaves
    super().__init__(f"refusing to save a state with NaN/inf values in {len(leaves)} arrays "
                     f"({_some(leaves)})")


def _manager(path: str, keep: int, async_save: bool = False) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(path), item_names=("state", "meta"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save))


# TrainState fields added later, saved only when set (older checkpoints lack them).
_OPTIONAL_FIELDS = ("swa",)


def _drop_frozen(state):
  """A TrainState as a dict of its saved fields (all but ``frozen`` and unset optional ones)."""
  if dataclasses.is_dataclass(state) and hasattr(state, "frozen"):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.name != "frozen" and not (f.name in _OPTIONAL_FIELDS
                                            and getattr(state, f.name) is None)}
  return state


def _rebuild(target, restored, frozen):
  if dataclasses.is_dataclass(target) and hasattr(target, "frozen"):
    return type(target)(**restored, frozen=frozen)
  return restored


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _brief(e: Exception, limit: int = 200) -> str:
  """``'Type: first line of the message'``, at most ``limit`` characters."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  text = lines[0] if lines else ""
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _some(names, k: int = 3) -> str:
  return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


_to_host = host_array  # a leaf as a host numpy array (sharded and multi-process arrays too)


def host_leaves(tree) -> list[tuple[str, np.ndarray]]:
  """``[(key path, host array)]`` of a pytree's leaves, in flattening order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(path), _to_host(leaf)) for path, leaf in flat]


def array_digest(a: np.ndarray) -> str:
  """SHA-256 hex digest of an array's dtype, shape and C-order bytes."""
  a = np.ascontiguousarray(a)
  h = hashlib.new(DIGEST_ALGORITHM)
  h.update(f"{a.dtype.name}|{a.shape}|".encode())
  h.update(a.reshape(-1).view(np.uint8).data)
  return h.hexdigest()


def nonfinite_leaves(leaves: list[tuple[str, np.ndarray]]) -> list[str]:
  """Key paths of the floating-point arrays in ``leaves`` holding NaN or inf."""
  return [name for name, a in leaves
          if jnp.issubdtype(a.dtype, jnp.inexact) and not np.isfinite(a).all()]


def state_is_finite(state) -> bool:
  """True when no floating-point array of ``state`` (a pytree) holds NaN/inf."""
  return not nonfinite_leaves(host_leaves(_drop_frozen(state)))


class Checkpointer:
  """Saves and restores train states under ``directory``.

  Args:
    directory: the checkpoint root (``latest/`` and ``best/`` below it).
    keep: how many ``latest`` checkpoints to keep.
    async_save: write files in the background (Orbax async checkpointing);
      :meth:`save` then returns once the arrays are on the host and digested.
      Call :meth:`close` (or :meth:`wait`) before the process exits.
  """

  def __init__(self, directory: str, keep: int = 2, async_save: bool = False):
    self.directory = os.path.abspath(directory)
    self._latest = _manager(os.path.join(directory, "latest"), keep, async_save)
    self._best = _manager(os.path.join(directory, "best"), 1, async_save)

  def latest_step(self) -> int | None:
    """The newest ``latest/<step>`` (None when there is none; a pending async write counts)."""
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    """The step of the ``best/`` checkpoint (None when there is none; pending writes count)."""
    return self._best.latest_step()

  def save(self, step: int, state: Any, meta: dict, best: bool = False) -> None:
    """Saves ``state`` and ``meta`` as ``latest/<step>`` (and ``best/<step>``).

    A ``frozen`` field (read-only method inputs such as a teacher) is not saved.
    ``meta`` gains ``'integrity'``: the SHA-256 of every saved array's host
    copy (a host transfer at checkpoint time, outside any jitted step).

    Raises:
      NonFiniteStateError: a floating-point array holds NaN/inf; nothing is written.
    """
    state = _drop_frozen(state)
    leaves = host_leaves(state)
    bad = nonfinite_leaves(leaves)
    if bad:
      raise NonFiniteStateError(bad)
    meta = dict(meta)
    meta[INTEGRITY_KEY] = {"algorithm": DIGEST_ALGORITHM,
                           "arrays": {name: array_digest(a) for name, a in leaves}}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    if step not in self._latest.all_steps():
      self._latest.save(step, args=args, force=True)
    if best and step not in self._best.all_steps():
      self._best.save(step, args=args, force=True)

  def restore(self, target: Any, which: str = "latest", step: int | None = None,
              expect_meta: dict | None = None, fallback: bool = False
              ) -> tuple[Any, dict] | None:
    """Restores ``(state, meta)`` shaped (and sharded) like ``target``.

    Every restored array is checked against the digest recorded at save time
    and for NaN/inf (checkpoints saved without digests load with a warning).

    Args:
      target: a train state (or its abstract ``ShapeDtypeStruct`` tree) of the
        same model; its shardings are used for the restored arrays.
      which: ``'latest'`` or ``'best'``.
      step: a specific step; None for the newest.
      expect_meta: entries that must match the saved meta (e.g. the model
        fingerprint); a mismatch raises with both values.
      fallback: resume mode (``step`` None only): when the newest checkpoints
        are damaged or unreadable, restore the newest intact older one, move
        the damaged ones to ``<directory>/damaged/`` and log a warning. Never
        used for evaluation.

    Returns:
      ``(state, meta)`` (meta without its ``'integrity'`` entry) or None when
      no checkpoint exists.

    Raises:
      DamagedCheckpointError: content differs from its digests, NaN/inf
        values, or unreadable files (with ``fallback``: every one is).
      CheckpointError: a checkpoint of another model/config.
    """
    self.wait()
    mgr = self._latest if which == "latest" else self._best
    if step is not None and step not in mgr.all_steps():
      raise CheckpointError(
          f"no checkpoint {os.path.join(self.directory, which, str(step))}; the saved {which} "
          f"steps are {sorted(mgr.all_steps())}")
    if not fallback or step is not None:
      step = mgr.latest_step() if step is None else step
      return None if step is None else self._restore_step(mgr, which, step, target,
                                                          expect_meta)
    steps = sorted(mgr.all_steps(), reverse=True)
    damaged = []
    for s in steps:
      try:
        out = self._restore_step(mgr, which, s, target, expect_meta)
      except DamagedCheckpointError as e:
        damaged.append((s, e))
        continue
      for bad_step, err in damaged:
        moved = self._quarantine(mgr, which, bad_step)
        log.warning("CHECKPOINT DAMAGED: %s is damaged: %s. Moved it to %s; resuming from "
                    "the older intact checkpoint %s instead.", err.path, err.problem, moved,
                    os.path.join(self.directory, which, str(s)))
      return out
    if damaged:  # none intact (or a config change no checkpoint fits): nothing is moved.
      raise damaged[0][1].with_fix(
          "no older intact checkpoint to resume from either; start in a fresh --workdir "
          "(or restore the files from a backup)")
    return None

  def _quarantine(self, mgr, which: str, step: int) -> str:
    """Moves ``<which>/<step>`` to ``damaged/<which>_<step>[_k]`` (kept, not deleted)."""
    src = os.path.join(self.directory, which, str(step))
    root = os.path.join(self.directory, "damaged")
    dst, k = os.path.join(root, f"{which}_{step}"), 1
    while os.path.exists(dst):
      dst, k = os.path.join(root, f"{which}_{step}_{k}"), k + 1
    if jax.process_index() == 0:  # one mover on a shared file system
      os.makedirs(root, exist_ok=True)
      shutil.move(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"jaxrobust_quarantine_{which}_{step}")
    mgr.reload()
    return dst

  def _restore_step(self, mgr, which, step, target, expect_meta):
    where = os.path.join(self.directory, which, str(step))
    try:
      meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(
          where, f"it is unreadable or corrupt ({_brief(e)})") from e
    for k, v in (expect_meta or {}).items():
      if meta.get(k) != v:
        raise CheckpointError(
            f"checkpoint {where} does not match this run: {k} is {meta.get(k)!r} there "
            f"but {v!r} here; use the original config or a fresh --workdir")
    frozen = getattr(target, "frozen", None)
    problem = None
    try:
      restored = mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(_drop_frozen(target)))))
    except Exception as e:  # pylint: disable=broad-except
      problem = (f"it could not be restored into this model ({_brief(e)}): it is corrupt or "
                 f"from a different model/config")
      log.debug("restoring %s failed", where, exc_info=True)
    if problem is not None:  # outside the except block: the failed read is released here.
      _collect_failed_reads()
      raise DamagedCheckpointError(where, problem, "move it away, or use a fresh --workdir")
    state = restored["state"]
    _verify(where, state, meta.pop(INTEGRITY_KEY, None))
    return _rebuild(target, state, frozen), meta

  def wait(self) -> None:
    """Blocks until every pending (async) write is complete and renamed into place."""
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes and releases the Orbax managers."""
    self._latest.close()
    self._best.close()


def _collect_failed_reads() -> None:
  """Keeps the reads of a failed Orbax restore from printing tracebacks.

  When one array read fails, Orbax leaves its sibling read coroutines
  un-awaited; Python prints each one's traceback ("Exception ignored in ...")
  whenever they are collected, possibly at exit, burying the one-line error.
  From the first failed restore on, reports about Orbax coroutines are
  dropped (the failure itself is raised as a CheckpointError).
  """
  import gc  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  previous = sys.unraisablehook
  if getattr(previous, "_jaxrobust_orbax_filter", False):
    gc.collect()
    return

  def hook(unraisable):
    code = getattr(unraisable.object, "cr_code", None)
    if code is None or "orbax" not in code.co_filename:
      previous(unraisable)

  hook._jaxrobust_orbax_filter = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  gc.collect()


def _verify(where: str, state, integrity: dict | None) -> None:
  """Checks restored arrays against their saved digests and for NaN/inf.

  Raises:
    DamagedCheckpointError: a digest differs, an array is missing/extra, or NaN/inf.
  """
  leaves = host_leaves(state)
  if integrity is None:
    log.warning("checkpoint %s has no content digests (saved by an older jaxrobust): its "
                "arrays cannot be verified, only checked for NaN/inf", where)
  else:
    if integrity.get("algorithm") != DIGEST_ALGORITHM:
      raise DamagedCheckpointError(
          where, f"its digests use {integrity.get('algorithm')!r}, not {DIGEST_ALGORITHM!r}")
    saved = integrity.get("arrays", {})
    now = {name: array_digest(a) for name, a in leaves}
    changed = [n for n in now if n in saved and saved[n] != now[n]]
    missing = sorted(set(saved) ^ set(now))
    if changed or missing:
      what = []
      if changed:
        what.append(f"the content of {len(changed)} of {len(now)} arrays ({_some(changed)}) "
                    f"differs from the SHA-256 digest recorded when it was saved")
      if missing:
        what.append(f"{len(missing)} arrays do not match the saved list ({_some(missing)})")
      raise DamagedCheckpointError(
          where, "; ".join(what) + " (its files were altered, truncated or corrupted after "
          "saving)")
  bad = nonfinite_leaves(leaves)
  if bad:
    raise DamagedCheckpointError(
        where, f"it holds NaN/inf values in {len(bad)} arrays ({_some(bad)}), saved from a "
        f"diverged run")
