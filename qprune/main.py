r"""qprune binary: train, quantize, prune or run the whole pipeline from a config.

  python -m qprune.main --config=configs/mnist_lenet5.py --workdir=/tmp/lenet \
      --config.data_dir=DATA --config.epochs=1

DATA holds mnist/{train,test}/<label>/<image> or mnist.tar.gz (python -m qprune.data.make_folders
writes one); $QPRUNE_DATA_DIR is used when data_dir is ''.

Rerunning with the same workdir resumes an unfinished run and leaves a finished one untouched.
Bad input (config values, data, init_from, workdir) ends with one 'qprune: error: ...' line and
exit status 2.
On Linux it re-executes itself once at start with glibc's huge-page malloc tunable (faster CPU
training, see qprune/ops/malloc.py; QPRUNE_HUGEPAGES=0 turns that off, -v or QPRUNE_VERBOSE=1
reports it).
"""
import json
import os
import sys
import time

if __name__ == '__main__':  # first: Ctrl-C/SIGTERM from here on are one line, never a traceback
  from qprune import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install_early()

from absl import app, flags, logging  # noqa: E402  pylint: disable=wrong-import-position
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py); override any field with '
    '--config.<field>=value.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and results '
                               '(required unless --print_config).')
_PRINT_CONFIG = flags.DEFINE_bool(
    'print_config', False, 'Print the resolved config (after --config.* overrides) as JSON and '
    'exit without running.')
flags.mark_flags_as_required(['config'])
_HELP_FLAGS = ('-h', '-help', '--help', '-?', '--helpshort', '-helpshort')


def run(config, workdir: str) -> dict:
  """Validates, prepares the workdir and runs config.mode; returns results.json's content."""
  # Imports here keep `--help` and config errors fast (no JAX start-up).
  from qprune import configs, errors  # pylint: disable=g-import-not-at-top
  configs.validate(config)
  errors.collected_warnings(clear=True)
  from qprune.modes import MODES, common  # pylint: disable=g-import-not-at-top
  from qprune import distributed, files  # pylint: disable=g-import-not-at-top
  from qprune.train import parallel  # pylint: disable=g-import-not-at-top

  distributed.join()  # first (which process writes the run's files needs it): qprune/distributed.py
  finished = common.prepare_workdir(config, workdir)
  if finished is not None:
    print(f'{workdir} already holds this finished run; nothing to do.', flush=True)
    return finished
  enable_compilation_cache(config.compilation_cache_dir or
                           os.environ.get('QPRUNE_COMPILATION_CACHE', ''))
  mesh = parallel.make_mesh()
  start = time.time()
  record = MODES[config.mode](config, workdir, mesh)
  record.mode, record.model, record.dataset = config.mode, config.model, config.dataset
  record.wall_time_s, record.devices = time.time() - start, int(mesh.devices.size)
  record.machine, record.command = machine_description(), command_line()
  record.warnings = [*record.warnings, *errors.collected_warnings()]  # data, search, ... one line each
  results = record.to_json()
  if parallel.is_primary():  # one writer on a multi-host job's shared workdir
    files.write_json_atomic(os.path.join(workdir, common.RESULTS_JSON), results)
    write_report(config, workdir, results)
  return results


def enable_compilation_cache(path: str):
  """JAX's persistent compilation cache in `path` ('' = off): every compiled step is stored, so
  the next run of the same shapes (a sweep's next job, a resume) loads it instead of compiling."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', os.path.abspath(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def machine_description() -> str:
  """'<device kind> x<count>, <CPU model>, <cores> cores': where a result was measured."""
  import platform  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  devices = jax.devices()
  return f'{devices[0].device_kind} x{len(devices)}, {cpu}, {os.cpu_count()} cores'


def command_line() -> str:
  """The command that started this run, as typed (relative paths stay relative)."""
  import shlex  # pylint: disable=g-import-not-at-top
  return shlex.join(['python', '-m', 'qprune.main', *sys.argv[1:]])


def write_report(config, workdir: str, results: dict):
  """report.md + plots; a failure here only warns (the run's results are already safe)."""
  from qprune import report  # pylint: disable=g-import-not-at-top
  # The full-precision weights the quantization targets were chosen from, for the histograms.
  full_precision = {'quantize': config.init_from or None,
                    'pipeline': os.path.join(workdir, 'prune')}.get(config.mode)
  try:
    path = report.write_report(workdir, results, variables=full_precision)
    print(f'report: {path}', flush=True)
  except Exception as e:  # pylint: disable=broad-except
    print(f'qprune: warning: could not write the report: {type(e).__name__}: {e}',
          file=sys.stderr, flush=True)


def _summary(results: dict) -> str:
  """The mode's summary block (before -> after), then its headline numbers as one JSON line."""
  from qprune import records  # pylint: disable=g-import-not-at-top
  record = records.from_json(results)
  return '\n'.join(record.summary_lines() + [json.dumps(record.headline())])


MODE_HELP = (
    ('train', 'train a zoo model from scratch or from init_from'),
    ('quantize', "power-of-two quantization of init_from's model (INQ schedule), bit-packed "
                 'export model.qpq'),
    ('prune', 'structured channel pruning decided during a short pretraining (Early-Bird), '
              'candidate search, shrink, fine-tune'),
    ('pipeline', 'prune, then quantize the pruned model (folders prune/ and quantize/)'),
)


def _configs_dir() -> str:
  """configs/ of the checkout this module runs from, else of the current directory."""
  beside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  return beside if os.path.isdir(beside) else 'configs'


def _config_files() -> list:
  """[(file name, first docstring line)] of configs/*.py, read without running them."""
  import ast  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(glob.glob(os.path.join(_configs_dir(), '*.py'))):
    try:
      with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ''
    except (OSError, SyntaxError, ValueError):
      doc = ''
    out.append((os.path.basename(path), ' '.join(doc.split('\n\n')[0].split())))
  return out


def usage_text() -> str:
  """What --help prints: usage, modes, config files, the config fields and the flags."""
  import textwrap  # pylint: disable=g-import-not-at-top
  from qprune import configs  # pylint: disable=g-import-not-at-top

  def wrapped(text, indent, first=''):
    return textwrap.fill(text, 100, initial_indent=first or indent, subsequent_indent=indent)

  lines = ['qprune: train, quantize, prune or run the whole pipeline on a CNN from a config.', '',
           'Usage:',
           '  python -m qprune.main --config=configs/FILE.py --workdir=DIR [--config.FIELD=VALUE ...]',
           '  python -m qprune.main --config=configs/FILE.py [--config.FIELD=VALUE ...] --print_config',
           '  python -m qprune.main --config=... --workdir=DIR [...] --only_check_args',
           '',
           'Rerunning with the same workdir resumes an unfinished run and leaves a finished one',
           "untouched. Bad input ends with one 'qprune: error: ...' line and exit status 2.", '',
           'Modes (--config.mode):']
  lines += [wrapped(text, ' ' * 12, f'  {mode:<10}') for mode, text in MODE_HELP]
  lines += ['', 'Config files (configs/):']
  files = _config_files()
  width = max([len(name) for name, _ in files] + [0]) + 2
  lines += [wrapped(doc or '-', ' ' * (width + 2), f'  {name:<{width}}')
            for name, doc in files] or ['  (none found)']
  base = configs.base_config()
  first = ('mode', 'dataset', 'model', 'data_dir', 'init_from', 'epochs', 'batch_size',
           'learning_rate', 'seed', 'train_subset', 'eval_subset')
  names = [k for k in first if k in base] + [k for k in base.keys() if k not in first]
  top = [f'{k}={base[k]!r}' for k in names if not hasattr(base[k], 'items')]
  lines += ['', 'Config fields and their defaults (qprune/configs.py; each config file sets some):',
            wrapped('  '.join(top), '  ')]
  for name, sub in base.items():
    if hasattr(sub, 'items'):
      lines.append(wrapped(', '.join(sub.keys()), ' ' * 4, f'  {name}.*: '))
  lines.append('  (quant.*: mode quantize and pipeline; prune.*: mode prune and pipeline)')
  lines += ['', 'Flags:',
            '  --config=FILE         a config file; --config.FIELD=VALUE overrides a field',
            '  --workdir=DIR         checkpoints, metrics, model, results.json, report.md',
            '  --print_config        print the resolved config as JSON and exit (runs nothing)',
            '  --only_check_args     validate the config and overrides, exit 0 (ok) or 2 (bad)',
            '  -v 1, --verbosity=1   also report start-up details (the huge-page malloc re-exec)',
            '  --helpfull            every absl flag',
            '', wrapped("Environment: QPRUNE_DATA_DIR (used when data_dir is ''), QPRUNE_CACHE_DIR "
                        '(decoded data), QPRUNE_HUGEPAGES=0 (no huge-page malloc), QPRUNE_VERBOSE=1.',
                        '')]
  return '\n'.join(lines)


def _flag_error(e: Exception, argv) -> str:
  """One clean line for a failed parse: an unknown field (with ml_collections' 'Did you mean'
  hint, full dotted path) or a bad value."""
  import re  # pylint: disable=g-import-not-at-top
  inner = e.args[0] if isinstance(e, AttributeError) and e.args else e
  text = str(inner.args[0]) if isinstance(inner, KeyError) and inner.args else str(inner)
  if isinstance(inner, KeyError):
    field = text.split('\n')[0].strip().strip('"\'')
    hint = re.search(r'Did you mean "([^"]+)"', text)
    suggestion = hint.group(1) if hint else None
    # ml_collections names only the last part of a nested field: take the path from argv.
    for arg in argv[1:]:
      parts = arg.split('=', 1)[0][len('--config.'):].split('.') if arg.startswith(
          '--config.') else []
      if field in parts:
        i = parts.index(field)
        field = '.'.join(parts[:i + 1])
        suggestion = suggestion and '.'.join(parts[:i] + [suggestion])
        break
    did_you_mean = f"; did you mean '{suggestion}'?" if suggestion else ''
    return (f'unknown config field {field!r}{did_you_mean} (python -m qprune.main --help lists '
            'the fields)')
  if 'Flag --config must have a value other than None' in text:
    return ('--config is required: a config file, e.g. --config=configs/mnist_lenet5.py '
            '(python -m qprune.main --help lists them)')
  return f'bad flag: {" ".join(text.split())}'


def _load_error(e: Exception, argv) -> str:
  """One line for a config file that ml_collections could not load (its last line says why)."""
  reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1:] or [repr(e)]
  names = [a.split('=', 1)[1] for a in argv if a.startswith(('--config=', '-config='))]
  return f'cannot load --config={names[-1] if names else "?"}: {reason[0]}'


def _exit_with_error(message: str):
  print(f'qprune: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl's parser, plus: --help (usage, modes, configs, fields; exit 0), --print_config,
  --only_check_args validating the config, and a bad override (unknown field, wrong type) or
  unloadable config file as one 'qprune: error:' line, exit status 2."""
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    print(usage_text())
    sys.exit(0)
  if any(arg in ('--helpfull', '-helpfull') for arg in argv[1:]):
    print(usage_text() + '\n\nAll flags:\n' + flags.FLAGS.get_help())
    sys.exit(0)
  from qprune import configs  # pylint: disable=g-import-not-at-top
  if any(a.split('=', 1)[0] in ('--config', '-config') for a in argv[1:]):
    try:  # the file first: ml_collections reports its errors as unknown fields, or not at all
      configs.check_config_file(configs.config_file_argument(argv[1:]))
    except configs.ConfigError as e:
      _exit_with_error(str(e))
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: a field the config does not have
    _exit_with_error(_flag_error(e, argv))
  except (flags.Error, TypeError, ValueError) as e:
    _exit_with_error(_flag_error(e, argv))
  except OSError as e:  # an override on a config file that did not load
    _exit_with_error(_load_error(e, argv))
  try:
    config = _CONFIG.value
    config.keys()  # ml_collections defers a config file's load error to the first attribute use
  except Exception as e:  # pylint: disable=broad-except
    _exit_with_error(_load_error(e, argv))
  if _PRINT_CONFIG.value:
    print(json.dumps(config.to_dict(), indent=2, default=str))
    _check_config(config, warn_only=True)
    sys.exit(0)
  if _WORKDIR.value is None:
    _exit_with_error('--workdir is required (the folder the run writes into; see --help)')
  if flags.FLAGS['only_check_args'].value:
    _check_config(config)
  return rest


def _check_config(config, warn_only: bool = False):
  """configs.validate; an invalid config is one error line and exit 2 (a warning if warn_only)."""
  from qprune import configs  # pylint: disable=g-import-not-at-top
  try:
    configs.validate(config)
  except configs.ConfigError as e:
    if not warn_only:
      _exit_with_error(str(e))
    print(f'qprune: warning: this config would be refused: {e}', file=sys.stderr, flush=True)


def check_job_args(args) -> 'str | None':
  """The error `python -m qprune.main ARGS` would stop at before any work (flags, the config file,
  --config.* overrides, configs.validate), or None. Only --config* and --workdir are checked
  (other absl flags are left to the run). Each call has its own FlagValues, so one process checks
  a whole batch of jobs (launch.sh --dry-run)."""
  from qprune import configs  # pylint: disable=g-import-not-at-top
  argv = ['qprune'] + [a for a in args if a.startswith(('--config', '--workdir'))]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, sys_argv=argv)
  flags.DEFINE_string('workdir', None, '', flag_values=values)
  try:
    values(argv)
  except (AttributeError, KeyError, flags.Error, TypeError, ValueError) as e:
    return _flag_error(e, argv)
  except OSError as e:  # an override on a config file that did not load
    return _load_error(e, argv)
  if values['config'].value is None:
    return '--config is required'
  try:
    config = values['config'].value
    config.keys()  # a config file's load error surfaces here
  except Exception as e:  # pylint: disable=broad-except
    return _load_error(e, argv)
  try:
    configs.validate(config)
  except configs.ConfigError as e:
    return str(e)
  return None


def check_jobs_main(argv) -> int:
  """`check_jobs_main([JOBS_FILE])`: JOBS_FILE has one job a line, `NAME<TAB>ARG<TAB>ARG...`.
  Prints one line per bad job; returns 0 when all are good, else 2."""
  bad = 0
  with open(argv[0]) as f:
    jobs = [line.rstrip('\n').split('\t') for line in f if line.strip()]
  for name, *args in jobs:
    error = check_job_args(args)
    if error:
      bad += 1
      print(f'launch.sh: error: job {name}: {error}', file=sys.stderr, flush=True)
  return 2 if bad else 0


def main(argv):
  if len(argv) > 1:
    _exit_with_error(f'unexpected arguments: {" ".join(argv[1:])} (every setting is a flag, '
                     f'e.g. --config.epochs=1; see --help)')
  logging.set_verbosity(logging.WARNING)
  results = run_reporting_errors(_CONFIG.value, _WORKDIR.value)
  print(_summary(results), flush=True)
  if __name__ == '__main__':  # the binary: all is written, a late Ctrl-C no longer matters (and
    from qprune import interrupts  # pylint: disable=g-import-not-at-top
    interrupts.ignore()  # Python's shutdown resets handled signals to the default: death by it)


def run_reporting_errors(config, workdir: str) -> dict:  # type: ignore[return]  # exits
  """`run` under the error boundary: a user error (bad input, an OSError such as a full disk or a
  read-only workdir) is one 'qprune: error:' line and exit status 2; SIGINT/SIGTERM stop at a
  safe point with one line and 128 + the signal number. Anything else keeps its traceback."""
  from qprune import files  # pylint: disable=g-import-not-at-top
  from qprune.errors import Interrupted, UserError  # pylint: disable=g-import-not-at-top
  from qprune.modes import common  # pylint: disable=g-import-not-at-top
  from qprune import interrupts  # pylint: disable=g-import-not-at-top
  try:
    with interrupts.handling():
      return run(config, workdir)
  except UserError as e:
    _exit_with_error(str(e))
  except OSError as e:
    _exit_with_error(files.os_error_message(e))
  except Interrupted as e:
    print(f'qprune: interrupted: {e.message}', file=sys.stderr, flush=True)
    sys.exit(e.exit_status)
  finally:
    common.release_workdirs()


if __name__ == '__main__':
  from qprune.ops import malloc  # pylint: disable=g-import-not-at-top
  malloc.reexec_with_hugepages()  # before any work: see qprune/ops/malloc.py
  app.run(main, flags_parser=parse_flags)
