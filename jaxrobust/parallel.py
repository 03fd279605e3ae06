"""Device mesh, shardings, multi-host initialisation.

Data parallelism over one ``data`` mesh axis: batches are sharded on their
leading axis with ``NamedSharding(mesh, P('data'))``, the train state is
replicated. BatchNorm statistics inside a jitted step are therefore computed
over the *global* batch (XLA inserts the all-reduce), which equals the
single-device computation on the same global batch.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxrobust.errors import ConfigError

ENV_DISTRIBUTED = "JAXROBUST_DISTRIBUTED"


def init_distributed() -> None:
  """Calls ``jax.distributed.initialize()`` when ``JAXROBUST_DISTRIBUTED=1``.

  JAX auto-detects Slurm, Open MPI and Cloud TPU; elsewhere set
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
  Must run before any JAX computation (the entry points call it first).
  Source: ``jax.distributed.initialize`` (JAX multi-process guide).

  Raises:
    KeyError: ``JAX_COORDINATOR_ADDRESS`` is set without the other two.
    RuntimeError: from JAX, when the coordinator cannot be reached.
  """
  if os.environ.get(ENV_DISTRIBUTED, "0") != "1":
    return
  kwargs = {}
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ``('data',)`` mesh over the first ``num_devices`` (default: all) devices.

  Args:
    num_devices: how many of ``jax.devices()`` (all processes' devices in a
      multi-host run) to use; None or 0 means all.

  Returns:
    A ``Mesh`` of shape ``(n,)`` with the axis name ``'data'``.

  Raises:
    ConfigError: more devices asked for than are visible.
  """
  devices = jax.devices()
  n = len(devices) if not num_devices else int(num_devices)
  if n > len(devices):
    raise ConfigError(f"asked for {n} devices but only {len(devices)} are visible")
  return Mesh(np.asarray(devices[:n]), ("data",), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: its leading axis ``B`` split over the ``data`` axis.

  ``B`` must be a multiple of the mesh size (:func:`check_batch_size`).
  """
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of a value held whole on every device of ``mesh`` (train state, keys)."""
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  """Raises ConfigError unless ``batch_size`` splits evenly over the mesh and hosts."""
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what} {batch_size} is not divisible by the {n} devices of the "
                      f"mesh; use a multiple of {n} (or set config.num_devices)")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles host-local NumPy batch slices into globally sharded ``jax.Array``s.

  Args:
    local_batch: pytree of host arrays ``[B_local, ...]``; each process passes
      its own slice (``B_local = B / num_processes``), in process order.
    mesh: the ``('data',)`` mesh.

  Returns:
    The same pytree of ``jax.Array`` ``[B, ...]`` sharded by :func:`data_sharding`.
  """
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
      local_batch)


def shard_rows(a, mesh: Mesh) -> jax.Array:
  """A host array held whole (and identical) by every process, as a global ``jax.Array``.

  Sharded on its leading axis by :func:`data_sharding`; each process places only
  the rows of its own devices, so this works on one process and on many (where
  ``jax.device_put`` of a host array cannot address the other hosts' devices).
  The leading axis must be a multiple of the mesh size.
  """
  a = np.asarray(a)
  return jax.make_array_from_callback(a.shape, data_sharding(mesh), lambda idx: a[idx])


def host_array(x) -> np.ndarray:
  """``x`` as a host NumPy array, gathered from every process when it is sharded across them.

  Every process must call this for the same array (a multi-process gather is a
  collective).
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def replicate(tree, mesh: Mesh):
  """Places every leaf of ``tree`` on all mesh devices (:func:`replicated`); same structure."""
  return jax.device_put(tree, replicated(mesh))
