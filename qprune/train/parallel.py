"""Data parallelism over all local devices with jax.sharding (works unchanged on one CPU).

Params, optimizer state and the device-resident dataset are replicated; each batch is sharded
along its leading axis over the 'data' mesh axis, and XLA's SPMD partitioner inserts the gradient
all-reduce. BatchNorm statistics are computed over the global batch, so N devices reproduce one.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qprune.errors import UserError


class BatchSizeError(UserError):
  """A batch size that does not fit the data or the devices."""


def is_primary() -> bool:
  """Whether this is process 0 of a (multi-host) job: the one that writes the run's own files
  (config.json, metrics.jsonl, results.json, report) and holds the workdir lock; checkpoints
  and saved models are written collectively by Orbax."""
  return jax.process_index() == 0


def make_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices or jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = 'batch_size'):
  n = mesh.devices.size
  if batch_size % n:
    raise BatchSizeError(f'{what}={batch_size} must be divisible by the number of devices ({n})')
