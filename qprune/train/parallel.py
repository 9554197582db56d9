"""Data parallelism over all local devices with jax.sharding (works unchanged on one CPU).

Params, optimizer state and the device-resident dataset are replicated; each batch is sharded
along its leading axis over the 'data' mesh axis, and XLA's SPMD partitioner inserts the gradient
all-reduce. BatchNorm statistics are computed over the global batch, so N devices reproduce one.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


def replicate(tree, mesh: Mesh, copy: bool = False):
  """`tree` placed replicated on every device of `mesh` (copy=True: never aliasing the input,
  for a state the train step donates).

  In a multi-process job a local jax array is first brought to the host: jax.device_put of an
  array on one local device onto a multi-process sharding builds an array whose shards Orbax
  and `addressable_shards` reject ("input arrays must have one shard each"). Host values are the
  same on every process (same seed, same files), which a replicated array requires."""
  sharding = replicated(mesh)
  alias = False if copy else None
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding, may_alias=alias)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already a global array
      return jax.device_put(x, sharding, may_alias=alias)
    return jax.device_put(np.asarray(x), sharding)

  return jax.tree_util.tree_map(put, tree)


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = 'batch_size'):
  n = mesh.devices.size
  if batch_size % n:
    raise BatchSizeError(f'{what}={batch_size} must be divisible by the number of devices ({n})')
