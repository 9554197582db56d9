"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Each writer fills a temp file in the target's folder, then `os.replace`s it over the target.
"""
import json
import os
import tempfile
from typing import Any, Iterable, Optional

import numpy as np


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
  if isinstance(o, (np.generic, np.ndarray)) or hasattr(o, '__array__'):
    return np.asarray(o).tolist()
  raise TypeError(f'not JSON serializable: {type(o).__name__}')


def write_json_atomic(path: str, obj: Any):
  write_bytes_atomic(path, (json.dumps(obj, indent=2, default=_json_default) + '\n').encode())


def write_lines_atomic(path: str, lines: Iterable[str]):
  write_bytes_atomic(path, ''.join(line + '\n' for line in lines).encode())


def read_json(path: str) -> Optional[Any]:
  """The parsed file, or None when it does not exist."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
