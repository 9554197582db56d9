"""Checkpoints (Orbax) and atomic files.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run
killed mid-write leaves either the previous checkpoint or the new one, never half of one.
A checkpoint holds a pytree ('state': arrays) and JSON metadata ('meta': epoch, step, history).
"""
import errno
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from qprune.errors import UserError


class CheckpointError(UserError):
  """A checkpoint exists but cannot be used (corrupt, or from a different model/config)."""


def to_host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


class CheckpointStore:
  """The checkpoints of one training stage, in `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f'{self.directory} is a file, not a checkpoint folder; move it away '
                            f'(or use another --workdir)')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, tree, meta: dict):
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True)
      self._manager.wait_until_finished()
    except OSError:
      raise  # the binary words it (disk full, read-only, ...)
    except Exception as e:  # pylint: disable=broad-except
      raise as_os_error(e, self.directory) from e

  def restore_latest(self, like) -> tuple[Any, dict] | None:
    """(tree, meta) of the newest checkpoint, shaped like `like`; None when there is none."""
    step = self.latest_step()
    if step is None:
      return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'cannot restore checkpoint {self.directory}/{step}: it is corrupt or was written '
          f'by a different model or config ({type(e).__name__}: {str(e)[:300]}). Use a new '
          f'--workdir, or delete {self.directory} to start over.') from e
    return restored['state'], restored['meta']

  def close(self):
    self._manager.close()


def as_os_error(e: Exception, directory: str) -> Exception:
  """Orbax/TensorStore report some I/O failures as ValueError/RuntimeError text: those become the
  OSError they are (so the binary reports them in one line); anything else is returned as is."""
  text = str(e)
  for code, needle in ((errno.ENOSPC, 'No space left'), (errno.EACCES, 'Permission denied'),
                       (errno.EROFS, 'Read-only file system'), (errno.EDQUOT, 'quota exceeded')):
    if needle.lower() in text.lower():
      return OSError(code, os.strerror(code), directory)
  return e


def save_variables(directory: str, variables):
  """Final model variables (params + batch_stats) as a standalone Orbax checkpoint.

  Saved into `<directory>.tmp`, then renamed over `directory`. In a multi-host job every process
  takes part in Orbax's save, process 0 alone clears and renames, and all wait for it.
  """
  directory = os.path.abspath(directory)
  primary = jax.process_index() == 0
  with ocp.StandardCheckpointer() as checkpointer:
    tmp = directory + '.tmp'
    if primary and os.path.exists(tmp):
      shutil.rmtree(tmp)
    ocp.multihost.sync_global_processes('qprune_save_variables_clear')
    try:
      checkpointer.save(tmp, to_host(variables))
      checkpointer.wait_until_finished()
    except OSError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise as_os_error(e, tmp) from e
  if primary:
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  ocp.multihost.sync_global_processes('qprune_save_variables_rename')


def _this_process_only() -> ocp.options.MultiprocessingOptions:
  """Orbax options for a read by this process alone: without them, a restore in a multi-process
  job is a collective (a barrier every process must reach), and a read only process 0 makes
  (its report) would wait forever for the others."""
  index = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=index, active_processes={index},
                                            barrier_sync_key_prefix=f'read{index}')


def load_variables(directory: str, like=None):
  """Saved variables (host arrays), read by this process alone (see _this_process_only)."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise CheckpointError(f'no saved variables at {directory}')
  try:
    with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as checkpointer:
      if like is None:
        restored = checkpointer.restore(directory)
      elif jax.process_count() > 1:  # read onto this process's own device, not like's mesh
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restored = checkpointer.restore(directory, jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local), like))
      else:
        return checkpointer.restore(
            directory, jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like))
      # On the host in a multi-process job: a local array beside global ones fails a jit.
      return to_host(restored) if jax.process_count() > 1 else restored
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'cannot read saved variables at {directory}: corrupt or from a '
                          f'different model ({type(e).__name__}: {str(e)[:300]})') from e
