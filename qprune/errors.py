"""The one base class of every error that means bad input, not a bug.

Both binaries (`qprune.main`, `qprune.report.scan`) print a `UserError` as one line,
`qprune: error: <message>`, and exit with status 2; any other exception keeps its traceback (that
is a bug report). This module imports nothing, so every layer of the stack can subclass it.
"""


class UserError(ValueError):
  """Bad input (a config value, data, a workdir, a file): the message says what to change."""
