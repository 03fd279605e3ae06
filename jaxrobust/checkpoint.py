"""A thin Orbax wrapper: periodic latest checkpoints plus the best one.

Layout under ``directory``::

    latest/<step>/{state, meta}   the newest ``keep`` checkpoints (resume from here)
    best/<step>/{state, meta}     the single best by the selection metric

``state`` is the :class:`~jaxrobust.train.state.TrainState` pytree
(``StandardSave``), ``meta`` a JSON dict (data-iterator position, epoch, best
metric, model fingerprint). Saves are synchronous and atomic (Orbax writes to a
temporary directory and renames it), so a killed run leaves only complete
checkpoints behind.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxrobust.errors import CheckpointError


def _manager(path: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(path), item_names=("state", "meta"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False))


def _drop_frozen(state):
  """A TrainState as a dict of its saved fields (everything but ``frozen``)."""
  if dataclasses.is_dataclass(state) and hasattr(state, "frozen"):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.name != "frozen"}
  return state


def _rebuild(target, restored, frozen):
  if dataclasses.is_dataclass(target) and hasattr(target, "frozen"):
    return type(target)(**restored, frozen=frozen)
  return restored


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Saves and restores train states under ``directory``."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._latest = _manager(os.path.join(directory, "latest"), keep)
    self._best = _manager(os.path.join(directory, "best"), 1)

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.latest_step()

  def save(self, step: int, state: Any, meta: dict, best: bool = False) -> None:
    """Saves ``state`` and ``meta`` as ``latest/<step>`` (and ``best/<step>``).

    A ``frozen`` field (read-only method inputs such as a teacher) is not saved.
    """
    state = _drop_frozen(state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    if step not in self._latest.all_steps():
      self._latest.save(step, args=args, force=True)
    if best and step not in self._best.all_steps():
      self._best.save(step, args=args, force=True)

  def restore(self, target: Any, which: str = "latest", step: int | None = None,
              expect_meta: dict | None = None) -> tuple[Any, dict] | None:
    """Restores ``(state, meta)`` shaped (and sharded) like ``target``.

    Args:
      target: a train state (or its abstract ``ShapeDtypeStruct`` tree) of the
        same model; its shardings are used for the restored arrays.
      which: ``'latest'`` or ``'best'``.
      step: a specific step; None for the newest.
      expect_meta: entries that must match the saved meta (e.g. the model
        fingerprint); a mismatch raises with both values.

    Returns:
      ``(state, meta)`` or None when no checkpoint exists.

    Raises:
      CheckpointError: corrupt, unreadable or mismatched checkpoint.
    """
    mgr = self._latest if which == "latest" else self._best
    step = mgr.latest_step() if step is None else step
    if step is None:
      return None
    where = os.path.join(self.directory, which, str(step))
    try:
      meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {where} is unreadable or corrupt ({type(e).__name__}: {e}); move "
          f"it away to resume from an older one, or start in a fresh --workdir") from e
    for k, v in (expect_meta or {}).items():
      if meta.get(k) != v:
        raise CheckpointError(
            f"checkpoint {where} does not match this run: {k} is {meta.get(k)!r} there "
            f"but {v!r} here; use the original config or a fresh --workdir")
    frozen = getattr(target, "frozen", None)
    try:
      restored = mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(_drop_frozen(target)))))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {where} could not be restored into this model ({type(e).__name__}: "
          f"{str(e)[:300]}); it is corrupt or from a different model/config: move it away "
          f"or use a fresh --workdir") from e
    return _rebuild(target, restored["state"], frozen), meta

  def close(self) -> None:
    self._latest.close()
    self._best.close()
