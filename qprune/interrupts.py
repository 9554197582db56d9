"""Ctrl-C (SIGINT) and SIGTERM (preemption) end a run at a safe point, with one line.

`handling()` (the binary wraps a whole run in it) turns both signals into `Interrupted`, raised
only where that is safe: never inside JAX/XLA, Flax, Optax or Orbax code (tracing, compilation,
a checkpoint write), where an exception can leave C++ state half-built (a KeyboardInterrupt during
XLA compilation could segfault the process at exit). A signal that lands there is deferred: it is
re-delivered every 50 ms until the main thread is back in plain Python code. Inside `deferred()`
(the training loop) a signal only sets a flag, which the loop checks between steps to save a
checkpoint before it stops.

Without `handling()` (library use), `deferred()` installs the same handlers for its duration.
"""
import contextlib
import os
import signal
import threading

from qprune.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RETRY_S = 0.05
# Code an exception must not be raised into (source paths of these packages).
_UNSAFE = tuple(f'{os.sep}{name}{os.sep}' for name in
                ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'tensorstore', 'chex'))


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


def in_unsafe_code(frame) -> bool:
  """Whether `frame` or any of its callers runs inside JAX/XLA/Orbax (see _UNSAFE)."""
  while frame is not None:
    if any(part in frame.f_code.co_filename for part in _UNSAFE):
      return True
    frame = frame.f_back
  return False


class _Handler:
  """Process-wide state: the pending signal and how many `deferred()` scopes are open."""

  def __init__(self):
    self.pending: int | None = None
    self.depth = 0
    self.installed = False
    self._previous = {}
    self._timer: threading.Timer | None = None

  def install(self) -> bool:
    if self.installed:
      return False
    try:
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    except ValueError:  # not the main thread: leave the signals alone
      self._restore()
      return False
    self.installed, self.pending = True, None
    return True

  def uninstall(self):
    if self._timer is not None:
      self._timer.cancel()
      self._timer = None
    self._restore()
    self.installed = False

  def _restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def _handle(self, signum, frame):
    self.pending = signum
    if self.depth > 0:  # the training loop checks the flag between steps
      return
    if in_unsafe_code(frame):
      self._retry_later(signum)
      return
    raise Interrupted(signum, f'{signal_name(signum)}: stopped outside training; saved '
                      f'checkpoints and finished stages are kept, rerun the same command to '
                      f'resume')

  def _retry_later(self, signum):
    if self._timer is not None and self._timer.is_alive():
      return
    self._timer = threading.Timer(RETRY_S, os.kill, (os.getpid(), signum))
    self._timer.daemon = True
    self._timer.start()


_HANDLER = _Handler()


@contextlib.contextmanager
def handling():
  """SIGINT/SIGTERM raise `Interrupted` at the next safe point while this is open."""
  installed = _HANDLER.install()
  try:
    yield _HANDLER
  finally:
    if installed:
      _HANDLER.uninstall()


@contextlib.contextmanager
def deferred():
  """A scope where SIGINT/SIGTERM only set `.pending` (the caller stops at its own safe point).

  Yields the handler; `pending` is the signal number or None."""
  installed = _HANDLER.install()
  _HANDLER.depth += 1
  finished = False
  try:
    yield _HANDLER
    finished = True
  finally:
    _HANDLER.depth -= 1
    signum = _HANDLER.pending if _HANDLER.depth == 0 else None
    if installed:
      _HANDLER.uninstall()
    if finished and signum is not None:  # arrived after the caller's last check: stop here
      _HANDLER.pending = None
      raise Interrupted(signum, f'{signal_name(signum)}: stopped after training finished; '
                        f'rerun the same command to resume')


def install_early():
  """Before the run starts (imports, flag parsing): SIGINT/SIGTERM print one line and exit with
  128 + the signal number at once (nothing has been written yet). `handling()` replaces this."""
  def stop(signum, frame):
    del frame
    import sys  # pylint: disable=g-import-not-at-top
    print(f'qprune: interrupted: {signal_name(signum)} before the run started; nothing was '
          f'written', file=sys.stderr, flush=True)
    os._exit(128 + signum)  # pylint: disable=protected-access
  for signum in SIGNALS:
    signal.signal(signum, stop)


def ignore():
  """SIGINT/SIGTERM ignored from now on: for the binary's last moments, after every file is
  written (Python's shutdown resets handled signals to their default action, which would end a
  finished run with a death by signal; ignored ones it leaves alone)."""
  for signum in SIGNALS:
    signal.signal(signum, signal.SIG_IGN)
