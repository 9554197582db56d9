"""The binary's command line: flags, --help, --print_config, --only_check_args, flag errors as one
line, and the batch checker launch.sh --dry-run calls.

Everything here answers before JAX starts (imports are made where they are needed), except
--only_check_args, which asks `qprune.runner.check` exactly what the run would (the model's layer
names need JAX's shape evaluation).
"""
import json
import os
import sys

from absl import flags
from ml_collections import config_flags

# The argv the config flag reads its --config.* overrides from (filled by parse_flags: the
# unset spellings of optional fields translated first, see `unset_spellings`).
_ARGV: list[str] = []
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py); override any field with '
    '--config.<field>=value.', sys_argv=_ARGV)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and results '
                               '(required unless --print_config).')
_PRINT_CONFIG = flags.DEFINE_bool(
    'print_config', False, 'Print the resolved config (after --config.* overrides) as JSON and '
    'exit without running.')
flags.mark_flags_as_required(['config'])
_HELP_FLAGS = ('-h', '-help', '--help', '-?', '--helpshort', '-helpshort')
_OVERRIDDEN: list[str] = []  # the dotted config fields the parsed command line set

MODE_HELP = (
    ('train', 'train a zoo model from scratch or from init_from'),
    ('quantize', "power-of-two quantization of init_from's model (INQ schedule), bit-packed "
                 'export model.qpq'),
    ('prune', 'structured channel pruning decided during a short pretraining (Early-Bird; from '
              "init_from's trained model without it), optional candidate search, shrink, "
              'fine-tune'),
    ('pipeline', 'prune, then quantize the pruned model (folders prune/ and quantize/)'),
)


def config() -> 'object':
  """The parsed config (after parse_flags)."""
  return _CONFIG.value


def workdir() -> str | None:
  return _WORKDIR.value


def overridden() -> list[str]:
  """The dotted fields the parsed command line set (--config.quant.k=2 -> 'quant.k')."""
  return list(_OVERRIDDEN)


def overridden_fields(argv) -> list[str]:
  return [a.split('=', 1)[0].split('.', 1)[1] for a in argv
          if a.startswith(('--config.', '-config.'))]


def unset_spellings(argv) -> list[str]:
  """argv with --config.FIELD='' (or None, null) of an optional field (configs.UNSET_FIELDS)
  written in the form ml_collections parses for the field's type ('' for paths, 0 for numbers,
  () for tuples): each then reads as None (configs.normalize)."""
  from qprune import configs  # pylint: disable=g-import-not-at-top
  base, out = configs.base_config(), []
  for arg in argv:
    name, _, value = arg.partition('=')
    field = name.split('.', 1)[1] if name.startswith(('--config.', '-config.')) else ''
    if field in configs.UNSET_FIELDS and value in configs.UNSET_SPELLINGS:
      *parents, leaf = field.split('.')
      node = base
      for parent in parents:
        node = node[parent]
      kind = node.get_ref(leaf).get_type()
      value = {str: '', int: '0', float: '0', tuple: '()'}.get(kind, value)
      arg = f'{name}={value}'
    out.append(arg)
  return out


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
           '  python -m qprune.main --config=configs/FILE.py --workdir=DIR '
           '[--config.FIELD=VALUE ...]',
           '  python -m qprune.main --config=configs/FILE.py [--config.FIELD=VALUE ...] '
           '--print_config',
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
  top = [f'{k}={_shown(base[k])}' for k in names if not hasattr(base[k], 'items')]
  lines += ['', 'Config fields and their defaults (qprune/configs.py; each config file sets some;',
            "a setting that does not apply to the config's mode or method is refused):",
            wrapped('  '.join(top), '  ')]
  for section, sub in base.items():
    if not hasattr(sub, 'items'):
      continue
    modes = 'quantize and pipeline' if section == 'quant' else 'prune and pipeline'
    lines += ['', f'  {section}.* (mode {modes}):']
    for key, value in sub.items():
      name = f'{section}.{key}={_shown(value)}'
      lines.append(wrapped(configs.FIELD_HELP.get(f'{section}.{key}', ''), ' ' * 40,
                           f'    {name:<35} ' if len(name) < 36 else f'    {name}\n' + ' ' * 40))
  lines += ['', wrapped("Unset an optional field (shown as None, null in --print_config) with "
                        "--config.FIELD='' (e.g. --config.prune.max_params='').", '  ')]
  lines += ['', 'Flags:',
            '  --config=FILE         a config file; --config.FIELD=VALUE overrides a field',
            '  --workdir=DIR         checkpoints, metrics, model, results.json, report.md',
            '  --print_config        print the resolved config as JSON and exit (runs nothing)',
            '  --only_check_args     check as the run would before any work (config, workdir,',
            '                        init_from, layers); exit 0 (it would start) or 2',
            '  -v 1, --verbosity=1   also report start-up details (the huge-page malloc re-exec)',
            '  --helpfull            every absl flag',
            '', wrapped("Environment: QPRUNE_DATA_DIR (used when data_dir is ''), "
                        'QPRUNE_CACHE_DIR (decoded data), '
                        'QPRUNE_HUGEPAGES=0 (no huge-page malloc), QPRUNE_VERBOSE=1.', '')]
  return '\n'.join(lines)


def _shown(value) -> str:
  return 'None' if value is None else repr(value)


def flag_error(e: Exception, argv) -> str:
  """One clean line for a failed parse: an unknown field (with ml_collections' 'Did you mean'
  hint, full dotted path), a config field given as a flag (--epochs=1), or a bad value."""
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
  if isinstance(e, flags.UnrecognizedFlagError):
    from qprune import configs  # pylint: disable=g-import-not-at-top
    name = e.flagname.removeprefix('no')
    try:
      node = configs.base_config()
      for part in name.split('.'):
        node = node[part]
      given = next((a.split('=', 1)[1] for a in argv if a.lstrip('-').split('=')[0] ==
                    e.flagname and '=' in a), 'VALUE')
      return (f'unknown flag --{e.flagname}: config fields are set with --config.{name}='
              f'{given} (see --help)')
    except (KeyError, AttributeError):
      pass
  if 'Flag --config must have a value other than None' in text:
    return ('--config is required: a config file, e.g. --config=configs/mnist_lenet5.py '
            '(python -m qprune.main --help lists them)')
  return f'bad flag: {" ".join(text.split())}'


def load_error(e: Exception, argv) -> str:
  """One line for a config file that ml_collections could not load (its last line says why)."""
  reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1:] or [repr(e)]
  names = [a.split('=', 1)[1] for a in argv if a.startswith(('--config=', '-config='))]
  return f'cannot load --config={names[-1] if names else "?"}: {reason[0]}'


def exit_with_error(message: str):
  print(f'qprune: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl's parser, plus: --help (usage, modes, configs, fields; exit 0), --print_config,
  --only_check_args checking what the run checks before any work (runner.check), and a bad
  override (unknown field, wrong type) or unloadable config file as one 'qprune: error:' line,
  exit status 2."""
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
      exit_with_error(str(e))
  argv = unset_spellings(argv)
  _ARGV[:] = argv
  _OVERRIDDEN[:] = overridden_fields(argv)
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: a field the config does not have
    exit_with_error(flag_error(e, argv))
  except (flags.Error, TypeError, ValueError) as e:
    exit_with_error(flag_error(e, argv))
  except OSError as e:  # an override on a config file that did not load
    exit_with_error(load_error(e, argv))
  try:
    config_value = _CONFIG.value
    config_value.keys()  # ml_collections defers a config file's load error to the first use
  except Exception as e:  # pylint: disable=broad-except
    exit_with_error(load_error(e, argv))
  if _PRINT_CONFIG.value:
    configs.normalize(config_value)
    print(json.dumps(config_value.to_dict(), indent=2, default=str))
    try:
      configs.validate(config_value, overridden())
    except configs.ConfigError as e:
      print(f'qprune: warning: this config would be refused: {e}', file=sys.stderr, flush=True)
    sys.exit(0)
  if _WORKDIR.value is None:
    exit_with_error('--workdir is required (the folder the run writes into; see --help)')
  if flags.FLAGS['only_check_args'].value:
    error = check(config_value, _WORKDIR.value, overridden())
    if error:
      exit_with_error(error)
  return rest


def check(config_value, workdir_value: str, fields=()) -> str | None:
  """The line the run would stop at before any work (runner.check), or None."""
  from qprune import runner  # pylint: disable=g-import-not-at-top
  from qprune.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    runner.check(config_value, workdir_value, fields)
  except UserError as e:
    return str(e)
  except OSError as e:
    from qprune import files  # pylint: disable=g-import-not-at-top
    return files.os_error_message(e)
  return None


def check_job_args(args) -> str | None:
  """The error `python -m qprune.main ARGS` would stop at before any work (flags, the config
  file, --config.* overrides, and runner.check: the same check as the run's), or None. Only
  --config* and --workdir are checked (other absl flags are left to the run). Each call has its
  own FlagValues, so one process checks a whole batch of jobs (launch.sh --dry-run)."""
  argv = unset_spellings(['qprune'] + [a for a in args if a.startswith(('--config',
                                                                         '--workdir'))])
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, sys_argv=argv)
  flags.DEFINE_string('workdir', None, '', flag_values=values)
  try:
    values(argv)
  except (AttributeError, KeyError, flags.Error, TypeError, ValueError) as e:
    return flag_error(e, argv)
  except OSError as e:  # an override on a config file that did not load
    return load_error(e, argv)
  if values['config'].value is None:
    return '--config is required'
  try:
    config_value = values['config'].value
    config_value.keys()  # a config file's load error surfaces here
  except Exception as e:  # pylint: disable=broad-except
    return load_error(e, argv)
  if values['workdir'].value is None:
    from qprune import configs  # pylint: disable=g-import-not-at-top
    try:
      configs.validate(config_value, overridden_fields(argv))
    except configs.ConfigError as e:
      return str(e)
    return None
  return check(config_value, values['workdir'].value, overridden_fields(argv))


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
