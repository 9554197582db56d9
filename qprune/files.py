"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

The one writer of the project (`write_bytes_atomic`; `write_text_atomic`, `write_json_atomic`,
`write_lines_atomic` on top of it): it fills a temp file in the target's folder, then
`os.replace`s it over the target, and removes the temp file when anything fails. `read_json` is
the one JSON reader: a damaged file (truncated, not JSON, the wrong shape) becomes one
`DamagedFileError` naming it. `os_error_message` words an OSError for the one-line report.

Standard library only at import (numpy is imported only to serialize an array), so the sweep
collector run by path and the research harness use the same writer without starting numpy/JAX.
"""
import errno
import json
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from qprune.errors import DamagedFileError, UserError


def write_bytes_atomic(path: str, data: bytes) -> int:
  """Writes `data` to `path` atomically; returns the size on disk."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for sharing
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return os.path.getsize(path)


def _json_default(o):
  """numpy scalars and arrays (and jax arrays: anything with `__array__`) as JSON lists/numbers."""
  if hasattr(o, '__array__') or type(o).__module__ == 'numpy':
    import numpy as np  # pylint: disable=g-import-not-at-top  (only objects from numpy get here)
    return np.asarray(o).tolist()
  raise TypeError(f'not JSON serializable: {type(o).__name__}')


def write_text_atomic(path: str, text: str) -> int:
  """Writes `text` (UTF-8) to `path` atomically; returns the size on disk."""
  return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str, obj: Any, indent: int | None = 2):
  """`obj` as JSON (numpy values as lists/numbers) plus a newline, atomically."""
  write_text_atomic(path, json.dumps(obj, indent=indent, default=_json_default) + '\n')


def write_lines_atomic(path: str, lines: Iterable[str]):
  write_text_atomic(path, ''.join(line + '\n' for line in lines))


# The run files every workdir (and pipeline stage) holds: the keys each must have to be usable
# (results.json: only a JSON object here, its readers differ; prepare_workdir asks for more).
RUN_FILE_KEYS = {
    'config.json': ('mode', 'model', 'dataset'),
    'results.json': (),
    'model.json': ('name', 'num_classes', 'input_shape', 'width', 'mean', 'std'),
    'search.json': ('best', 'rows', 'masks'),
}


def read_json(path: str, required: Iterable[str] | None = None) -> Any | None:
  """The parsed file, or None when it does not exist.

  A file that is not valid UTF-8 JSON raises DamagedFileError naming it. `required`: keys the file
  must hold as a JSON object (default: RUN_FILE_KEYS for a run file's name, else no check).
  """
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    return None
  except IsADirectoryError:
    raise DamagedFileError(f'{path} is a folder, not a file; move it away') from None
  try:
    obj = json.loads(data.decode('utf-8'))
  except (UnicodeDecodeError, ValueError) as e:
    raise DamagedFileError(
        f'{path} is damaged (not valid JSON: {e}); {_damaged_hint(path)}') from None
  if required is None:
    required = RUN_FILE_KEYS.get(os.path.basename(path), None)
  if required is not None:
    missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
    if not isinstance(obj, dict) or missing:
      what = (f'a JSON {type(obj).__name__}, not an object' if not isinstance(obj, dict)
              else f'missing {", ".join(missing)}')
      raise DamagedFileError(f'{path} is damaged ({what}); {_damaged_hint(path)}')
  return obj


def read_jsonl(path: str) -> list | None:
  """The records of a JSON-lines file (e.g. metrics.jsonl), or None when it does not exist; a
  line that is not a JSON object raises DamagedFileError naming the file and line."""
  try:
    with open(path, 'rb') as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return None
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as e:
      record = e
    if not isinstance(record, dict):
      raise DamagedFileError(f'{path} is damaged (line {number} is not a JSON object); '
                             f'{_damaged_hint(path)}')
    records.append(record)
  return records


def _damaged_hint(path: str) -> str:
  name = os.path.basename(path)
  if name == 'results.json':
    return ('delete it and rerun the same command (a finished run is rebuilt from its model and '
            'checkpoints)')
  if name == 'config.json':
    return ('delete it and rerun the same command, or use another --workdir')
  if name == 'search.json':
    return 'delete it and rerun the same command (the search is run again)'
  if name == 'model.json':
    return 'this folder holds no usable model: rerun the run that made it, or use another one'
  return 'delete it or restore a good copy'


def os_error_message(e: OSError) -> str:
  """One line for an OSError: what failed, on which file, and what to do."""
  where = e.filename if e.filename is not None else ''
  if e.filename2 is not None:
    where = f'{where} -> {e.filename2}'
  where = f' {where}' if where else ''
  reason = e.strerror or str(e)
  code = e.errno
  if code == errno.ENOSPC or code == errno.EDQUOT:
    return (f'disk full writing{where} ({reason}): free space (or point --workdir / cache_dir '
            f'elsewhere) and rerun the same command; the run resumes from its last checkpoint')
  if code in (errno.EACCES, errno.EPERM, errno.EROFS):
    return (f'cannot write{where} ({reason}): make it writable or use another --workdir')
  if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
    return (f'{where.strip()}: {reason}: a file stands where a folder is needed (or the other way '
            f'round); move it away or use another --workdir')
  if code == errno.ENOENT:
    return f'{where.strip()}: {reason}: check the path'
  if code == errno.ENAMETOOLONG:
    return f'{where.strip()}: file name too long: use a shorter path'
  return f'{where.strip() or "I/O error"}: {reason} (errno {code})'


# ---------------------------------------------------------------------------------------------
# Workdir lock.

LOCK_NAME = '.qprune.lock'


class WorkdirBusyError(UserError):
  """Another live process holds the workdir's lock."""


class WorkdirLock:
  """An exclusive lock on a workdir: `<workdir>/.qprune.lock`, flock'ed while held, holding the
  holder's pid, host and start time (for the message a second process prints).

  The kernel drops a flock when its process dies (even by SIGKILL), so a lock file left behind is
  stale exactly when nobody holds its flock; without flock support (some network file systems)
  a file naming a dead pid on this host is stale. `release()` deletes the file.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd: int | None = None

  def acquire(self) -> 'WorkdirLock':
    import fcntl  # pylint: disable=g-import-not-at-top
    import socket  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top
    for _ in range(10):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise WorkdirBusyError(self._busy_message()) from None
      except OSError as e:  # no flock on this file system: judge by the pid in the file
        if self._holder_alive():
          os.close(fd)
          raise WorkdirBusyError(self._busy_message()) from None
        del e
      try:  # the file we locked must still be the one at self.path (not unlinked by a release)
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if not same:
        os.close(fd)
        continue
      holder = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                           'since': time.strftime('%Y-%m-%d %H:%M:%S %Z')})
      os.ftruncate(fd, 0)
      os.pwrite(fd, holder.encode() + b'\n', 0)
      self._fd = fd
      return self
    raise WorkdirBusyError(f'could not lock {self.path}: it keeps changing; is another qprune '
                           f'starting there?')

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        holder = json.loads(f.read() or '{}')
      return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
      return {}

  def _holder_alive(self) -> bool:
    import socket  # pylint: disable=g-import-not-at-top
    holder = self._holder()
    if not holder.get('pid'):
      return False
    if holder.get('host') != socket.gethostname():
      return True  # cannot tell: assume alive
    try:
      os.kill(int(holder['pid']), 0)
    except ProcessLookupError:
      return False
    except (PermissionError, ValueError, OverflowError):
      return True
    return True

  def _busy_message(self) -> str:
    import time  # pylint: disable=g-import-not-at-top
    holder = self._holder()
    deadline = time.monotonic() + 1.0
    while not holder and time.monotonic() < deadline:  # it locks the file, then writes its pid
      time.sleep(0.05)
      holder = self._holder()
    who = (f'pid {holder.get("pid")} on {holder.get("host")} (since {holder.get("since")})'
           if holder else 'another process')
    return (f'workdir {os.path.dirname(self.path)} is in use by {who}: wait for that run to '
            f'end, or use another --workdir (if that process is gone, delete {self.path})')

  def release(self):
    if self._fd is None:
      return
    import fcntl  # pylint: disable=g-import-not-at-top
    try:
      os.unlink(self.path)  # before unlocking: a waiter then locks a fresh file, never this one
    except OSError:
      pass
    try:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    finally:
      os.close(self._fd)
      self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
