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
  """A 1-D ``('data',)`` mesh over the first ``num_devices`` (default: all) devices."""
  devices = jax.devices()
  n = len(devices) if not num_devices else int(num_devices)
  if n > len(devices):
    raise ConfigError(f"asked for {n} devices but only {len(devices)} are visible")
  return Mesh(np.asarray(devices[:n]), ("data",), axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  """Raises ConfigError unless ``batch_size`` splits evenly over the mesh and hosts."""
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what} {batch_size} is not divisible by the {n} devices of the "
                      f"mesh; use a multiple of {n} (or set config.num_devices)")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles host-local NumPy batch slices into globally sharded ``jax.Array``s."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
      local_batch)


def replicate(tree, mesh: Mesh):
  """Places every leaf of ``tree`` on all mesh devices."""
  return jax.device_put(tree, replicated(mesh))
