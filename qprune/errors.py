"""The one base class of every error that means bad input, not a bug, and the run's warnings.

Both binaries (`qprune.main`, `qprune.report.scan`) print a `UserError` as one line,
`qprune: error: <message>`, and exit with status 2; any other exception keeps its traceback (that
is a bug report). `Interrupted` (Ctrl-C, SIGTERM) ends a run with one line and 128 + the signal
number. `warn` prints one `qprune: warning: ...` line and remembers it, so that the binary can
record the run's warnings in results.json. This module imports nothing at import time, so every
layer of the stack can use it.
"""


class UserError(ValueError):
  """Bad input (a config value, data, a workdir, a file): the message says what to change."""


class DamagedFileError(UserError):
  """A file exists but cannot be used (truncated, not valid JSON, the wrong shape)."""


class Interrupted(SystemExit):
  """SIGINT or SIGTERM ended the run at a safe point; `message` says what was saved.

  A SystemExit (not caught by `except Exception`); uncaught, Python prints the message."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum, self.message = signum, message

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


_WARNINGS = []


def warn(message: str) -> None:
  """One `qprune: warning: <message>` line on stderr, kept for `collected_warnings()`."""
  import sys  # pylint: disable=g-import-not-at-top
  _WARNINGS.append(message)
  print(f'qprune: warning: {message}', file=sys.stderr, flush=True)


def collected_warnings(clear: bool = False) -> list:
  """The warnings since the last clear (a copy)."""
  out = list(_WARNINGS)
  if clear:
    _WARNINGS.clear()
  return out
