"""The binary's command line: --help, --print_config, --only_check_args, clean flag errors.

Each case is one subprocess of `python -m qprune.main` (it pays the JAX import), so few of them.
"""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

LENET = os.path.join(REPO_ROOT, 'configs', 'mnist_lenet5.py')
# Not verbose: the huge-page re-exec (where the machine has it) must stay silent.
_ENV = {k: v for k, v in os.environ.items() if k != 'QPRUNE_VERBOSE'}


def qprune_main(*args):
  return subprocess.run([sys.executable, '-m', 'qprune.main', *args], capture_output=True,
                        text=True, timeout=300, cwd=REPO_ROOT, env=_ENV)


def test_help_lists_modes_configs_and_fields():
  out = qprune_main('--help')
  assert out.returncode == 0, out.stderr[-2000:]
  for mode in ('train', 'quantize', 'prune', 'pipeline'):
    assert f'\n  {mode} ' in out.stdout
  for name in os.listdir(os.path.join(REPO_ROOT, 'configs')):
    if name.endswith('.py'):
      assert f'  {name} ' in out.stdout, name
  for text in ("epochs=10", "dataset='mnist'", 'quant.* (mode', 'prune.* (mode', '--print_config',
               '--only_check_args', '--workdir'):
    assert text in out.stdout, text
  # every quant.*/prune.* field with its default and what it does (configs.FIELD_HELP)
  assert 'quant.bits=None' in out.stdout and 'bits a weight, every method' in out.stdout
  assert 'prune.eb_window=5' in out.stdout and 'Early-Bird: masks compared' in out.stdout
  assert out.stderr == ''  # no re-exec line without -v / QPRUNE_VERBOSE


def test_print_config_shows_overrides_and_runs_nothing(tmp_path):
  out = qprune_main(f'--config={LENET}', '--config.epochs=3', '--config.quant.k=4',
                    "--config.prune.max_params=''", '--config.prune.search_ratios=',
                    '--config.train_subset=0', '--print_config')
  assert out.returncode == 0, out.stderr[-2000:]
  config = json.loads(out.stdout)
  assert config['epochs'] == 3 and config['quant']['k'] == 4 and config['model'] == 'lenet5'
  # unset optional fields are null, whichever spelling unset them
  assert config['prune']['max_params'] is None and config['prune']['search_ratios'] is None
  assert config['train_subset'] is None and config['init_from'] is None
  # quant.k in a train config would be refused by the run: said, not hidden
  assert "quant.k=4: does not apply to mode='train'" in out.stderr


@pytest.mark.parametrize('overrides, status, message', [
    (['--config.epochs=2'], 0, None),
    (['--config.mode=compress'], 2, "qprune: error: bad config: mode='compress': must be one of"),
    (['--config.epoch=1'], 2,
     "qprune: error: unknown config field 'epoch'; did you mean 'epochs'?"),
])
def test_only_check_args_validates(overrides, status, message, tmp_path):
  out = qprune_main(f'--config={LENET}', f'--workdir={tmp_path / "w"}', *overrides,
                    '--only_check_args')
  assert out.returncode == status, out.stderr[-2000:]
  if message:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
    assert '\\' not in lines[0]  # no escaped quotes from the KeyError's repr
  assert not os.path.exists(tmp_path / 'w')


def test_flag_error_messages():
  """ml_collections' exceptions -> one line naming the full dotted field (in-process: cheap)."""
  from qprune import cli  # pylint: disable=g-import-not-at-top
  argv = ['qprune', '--config=c.py', '--config.quant.methd=inq']
  typo = AttributeError(KeyError('\'methd\'\nDid you mean "method" instead of "methd"?'))
  assert cli.flag_error(typo, argv).startswith(
      "unknown config field 'quant.methd'; did you mean 'quant.method'?")
  unknown = AttributeError(KeyError("'bogus'"))
  assert cli.flag_error(unknown, ['q', '--config.bogus=1']).startswith(
      "unknown config field 'bogus' (")
  from absl import flags  # pylint: disable=g-import-not-at-top
  missing = flags.IllegalFlagValueError(
      'flag --config=None: Flag --config must have a value other than None.')
  assert cli.flag_error(missing, ['q']).startswith('--config is required')
  # a config field given as a flag: the --config. spelling (issue 37)
  flag = flags.UnrecognizedFlagError('epochs', '1')
  assert cli.flag_error(flag, ['q', '--epochs=1']) == (
      'unknown flag --epochs: config fields are set with --config.epochs=1 (see --help)')
  flag = flags.UnrecognizedFlagError('quant.k', '2')
  assert 'set with --config.quant.k=2' in cli.flag_error(flag, ['q', '--quant.k=2'])


def test_version_has_one_source():
  import configparser  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top

  import qprune  # pylint: disable=g-import-not-at-top
  setup = configparser.ConfigParser()
  setup.read(os.path.join(REPO_ROOT, 'setup.cfg'))
  assert setup['metadata']['version'] == 'attr: qprune.__version__'
  assert re.fullmatch(r'\d+\.\d+\.\d+([.-]?\w+)?', qprune.__version__)


def test_user_visible_text_stands_on_its_own():
  """No workspace paths (../shared, MISSION.md) or thesis equation/figure numbers in what a user
  of a clone reads: README, launch.sh, configs, the package's docstrings and messages. (Tests and
  .ci keep ../shared/data: that is CI's data layout, $QPRUNE_DATA_DIR elsewhere.)"""
  import glob  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  pattern = re.compile(r'\.\./shared|MISSION\.md|\beqs?\. ?\d|\bfig(ure|\.)? ?\d\.\d|thesis',
                       re.I)
  paths = ['README.md', 'launch.sh'] + [
      p for p in glob.glob('docs/*.md', root_dir=REPO_ROOT)] + [
      p for p in glob.glob('configs/**/*', root_dir=REPO_ROOT, recursive=True)
      if os.path.isfile(os.path.join(REPO_ROOT, p))] + [
      p for p in glob.glob('qprune/**/*.py', root_dir=REPO_ROOT, recursive=True)
      if not p.startswith('qprune/report/')]  # TODO(report owner): plots/markdown/scan texts
  found = []
  for path in paths:
    with open(os.path.join(REPO_ROOT, path)) as f:
      text = f.read()
    found += [f'{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}'
              for m in pattern.finditer(text)]
  assert not found, found
