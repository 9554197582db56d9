r"""qprune binary: train, quantize, prune or run the whole pipeline from a config.

  python -m qprune.main --config=configs/mnist_lenet5.py --workdir=/tmp/lenet \
      --config.data_dir=DATA --config.epochs=1

DATA holds mnist/{train,test}/<label>/<image> or mnist.tar.gz (python -m qprune.data.make_folders
writes one); $QPRUNE_DATA_DIR is used when data_dir is ''.

Rerunning with the same workdir resumes an unfinished run and leaves a finished one untouched.
Bad input (config values, data, init_from, workdir) ends with one 'qprune: error: ...' line and
exit status 2. The command line lives in qprune/cli.py, the run in qprune/runner.py.
On Linux it re-executes itself once at start with glibc's huge-page malloc tunable (faster CPU
training, see qprune/ops/malloc.py; QPRUNE_HUGEPAGES=0 turns that off, -v or QPRUNE_VERBOSE=1
reports it).
"""
import sys

if __name__ == '__main__':  # first: Ctrl-C/SIGTERM from here on are one line, never a traceback
  from qprune import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install_early()

from absl import app, logging  # noqa: E402  pylint: disable=wrong-import-position

from qprune import cli, records  # noqa: E402  pylint: disable=wrong-import-position

parse_flags = cli.parse_flags  # (the flags are cli's; kept importable here)


def run(config, workdir: str, overridden=()) -> records.Results:
  """Checks, prepares the workdir and runs config.mode (qprune.runner.run); returns its record."""
  from qprune import distributed, runner  # pylint: disable=g-import-not-at-top  (fast --help)
  # Joining a multi-process job comes first: which process writes the run's files needs it.
  return runner.run(config, workdir, overridden, initialize=distributed.join)


def run_reporting_errors(config, workdir: str, overridden=()) -> records.Results:  # type: ignore[return]
  """`run` under the error boundary: a user error (bad input, an OSError such as a full disk or a
  read-only workdir) is one 'qprune: error:' line and exit status 2; SIGINT/SIGTERM stop at a
  safe point with one line and 128 + the signal number. Anything else keeps its traceback."""
  from qprune import files, interrupts  # pylint: disable=g-import-not-at-top
  from qprune.errors import Interrupted, UserError  # pylint: disable=g-import-not-at-top
  from qprune.modes import common  # pylint: disable=g-import-not-at-top
  try:
    with interrupts.handling():
      return run(config, workdir, overridden)
  except UserError as e:
    cli.exit_with_error(str(e))
  except OSError as e:
    cli.exit_with_error(files.os_error_message(e))
  except Interrupted as e:
    print(f'qprune: interrupted: {e.message}', file=sys.stderr, flush=True)
    sys.exit(e.exit_status)
  finally:
    common.release_workdirs()


def main(argv):
  if len(argv) > 1:
    cli.exit_with_error(f'unexpected arguments: {" ".join(argv[1:])} (every setting is a flag, '
                        f'e.g. --config.epochs=1; see --help)')
  logging.set_verbosity(logging.WARNING)
  from qprune import runner  # pylint: disable=g-import-not-at-top
  record = run_reporting_errors(cli.config(), cli.workdir(), cli.overridden())
  print(runner.summary(record), flush=True)
  if __name__ == '__main__':  # the binary: all is written, a late Ctrl-C no longer matters (and
    from qprune import interrupts  # pylint: disable=g-import-not-at-top
    interrupts.ignore()  # Python's shutdown resets handled signals to the default: death by it)


if __name__ == '__main__':
  from qprune.ops import malloc  # pylint: disable=g-import-not-at-top
  malloc.reexec_with_hugepages()  # before any work: see qprune/ops/malloc.py
  app.run(main, flags_parser=cli.parse_flags)
