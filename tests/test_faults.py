"""Fault injection: every case damages one input (config, workdir, disk, run file, dataset, cache,
export, signal, a second process) and checks the binary's answer: the exit status, one clear
'qprune: ...' line, no traceback, existing files byte-identical, and, where the run can go on,
that the rerun ends bit-identical to an uninterrupted run.

Most cases run in-process through `qprune.main.run_reporting_errors` (the binary's boundary) on a
tiny MNIST copy built from the real data (8 train + 4 test images per class); the `e2e_` ones run
the binary. `python tools/fault_table.py` runs every case and prints the markdown table.
"""
import contextlib
import dataclasses
import errno
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import REPO_ROOT, shared_data_dir  # noqa: E402  pylint: disable=wrong-import-position

TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 4
LOCK = '.qprune.lock'


# ---------------------------------------------------------------------------------------------
# Outcome of a case, and what "clear" means.

@dataclasses.dataclass
class Outcome:
  status: int                  # exit status (0 for a library call that returned)
  output: str                  # stderr (+ stdout) of the call
  expect_status: int = 2
  expect: str = ''             # regex the reported line must match
  unchanged: bool | None = None          # existing files byte-identical (None: not checked)
  resumed_identical: bool | None = None  # rerun's params == uninterrupted run's (None: n/a)
  wrong: str = ''              # what the run got silently wrong ('' when nothing, or unchecked)
  hung: bool = False           # it did not end within the case's time limit

  @property
  def line(self) -> str:
    """The line the user reads: the error/interrupt line, else the first warning, else ''."""
    lines = [ln for ln in self.output.splitlines() if _PROGRAMS.match(ln)]
    for kind in ('error', 'interrupted', 'warning'):
      found = [ln for ln in lines if _PROGRAMS.match(ln).group(2) == kind]
      if found:
        return found[0]
    nothing = [ln for ln in self.output.splitlines() if 'nothing to do' in ln]
    return nothing[0] if nothing else ''

  def problems(self) -> list:
    out = []
    if self.hung:
      out.append('it hung (killed after its time limit)')
    if self.status != self.expect_status:
      out.append(f'exit status {self.status}, expected {self.expect_status}')
    if 'Traceback' in self.output:
      out.append('a traceback was printed')
    final = [ln for ln in self.output.splitlines()
             if _PROGRAMS.match(ln) and _PROGRAMS.match(ln).group(2) in ('error', 'interrupted')]
    if self.expect_status != 0 and len(final) != 1:
      out.append(f'{len(final)} error lines, expected 1')
    if self.expect_status == 0 and final:
      out.append(f'unexpected error line {final[0]!r}')
    if self.expect and not re.search(self.expect, self.line):
      out.append(f'line {self.line!r} does not match {self.expect!r}')
    if self.unchanged is False:
      out.append('an existing file changed')
    if self.resumed_identical is False:
      out.append('the rerun is not bit-identical to an uninterrupted run')
    if self.wrong:
      out.append(f'silently wrong: {self.wrong}')
    return out

  @property
  def kind(self) -> str:
    """The fault class of the answer (issue tables count these): clear, hang, data loss,
    traceback, silent (rc 0 where a refusal or another result was due) or unclear."""
    return classify(self)


# The programs whose one-line answers a case reads: the binary, the export binary, launch.sh.
_PROGRAMS = re.compile(r'^(qprune|qprune\.export|launch\.sh): (error|interrupted|warning):')
KINDS = ('clear', 'unclear', 'traceback', 'hang', 'silent', 'data loss')


def classify(outcome) -> str:
  """One of KINDS for any object with Outcome's fields (the other fault modules' too)."""
  if not outcome.problems():
    return 'clear'
  if getattr(outcome, 'hung', False):
    return 'hang'
  if outcome.unchanged is False and outcome.expect_status != 0:
    return 'data loss'
  if 'Traceback' in outcome.output:
    return 'traceback'
  if getattr(outcome, 'wrong', '') or (outcome.status == 0 and outcome.expect_status != 0):
    return 'silent'
  if outcome.unchanged is False:
    return 'data loss'
  return 'unclear'


def case_registry():
  """(CASES, SLOW, case) for one fault module: `@case(name, slow=False)` registers a function
  `(env, tmp) -> Outcome` under `name` in CASES (tools/fault_table.py reads every module's)."""
  cases: dict[str, Callable] = {}
  slow_cases: set = set()

  def case(name, slow=False):
    def register(fn):
      assert name not in cases, name
      cases[name] = fn
      if slow:
        slow_cases.add(name)
      return fn
    return register

  return cases, slow_cases, case


CASES, SLOW, case = case_registry()


# ---------------------------------------------------------------------------------------------
# Environment: tiny data, configs, a finished run (built once per session).

def _tiny_mnist(dest: str):
  """<dest>/mnist/{train,test}/<label>/<file>.png: the first images of each class, real MNIST."""
  source = os.path.join(shared_data_dir(), 'mnist.tar.gz')
  want = {'train': TRAIN_PER_CLASS, 'test': TEST_PER_CLASS}
  counts = {}
  with tarfile.open(source) as tar:
    for member in tar:
      parts = member.name.split('/')
      if len(parts) != 4 or not member.isfile():
        continue
      _, split, label, name = parts
      if counts.get((split, label), 0) >= want[split]:
        continue
      counts[split, label] = counts.get((split, label), 0) + 1
      folder = os.path.join(dest, 'mnist', split, label)
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, name), 'wb') as f:
        f.write(tar.extractfile(member).read())
      if len(counts) == 20 and all(n >= want[s] for (s, _), n in counts.items()):
        break


class Env:
  """Shared, lazily built inputs of the cases (each case copies what it damages)."""

  def __init__(self, root: str):
    self.root = root
    self._finished = None
    self._params = None

  @property
  def data(self) -> str:
    path = os.path.join(self.root, 'data')
    if not os.path.isdir(path):
      _tiny_mnist(path)
    return path

  def copy_data(self, tmp, tar=False) -> str:
    dest = os.path.join(tmp, 'data')
    if tar:
      os.makedirs(dest)
      with tarfile.open(os.path.join(dest, 'mnist.tar.gz'), 'w:gz') as f:
        f.add(os.path.join(self.data, 'mnist'), arcname='mnist')
    else:
      shutil.copytree(self.data, dest)
    return dest

  def config(self, tmp, file='mnist_lenet5.py', data_dir=None, **overrides):
    import ml_collections  # pylint: disable=g-import-not-at-top

    from qprune import configs  # pylint: disable=g-import-not-at-top
    config = configs.sibling_config(os.path.join(REPO_ROOT, 'configs', file),
                                    file[:-3])
    config.update_from_flattened_dict({
        'data_dir': data_dir or self.data, 'cache_dir': os.path.join(tmp, 'cache'),
        'epochs': 2, 'batch_size': 32, 'eval_batch_size': 40, 'progress': False})
    with config.unlocked():
      for key, value in overrides.items():
        node = config
        *parents, leaf = key.split('__')
        for p in parents:
          node = node[p]
        node[leaf] = value
    assert isinstance(config, ml_collections.ConfigDict)
    return config

  def finished(self) -> str:
    """A finished 2-epoch run (the reference of every resume)."""
    if self._finished is None:
      path = os.path.join(self.root, 'finished')
      status, output = call(self.config(self.root), path)
      assert status == 0, output
      self._finished = path
    return self._finished

  def copy_finished(self, tmp) -> str:
    dest = os.path.join(tmp, 'w')
    shutil.copytree(self.finished(), dest)
    return dest

  def quantized(self) -> str:
    """A finished quantize run of the finished model (one INQ step of one epoch)."""
    path = os.path.join(self.root, 'quantized')
    if not os.path.exists(os.path.join(path, 'results.json')):
      status, output = call(self.quant_config(self.root), path)
      assert status == 0, output
    return path

  def quant_config(self, tmp, **overrides):
    """The quantize config of the finished run, made quick (one INQ step, one epoch)."""
    quick = {'init_from': self.finished(), 'quant__schedule': (1.0,),
             'quant__retrain_epochs': 1, 'quant__final_epochs': 0}
    return self.config(tmp, file='mnist_lenet5_quant.py', **{**quick, **overrides})

  def prune_config(self, tmp, **overrides):
    """The prune config made to fit the tiny data (a 20-image holdout, small batches)."""
    quick = {'batch_size': 16, 'prune__holdout': 20, 'prune__score_batches': 1,
             'prune__bn_batches': 1, 'prune__finetune_epochs': 1}
    return self.config(tmp, file='mnist_lenet5_prune.py', **{**quick, **overrides})

  def reference_params(self):
    if self._params is None:
      self._params = params(self.finished())
    return self._params


def params(workdir):
  import jax  # pylint: disable=g-import-not-at-top

  from qprune.artifacts import load_saved_model  # pylint: disable=g-import-not-at-top
  _, variables = load_saved_model(workdir)
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(variables)]


def same_params(env, workdir) -> bool:
  a, b = env.reference_params(), params(workdir)
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def call(config, workdir):
  """(exit status, stderr + stdout) of the binary's boundary run in-process."""
  from qprune import main  # pylint: disable=g-import-not-at-top
  err, out = io.StringIO(), io.StringIO()
  status = 0
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      main.run_reporting_errors(config, str(workdir))
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else 1
  return status, err.getvalue() + out.getvalue()


def call_fn(fn, *args):
  """(exit status, output) of a parse/main function that may sys.exit."""
  err, out = io.StringIO(), io.StringIO()
  status = 0
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      fn(*args)
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else 1
  return status, err.getvalue() + out.getvalue()


def snapshot(*roots) -> dict:
  out = {}
  for root in roots:
    root = str(root)
    if os.path.isfile(root):
      with open(root, 'rb') as f:
        out[root] = f.read()
      continue
    for folder, _, names in os.walk(root):
      for name in names:
        if name != LOCK:
          path = os.path.join(folder, name)
          with open(path, 'rb') as f:
            out[path] = f.read()
  return out


def unchanged(before: dict) -> bool:
  """Every file of the snapshot still exists with the same bytes."""
  for path, data in before.items():
    try:
      with open(path, 'rb') as f:
        if f.read() != data:
          return False
    except OSError:
      return False
  return True


def _patch(monkey, target, name, value):
  monkey.setattr(target, name, value)


@contextlib.contextmanager
def patched():
  mp = pytest.MonkeyPatch()
  try:
    yield mp
  finally:
    mp.undo()


# ---------------------------------------------------------------------------------------------
# Config values (validation before any work: nothing is created).

_BAD_VALUES = [
    ('warmup_epochs_inf', {'warmup_epochs': float('inf')}, 'warmup_epochs'),
    ('warmup_beyond_epochs', {'warmup_epochs': 5.0}, 'warmup_epochs'),
    ('learning_rate_nan', {'learning_rate': float('nan')}, 'learning_rate'),
    ('width_inf', {'width': float('inf')}, 'width'),
    ('momentum_nan', {'momentum': float('nan')}, 'momentum'),
    ('weight_decay_negative', {'weight_decay': -1.0}, 'weight_decay'),
    ('seed_negative', {'seed': -1}, 'seed'),
    ('seed_too_large', {'seed': 2 ** 40}, 'seed'),
    ('batch_size_zero', {'batch_size': 0}, 'batch_size'),
    ('epochs_negative', {'epochs': -1}, 'epochs'),
    ('width_huge', {'width': 1e9}, 'width'),
    ('quant_bits_16', {'mode': 'quantize', 'init_from': '/nonexistent', 'quant__bits': 16},
     r'quant\.bits'),
    ('quant_bits_1', {'mode': 'quantize', 'init_from': '/nonexistent', 'quant__bits': 1},
     r'quant\.bits'),
    ('export_name_empty', {'mode': 'quantize', 'init_from': '/x', 'quant__export_name': ''},
     r'quant\.export_name'),
    ('export_name_dotdot', {'mode': 'quantize', 'init_from': '/x',
                            'quant__export_name': '../outside.qpq'}, r'quant\.export_name'),
    ('export_name_run_file', {'mode': 'quantize', 'init_from': '/x',
                              'quant__export_name': 'results.json'}, r'quant\.export_name'),
    ('bits_budget_inf', {'mode': 'quantize', 'init_from': '/x', 'quant__bits_budget': float('inf')},
     r'quant\.bits_budget'),
    ('schedule_nan', {'mode': 'quantize', 'init_from': '/x',
                      'quant__schedule': (0.5, float('nan'), 1.0)}, r'quant\.schedule'),
    ('max_params_nan', {'mode': 'prune', 'prune__max_params': float('nan')}, r'prune\.max_params'),
    ('eb_threshold_inf', {'mode': 'prune', 'prune__eb_threshold': float('inf')},
     r'prune\.eb_threshold'),
]


def _bad_value_case(overrides, field):
  def run_case(env, tmp):
    workdir = os.path.join(tmp, 'w')
    status, output = call(env.config(tmp, **overrides), workdir)
    return Outcome(status, output, expect=f'bad config: .*{field}',
                   unchanged=not os.path.exists(workdir))
  return run_case


for _name, _overrides, _field in _BAD_VALUES:
  case(f'config_{_name}')(_bad_value_case(_overrides, _field))


# ---------------------------------------------------------------------------------------------
# Config files and the command line (parsed in-process, before absl's parser).

def _config_file_case(text, expect, path_kind='file'):
  def run_case(env, tmp):
    from qprune import main  # pylint: disable=g-import-not-at-top
    path = os.path.join(tmp, 'cfg.py')
    if path_kind == 'file':
      with open(path, 'w') as f:
        f.write(text)
    elif path_kind == 'folder':
      os.makedirs(path)
    before = snapshot(tmp)
    status, output = call_fn(main.parse_flags, ['qprune', f'--config={path}',
                                                f'--workdir={tmp}/w'])
    return Outcome(status, output, expect=expect,
                   unchanged=unchanged(before) and not os.path.exists(f'{tmp}/w'))
  return run_case


case('configfile_missing')(_config_file_case('', 'cfg.py: not found', path_kind='none'))
case('configfile_is_folder')(_config_file_case('', 'cfg.py: a folder', path_kind='folder'))
case('configfile_syntax_error')(_config_file_case('x = (\n', r'line 1: syntax error'))
case('configfile_no_get_config')(_config_file_case('def f():\n  pass\n', 'defines no get_config'))
case('configfile_get_config_raises')(_config_file_case(
    'def get_config():\n  raise RuntimeError("boom")\n', 'get_config.. raised RuntimeError: boom'))
case('configfile_get_config_returns_dict')(_config_file_case(
    'def get_config():\n  return {}\n', 'returned a dict, not a ConfigDict'))
case('configfile_import_fails')(_config_file_case(
    'import no_such_module_qprune\n', 'loading it raised ModuleNotFoundError'))


@case('cli_empty_config_flag')
def _(env, tmp):
  from qprune import main  # pylint: disable=g-import-not-at-top
  status, output = call_fn(main.parse_flags, ['qprune', '--config=', f'--workdir={tmp}/w'])
  return Outcome(status, output, expect='--config is empty', unchanged=True)


@case('cli_extra_positional_argument')
def _(env, tmp):
  from qprune import main  # pylint: disable=g-import-not-at-top
  status, output = call_fn(main.main, ['qprune', 'stray'])
  return Outcome(status, output, expect='unexpected arguments: stray', unchanged=True)


# ---------------------------------------------------------------------------------------------
# Workdir and disk.

@case('workdir_is_a_file')
def _(env, tmp):
  path = os.path.join(tmp, 'file')
  with open(path, 'w') as f:
    f.write('not a folder')
  before = snapshot(path)
  status, output = call(env.config(tmp), path)
  return Outcome(status, output, expect='is a file, not a folder', unchanged=unchanged(before))


@case('workdir_empty_string')
def _(env, tmp):
  status, output = call(env.config(tmp), '')
  return Outcome(status, output, expect='--workdir is empty', unchanged=True)


@contextlib.contextmanager
def read_only(prefix):
  """Every write under `prefix` fails with EROFS (root ignores chmod, so the OS calls are
  patched); reads work."""
  import builtins  # pylint: disable=g-import-not-at-top
  prefix = os.path.abspath(prefix)

  def under(path):
    try:
      return os.path.abspath(os.fspath(path)).startswith(prefix)
    except TypeError:
      return False

  def deny(path):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

  real_open, real_os_open = builtins.open, os.open
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

  def fake_open(file, mode='r', *a, **k):
    if under(file) and any(c in mode for c in 'wax+'):
      deny(file)
    return real_open(file, mode, *a, **k)

  def fake_os_open(path, flags, *a, **k):
    if under(path) and flags & write_flags:
      deny(path)
    return real_os_open(path, flags, *a, **k)

  def wrap(fn, *argnums):
    def wrapped(*a, **k):
      for i in argnums:
        if i < len(a) and under(a[i]):
          deny(a[i])
      if 'dir' in k and under(k['dir']):
        deny(k['dir'])
      return fn(*a, **k)
    return wrapped

  with patched() as mp:
    mp.setattr(builtins, 'open', fake_open)
    mp.setattr(os, 'open', fake_os_open)
    for name in ('makedirs', 'mkdir', 'unlink', 'remove', 'rmdir'):
      mp.setattr(os, name, wrap(getattr(os, name), 0))
    for name in ('replace', 'rename'):
      mp.setattr(os, name, wrap(getattr(os, name), 0, 1))
    mp.setattr(shutil, 'rmtree', wrap(shutil.rmtree, 0))
    mp.setattr(tempfile, 'mkstemp', wrap(tempfile.mkstemp))
    yield


@case('readonly_finished_run_nothing_to_do')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  before = snapshot(workdir)
  with read_only(workdir):
    status, output = call(env.config(tmp), workdir)
  return Outcome(status, output, expect_status=0, expect='nothing to do',
                 unchanged=unchanged(before) and snapshot(workdir).keys() == before.keys())


@case('readonly_new_workdir')
def _(env, tmp):
  workdir = os.path.join(tmp, 'w')
  os.makedirs(workdir)
  with read_only(workdir):
    status, output = call(env.config(tmp), workdir)
  return Outcome(status, output, expect=r'workdir .* is not writable \(Read-only',
                 unchanged=os.listdir(workdir) == [])


@case('readonly_unfinished_run')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  os.unlink(os.path.join(workdir, 'results.json'))
  before = snapshot(workdir)
  with read_only(workdir):
    status, output = call(env.config(tmp), workdir)
  return Outcome(status, output, expect='not writable', unchanged=unchanged(before))


@case('checkpoints_is_a_file')
def _(env, tmp):
  workdir = os.path.join(tmp, 'w')
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'checkpoints'), 'w') as f:
    f.write('x')
  before = snapshot(workdir)
  status, output = call(env.config(tmp), workdir)
  return Outcome(status, output, expect='checkpoints is a file', unchanged=unchanged(before))


def _fail_nth_save(mp, n, error):
  """CheckpointStore.save raises `error` on its n-th call (1-based) of this case."""
  from qprune.train import checkpoint  # pylint: disable=g-import-not-at-top
  real, calls = checkpoint.CheckpointStore.save, []

  def save(self, *a, **k):
    calls.append(1)
    if len(calls) == n:
      raise error(self)
    return real(self, *a, **k)
  mp.setattr(checkpoint.CheckpointStore, 'save', save)


def _then_resume(env, tmp, workdir, outcome):
  """Reruns the same command unpatched: must finish (0) with the reference params."""
  status, output = call(env.config(tmp), workdir)
  outcome.resumed_identical = status == 0 and same_params(env, workdir)
  if status != 0:
    outcome.output += '\n[rerun] ' + output
  return outcome


@case('disk_full_during_checkpoint')
def _(env, tmp):
  workdir = os.path.join(tmp, 'w')
  with patched() as mp:
    _fail_nth_save(mp, 2, lambda s: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), s.directory))
    status, output = call(env.config(tmp), workdir)
  before = snapshot(workdir)
  out = Outcome(status, output, expect='disk full writing .*checkpoints')
  out = _then_resume(env, tmp, workdir, out)
  out.unchanged = all(p in snapshot(workdir) for p in before if 'checkpoints' not in p)
  return out


@case('disk_full_orbax_message')
def _(env, tmp):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(tmp, 'w')
  real, calls = ocp.CheckpointManager.save, []

  def save(self, *a, **k):
    calls.append(1)
    if len(calls) == 2:
      raise ValueError('tensorstore: Error writing "x": [OS error: No space left on device]')
    return real(self, *a, **k)
  with patched() as mp:
    mp.setattr(ocp.CheckpointManager, 'save', save)
    status, output = call(env.config(tmp), workdir)
  return _then_resume(env, tmp, workdir, Outcome(status, output, expect='disk full writing',
                                                 unchanged=True))


@case('disk_full_writing_results')
def _(env, tmp):
  from qprune import files  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(tmp, 'w')
  real = files.write_json_atomic

  def write(path, obj):
    if path.endswith('results.json'):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return real(path, obj)
  with patched() as mp:
    mp.setattr(files, 'write_json_atomic', write)
    status, output = call(env.config(tmp), workdir)
  out = Outcome(status, output, expect='disk full writing .*results.json',
                unchanged=not os.path.exists(os.path.join(workdir, 'results.json')))
  return _then_resume(env, tmp, workdir, out)


@case('disk_full_writing_model')
def _(env, tmp):
  from qprune.train import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(tmp, 'w')

  def save_variables(directory, variables):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory + '.tmp')
  with patched() as mp:
    mp.setattr(checkpoint, 'save_variables', save_variables)
    status, output = call(env.config(tmp), workdir)
  return _then_resume(env, tmp, workdir, Outcome(status, output, expect='disk full writing',
                                                 unchanged=True))


@case('permission_denied_writing_metrics')
def _(env, tmp):
  import builtins  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(tmp, 'w')
  real_open = builtins.open

  def fake_open(file, mode='r', *a, **k):
    if str(file).endswith('metrics.jsonl') and 'a' in mode:
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
    return real_open(file, mode, *a, **k)
  with patched() as mp:
    mp.setattr(builtins, 'open', fake_open)
    status, output = call(env.config(tmp), workdir)
  return _then_resume(env, tmp, workdir, Outcome(status, output,
                                                 expect='cannot write .*metrics.jsonl',
                                                 unchanged=True))


# ---------------------------------------------------------------------------------------------
# Damaged run files.

def _damaged_run_file(name, content, expect, mode='train'):
  def run_case(env, tmp):
    workdir = env.copy_finished(tmp)
    path = os.path.join(workdir, name)
    if content is None:  # a folder where the file should be
      os.unlink(path)
      os.makedirs(path)
    else:
      with open(path, 'rb') as f:
        data = f.read()
      with open(path, 'wb') as f:
        f.write(content(data))
    before = snapshot(workdir)
    if mode == 'train':
      config = env.config(tmp)
      target = workdir
    else:  # model files are read through init_from
      config = env.config(tmp, file='mnist_lenet5_quant.py', init_from=workdir)
      target = os.path.join(tmp, 'q')
    status, output = call(config, target)
    return Outcome(status, output, expect=expect, unchanged=unchanged(before))
  return run_case


def _half(data):
  return data[:len(data) // 2]


for _file, _content, _what in [
    ('results.json', _half, 'truncated'),
    ('results.json', lambda d: b'[1, 2]', 'list'),
    ('results.json', lambda d: b'{}', 'empty_object'),
    ('results.json', lambda d: b'\xff\xfe\x00garbage', 'binary'),
    ('results.json', None, 'folder'),
    ('config.json', _half, 'truncated'),
    ('config.json', lambda d: b'"train"', 'string'),
    ('config.json', lambda d: b'{"seed": 0}', 'missing_keys'),
    ('config.json', lambda d: b'', 'empty'),
]:
  _expect = (f'{_file} is a folder' if _content is None else f'{_file} is damaged')
  case(f'runfile_{_file.split(".")[0]}_{_what}')(_damaged_run_file(_file, _content, _expect))

case('runfile_model_json_truncated')(_damaged_run_file(
    'model.json', _half, 'model.json is damaged', mode='init_from'))
case('runfile_model_json_wrong_shape')(_damaged_run_file(
    'model.json', lambda d: b'{"name": "lenet5"}', r'model.json is damaged \(missing',
    mode='init_from'))


@case('runfile_model_variables_damaged')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  for folder, _, names in os.walk(os.path.join(workdir, 'model')):
    for name in names:
      path = os.path.join(folder, name)
      if os.path.getsize(path) > 64:
        with open(path, 'r+b') as f:
          f.write(b'\0garbage' * 8)
  before = snapshot(workdir)
  config = env.config(tmp, file='mnist_lenet5_quant.py', init_from=workdir)
  status, output = call(config, os.path.join(tmp, 'q'))
  return Outcome(status, output, expect='cannot read saved variables', unchanged=unchanged(before))


@case('runfile_checkpoint_damaged')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  os.unlink(os.path.join(workdir, 'results.json'))
  ckpt = os.path.join(workdir, 'checkpoints')
  step = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
  for folder, _, names in os.walk(os.path.join(ckpt, str(step), 'state')):
    for name in names:
      with open(os.path.join(folder, name), 'r+b') as f:
        f.write(b'\0garbage' * 8)
  before = snapshot(workdir)
  status, output = call(env.config(tmp), workdir)
  return Outcome(status, output, expect='cannot restore checkpoint', unchanged=unchanged(before))


@case('runfile_metrics_damaged_resume')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  os.unlink(os.path.join(workdir, 'results.json'))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'wb') as f:
    f.write(b'{"epoch": 1, "tr')
  status, output = call(env.config(tmp), workdir)
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  out = Outcome(status, output, expect_status=0, unchanged=True,
                resumed_identical=status == 0 and same_params(env, workdir) and
                [json.loads(ln)['epoch'] for ln in lines] == [1, 2])
  return out


def _stage_results_case(content):
  def run_case(env, tmp):
    workdir = os.path.join(tmp, 'w')
    os.makedirs(os.path.join(workdir, 'prune'))
    with open(os.path.join(workdir, 'prune', 'results.json'), 'wb') as f:
      f.write(content)
    before = snapshot(workdir)
    config = env.config(tmp, file='mnist_lenet5_pipeline.py')
    status, output = call(config, workdir)
    return Outcome(status, output, expect=r'prune/results.json is damaged',
                   unchanged=unchanged(before))
  return run_case


case('runfile_stage_results_truncated')(_stage_results_case(b'{"test_accuracy": 0.9'))
case('runfile_stage_results_wrong_shape')(_stage_results_case(b'[]'))
case('runfile_stage_results_missing_keys')(_stage_results_case(b'{"test_accuracy": 0.9}'))


@case('failed_run_config_does_not_block_rerun')
def _(env, tmp):
  """A run that failed before any output (a bad init_from) leaves its config.json; the corrected
  command is not refused as 'a different config' and ends like an uninterrupted run."""
  workdir = os.path.join(tmp, 'w')
  first, output = call(env.config(tmp, init_from=os.path.join(tmp, 'nowhere')), workdir)
  out = Outcome(first, output, expect="init_from=.*nowhere.* does not exist", unchanged=True)
  status, output = call(env.config(tmp), workdir)
  out.resumed_identical = status == 0 and same_params(env, workdir)
  if status != 0:
    out.output += '\n[rerun] ' + output
  return out


# ---------------------------------------------------------------------------------------------
# Locks and concurrent runs.

@case('lock_held_by_live_process')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  os.unlink(os.path.join(workdir, 'results.json'))
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, fcntl, json, os, socket, time\n'
       'fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n'
       'fcntl.flock(fd, fcntl.LOCK_EX)\n'
       'os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), '
       '"since": "now"}).encode())\n'
       'print("locked", flush=True)\n'
       'time.sleep(60)\n', os.path.join(workdir, LOCK)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    before = snapshot(workdir)
    status, output = call(env.config(tmp), workdir)
  finally:
    holder.kill()
    holder.wait()
  return Outcome(status, output, expect=rf'in use by pid {holder.pid} on ',
                 unchanged=unchanged(before))


@case('lock_stale_dead_pid_taken_over')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  os.unlink(os.path.join(workdir, 'results.json'))
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  with open(os.path.join(workdir, LOCK), 'w') as f:
    json.dump({'pid': dead.pid, 'host': socket.gethostname(), 'since': 'earlier'}, f)
  status, output = call(env.config(tmp), workdir)
  return Outcome(status, output, expect_status=0, unchanged=True,
                 resumed_identical=status == 0 and same_params(env, workdir) and
                 not os.path.exists(os.path.join(workdir, LOCK)))


@case('lock_file_garbage_taken_over')
def _(env, tmp):
  workdir = os.path.join(tmp, 'w')
  os.makedirs(workdir)
  with open(os.path.join(workdir, LOCK), 'wb') as f:
    f.write(b'\x00\xffnot json')
  status, output = call(env.config(tmp), workdir)
  return Outcome(status, output, expect_status=0, unchanged=True,
                 resumed_identical=status == 0 and same_params(env, workdir))


# ---------------------------------------------------------------------------------------------
# Dataset files.

def _first_image(data, split='train', label='3'):
  folder = os.path.join(data, 'mnist', split, label)
  return os.path.join(folder, sorted(os.listdir(folder))[0])


def _data_case(damage, expect, tar=False, expect_status=2, **overrides):
  def run_case(env, tmp):
    data = env.copy_data(tmp, tar=tar)
    where = damage(data)
    before = snapshot(data)
    status, output = call(env.config(tmp, data_dir=data, **overrides), os.path.join(tmp, 'w'))
    pattern = expect.format(where=re.escape(where or ''))
    return Outcome(status, output, expect_status=expect_status, expect=pattern,
                   unchanged=unchanged(before))
  return run_case


def _write(path, data):
  with open(path, 'wb') as f:
    f.write(data)
  return path


def _tar_path(data):
  return os.path.join(data, 'mnist.tar.gz')


case('data_tar_truncated')(_data_case(
    lambda d: _write(_tar_path(d), open(_tar_path(d), 'rb').read()[:3000]),
    r'{where} is damaged or not a tar archive', tar=True))
case('data_tar_garbage')(_data_case(
    lambda d: _write(_tar_path(d), b'not a tarball at all' * 50),
    r'{where} is damaged or not a tar archive', tar=True))
case('data_tar_empty_file')(_data_case(
    lambda d: _write(_tar_path(d), b''), r'{where}', tar=True))
case('data_tar_flipped_byte')(_data_case(
    lambda d: _write(_tar_path(d), (lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0xff]) +
                                    b[len(b) // 2 + 1:])(open(_tar_path(d), 'rb').read())),
    r'{where} is damaged or not a tar archive', tar=True))


def _tar_with(data, damage_member):
  """Rewrites the tarball from the folder copy with one member damaged."""
  src = os.path.join(data, 'src')
  with tarfile.open(_tar_path(data)) as tar:
    tar.extractall(src, filter='data')
  name = damage_member(os.path.join(src, 'mnist'))
  with tarfile.open(_tar_path(data), 'w:gz') as tar:
    tar.add(os.path.join(src, 'mnist'), arcname='mnist')
  shutil.rmtree(src)
  return name


def _damage_png_in_tar(data):
  _tar_with(data, lambda root: _write(_first_image(os.path.dirname(root), 'train', '5'),
                                      b'\x89PNG garbage'))
  return 'mnist.tar.gz:mnist/train/5/'


def _png_of_wrong_shape(data):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = _first_image(data)
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path, format='PNG')
  return path


case('data_tar_damaged_png')(_data_case(_damage_png_in_tar, r'{where}.*not a readable image',
                                        tar=True))
case('data_tar_no_test_split')(_data_case(
    lambda d: _tar_with(d, lambda root: shutil.rmtree(os.path.join(root, 'test'))) or
    'mnist.tar.gz', r'{where}: no test images', tar=True))
case('data_tar_test_label_renamed')(_data_case(
    lambda d: _tar_with(d, lambda root: os.rename(os.path.join(root, 'test', '7'),
                                                  os.path.join(root, 'test', 'seven'))) or
    'mnist.tar.gz', r'{where}: the label folders of test differ', tar=True))


def _image_folder_root(data):
  return os.path.join(data, 'mnist')


case('data_png_damaged')(_data_case(
    lambda d: _write(_first_image(d), b'\x89PNG\r\n\x1a\n truncated'),
    r'{where}: not a readable image \(OSError: '))
case('data_png_zero_bytes')(_data_case(
    lambda d: _write(_first_image(d), b''),
    r'{where}: not a readable image \(UnidentifiedImageError: cannot identify image file\)'))
case('data_png_wrong_shape')(_data_case(_png_of_wrong_shape,
                                        r'{where}: image of shape \(32, 32, 1\)'))
case('data_missing_test_split')(_data_case(
    lambda d: shutil.rmtree(os.path.join(d, 'mnist', 'test')) or os.path.join(d, 'mnist'),
    r'{where}: no test split folder'))
case('data_test_label_renamed')(_data_case(
    lambda d: os.rename(os.path.join(d, 'mnist', 'test', '7'),
                        os.path.join(d, 'mnist', 'test', 'seven')) or os.path.join(d, 'mnist'),
    r'{where}: the label folders of test differ .*only in train: 7; only in test: seven'))
case('data_test_label_missing')(_data_case(
    lambda d: shutil.rmtree(os.path.join(d, 'mnist', 'test', '9')) or os.path.join(d, 'mnist'),
    r'{where}: the label folders of test differ .*only in train: 9'))
case('data_extra_label_in_both_splits')(_data_case(
    lambda d: [shutil.copytree(os.path.join(d, 'mnist', s, '0'), os.path.join(d, 'mnist', s, 'x'))
               for s in ('train', 'test')] and os.path.join(d, 'mnist'),
    r'{where}: train split has 11 label folders, mnist has 10'))
case('data_empty_test_labels')(_data_case(
    lambda d: [os.unlink(os.path.join(d, 'mnist', 'test', ln, f))
               for ln in os.listdir(os.path.join(d, 'mnist', 'test'))
               for f in os.listdir(os.path.join(d, 'mnist', 'test', ln))] and
    os.path.join(d, 'mnist', 'test'), r'no images found in {where}'))
case('data_dir_missing')(_data_case(
    lambda d: shutil.rmtree(d) or d, r"dataset 'mnist' not found. Tried: {where}"))
case('data_batch_larger_than_train_set')(_data_case(
    lambda d: '', r'batch_size=256 is larger than the training set \(80', batch_size=256))


# ---------------------------------------------------------------------------------------------
# The uint8 cache.

def _cache_case(damage, expect):
  def run_case(env, tmp):
    cache = os.path.join(tmp, 'cache')
    first, output = call(env.config(tmp), os.path.join(tmp, 'w1'))
    assert first == 0, output
    (entry,) = [os.path.join(cache, d) for d in os.listdir(cache)]
    good = {n: np.load(os.path.join(entry, n)) for n in os.listdir(entry) if n.endswith('.npy')}
    damage(entry)
    workdir = os.path.join(tmp, 'w2')
    status, output = call(env.config(tmp), workdir)
    rebuilt = all(np.array_equal(np.load(os.path.join(entry, n)), a) for n, a in good.items())
    results = json.load(open(os.path.join(workdir, 'results.json'))) if status == 0 else {}
    recorded = any('cache' in w for w in results.get('warnings', []))
    return Outcome(status, output, expect_status=0, expect=expect,
                   unchanged=rebuilt and recorded,
                   resumed_identical=status == 0 and same_params(env, workdir))
  return run_case


def _overwrite_labels(entry):
  path = os.path.join(entry, 'train_labels.npy')
  np.save(path, np.zeros_like(np.load(path)))


case('cache_labels_overwritten')(_cache_case(_overwrite_labels, 'dataset cache .* is damaged'))
case('cache_images_truncated')(_cache_case(
    lambda e: _write(os.path.join(e, 'test_images.npy'),
                     open(os.path.join(e, 'test_images.npy'), 'rb').read()[:500]),
    'dataset cache .* is damaged'))
case('cache_manifest_missing')(_cache_case(
    lambda e: os.unlink(os.path.join(e, 'manifest.json')), 'dataset cache .*no manifest'))
case('cache_entry_is_a_file')(_cache_case(
    lambda e: shutil.rmtree(e) or _write(e, b'junk'), 'dataset cache .* is damaged'))


@case('cache_dir_is_a_file')
def _(env, tmp):
  cache = os.path.join(tmp, 'cache')
  _write(cache, b'not a folder')
  workdir = os.path.join(tmp, 'w')
  status, output = call(env.config(tmp), workdir)
  return Outcome(status, output, expect_status=0, unchanged=open(cache, 'rb').read() == b'not a '
                 b'folder', resumed_identical=status == 0 and same_params(env, workdir))


# ---------------------------------------------------------------------------------------------
# Signals, in-process (the handlers are the binary's: run_reporting_errors installs them).

def _signal_during_training(signum):
  def run_case(env, tmp):
    from qprune.train import checkpoint  # pylint: disable=g-import-not-at-top
    workdir = os.path.join(tmp, 'w')
    real, calls = checkpoint.CheckpointStore.save, []

    def save(self, *a, **k):
      real(self, *a, **k)
      calls.append(1)
      if len(calls) == 1:  # after epoch 1's checkpoint: lands during epoch 2's first step
        os.kill(os.getpid(), signum)
    with patched() as mp:
      mp.setattr(checkpoint.CheckpointStore, 'save', save)
      status, output = call(env.config(tmp), workdir)
    out = Outcome(status, output, expect_status=128 + signum,
                  expect=rf'interrupted: {signal.Signals(signum).name}: saved a checkpoint .* '
                         r'at epoch 2, step 1', unchanged=True)
    return _then_resume(env, tmp, workdir, out)
  return run_case


case('signal_sigint_mid_training')(_signal_during_training(signal.SIGINT))
case('signal_sigterm_mid_training')(_signal_during_training(signal.SIGTERM))


def _signal_before_training(signum, where):
  def run_case(env, tmp):
    from qprune.data import sources  # pylint: disable=g-import-not-at-top
    from qprune.modes import common  # pylint: disable=g-import-not-at-top
    workdir = os.path.join(tmp, 'w')
    target, name = {'data': (sources, 'load_arrays'), 'model': (common, 'save_model')}[where]
    real = getattr(target, name)

    def wrapped(*a, **k):
      os.kill(os.getpid(), signum)
      return real(*a, **k)
    with patched() as mp:
      mp.setattr(target, name, wrapped)
      status, output = call(env.config(tmp), workdir)
    out = Outcome(status, output, expect_status=128 + signum,
                  expect=rf'interrupted: {signal.Signals(signum).name}: stopped', unchanged=True)
    return _then_resume(env, tmp, workdir, out)
  return run_case


case('signal_sigint_during_data_load')(_signal_before_training(signal.SIGINT, 'data'))
case('signal_sigterm_during_data_load')(_signal_before_training(signal.SIGTERM, 'data'))
case('signal_sigint_before_saving_model')(_signal_before_training(signal.SIGINT, 'model'))


@case('signal_sigint_during_jax_tracing')
def _(env, tmp):
  """A Ctrl-C that lands inside JAX tracing/compilation (outside the training loop) is deferred
  until JAX returns, then stops the run with one line."""
  import jax  # pylint: disable=g-import-not-at-top

  from qprune.modes import common  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(tmp, 'w')
  real, traced = common.initial_model, []

  def initial_model(config):
    def body(x):
      os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside jax's tracing
      time.sleep(0.2)
      traced.append(1)
      return x * 2
    jax.block_until_ready(jax.jit(body)(np.float32(1.0)))
    return real(config)
  with patched() as mp:
    mp.setattr(common, 'initial_model', initial_model)
    status, output = call(env.config(tmp), workdir)
  out = Outcome(status, output, expect_status=130, expect='interrupted: SIGINT',
                unchanged=bool(traced))
  return _then_resume(env, tmp, workdir, out)


# ---------------------------------------------------------------------------------------------
# Quantized exports (library: qprune.load_quantized).

def _export(tmp):
  import jax  # pylint: disable=g-import-not-at-top

  from qprune import quant  # pylint: disable=g-import-not-at-top
  from qprune.models import create_model, init_variables  # pylint: disable=g-import-not-at-top
  from qprune.models.spec import model_spec  # pylint: disable=g-import-not-at-top
  model = create_model('lenet5', num_classes=10)
  variables = init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  targets = quant.inq_targets(quant.quantizable_layers(variables['params']), 4)
  path = os.path.join(tmp, 'm.qpq')
  quant.save_quantized(path, variables, targets, model_spec('lenet5', 10, (28, 28, 1)))
  return path


_PREAMBLE = struct.Struct('<8sHI')


def _rewrite_header(path, edit):
  data = open(path, 'rb').read()
  magic, version, n = _PREAMBLE.unpack_from(data)
  header = json.loads(zlib.decompress(data[_PREAMBLE.size:_PREAMBLE.size + n]))
  payload = data[_PREAMBLE.size + n:]
  header = edit(header) or header
  blob = zlib.compress(json.dumps(header).encode())
  _write(path, _PREAMBLE.pack(magic, version, len(blob)) + blob + payload)


def _leaf(header, kind):
  return next(ln for ln in header['leaves'] if ln['kind'] == kind)


def _qpq_case(damage, expect):
  def run_case(env, tmp):
    from qprune.errors import UserError  # pylint: disable=g-import-not-at-top
    from qprune.quant import export  # pylint: disable=g-import-not-at-top
    path = _export(tmp)
    damage(path)
    before = snapshot(path)
    try:
      export.load_quantized(path)
      status, output = 0, ''
    except UserError as e:
      status, output = 2, f'qprune: error: {e}'
    return Outcome(status, output, expect=expect.format(path=re.escape(path)),
                   unchanged=unchanged(before))
  return run_case


case('qpq_truncated')(_qpq_case(
    lambda p: _write(p, open(p, 'rb').read()[:-100]), r'{path}: quantized export truncated'))
case('qpq_bad_magic')(_qpq_case(
    lambda p: _write(p, b'NOTQPRUN' + open(p, 'rb').read()[8:]), r'{path}: not a qprune'))
case('qpq_payload_flipped_byte')(_qpq_case(
    lambda p: _write(p, (lambda b: b[:-1] + bytes([b[-1] ^ 1]))(open(p, 'rb').read())),
    r'{path}: .*CRC32 mismatch'))
case('qpq_header_missing_leaves')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: h.pop('leaves') and None), r"field 'leaves' is missing"))
case('qpq_header_not_object')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: [1, 2]), r'header is a JSON list'))
case('qpq_leaf_missing_kind')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: _leaf(h, 'float32').pop('kind') and None),
    r"leaf '.*' has no 'kind'"))
case('qpq_leaf_shape_vs_bytes')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: _leaf(h, 'float32').update(shape=[3, 7])),
    r"leaf '.*' holds \d+ bytes for shape \[3, 7\]"))
case('qpq_leaf_shape_wrong_for_model')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: _leaf(h, 'float32').update(
        shape=list(reversed(_leaf(h, 'float32')['shape'])) + [1])),
    r"leaf '.*': stored shape .* needs"))
case('qpq_leaf_bits_mismatch')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: _leaf(h, 'codes').update(bits=7)),
    r"leaf '.*' has bits=7"))
case('qpq_leaf_outside_payload')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: _leaf(h, 'codes').update(offset=10 ** 9)),
    r'outside the payload'))
case('qpq_leaf_unknown_codec')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: _leaf(h, 'codes').update(codec='zip')),
    r"unknown codec 'zip'"))
case('qpq_spec_unknown_model')(_qpq_case(
    lambda p: _rewrite_header(p, lambda h: h['spec'].update(name='resnet9000')),
    r'bad model spec'))


# ---------------------------------------------------------------------------------------------
# Silently accepted before: now a warning in results.json.

@case('prune_budget_no_candidate_fits', slow=True)
def _(env, tmp):
  workdir = os.path.join(tmp, 'w')
  config = env.config(tmp, file='mnist_lenet5_prune.py', epochs=1, batch_size=16,
                      prune__holdout=20, prune__stop_rule='full', prune__finetune_epochs=0,
                      prune__max_params=0.01, prune__score_batches=1, prune__bn_batches=1)
  status, output = call(config, workdir)
  warnings = (json.load(open(os.path.join(workdir, 'results.json'))).get('warnings', [])
              if status == 0 else [])
  return Outcome(status, output, expect_status=0, expect='no pruning candidate meets the budget',
                 unchanged=any('budget' in w for w in warnings))


# ---------------------------------------------------------------------------------------------
# Round three (issue 33): what a user does must never lose a run, never end in a traceback, never
# be silently ignored; --only_check_args answers as the run would; launch.sh survives real use.

# Data loss: `overwrite` never removes what the run still reads.

@case('overwrite_init_from_is_the_workdir')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  before = snapshot(workdir)
  status, output = call(env.quant_config(tmp, init_from=workdir, overwrite=True), workdir)
  return Outcome(status, output, expect=r'init_from=.* is the workdir itself',
                 unchanged=unchanged(before))


@case('overwrite_workdir_holds_init_from')
def _(env, tmp):
  """init_from inside a workdir that holds another run: overwrite would delete it first."""
  workdir = env.copy_finished(tmp)
  inner = os.path.join(workdir, 'fp')
  shutil.copytree(env.finished(), inner)
  before = snapshot(workdir)
  status, output = call(env.quant_config(tmp, init_from=inner, overwrite=True), workdir)
  return Outcome(status, output, expect=r'init_from=.* is inside the workdir',
                 unchanged=unchanged(before))


@case('overwrite_decide_from_is_the_workdir')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  before = snapshot(workdir)
  config = env.prune_config(tmp, overwrite=True, prune__stop_rule='fixed',
                            prune__pretrain_epochs=1, prune__decide_from=workdir)
  status, output = call(config, workdir)
  return Outcome(status, output, expect=r'prune\.decide_from=.* is the workdir itself',
                 unchanged=unchanged(before))


def _export_binary(workdir, *args):
  """(exit status, stderr + stdout) of `python -m qprune.export --workdir=W ARGS`."""
  proc = subprocess.run([sys.executable, '-m', 'qprune.export', f'--workdir={workdir}', *args],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stderr + proc.stdout


def _copy_quantized(env, tmp) -> str:
  dest = os.path.join(tmp, 'q')
  shutil.copytree(env.quantized(), dest)
  return dest


def _export_onto_run_file(fmt, target):
  def run_case(env, tmp):
    workdir = _copy_quantized(env, tmp)
    before = snapshot(workdir)
    status, output = _export_binary(workdir, f'--format={fmt}',
                                    f'--out={os.path.join(workdir, target)}')
    return Outcome(status, output, expect=r'--out=.* is .*run', unchanged=unchanged(before))
  return run_case


case('export_codes_onto_the_runs_qpq')(_export_onto_run_file('codes', 'model.qpq'))
case('export_onnx_onto_results_json')(_export_onto_run_file('onnx', 'results.json'))
case('export_into_the_runs_model_folder')(_export_onto_run_file('codes', 'model/codes.npz'))


@case('relocated_run_exports_its_own_qpq')
def _(env, tmp):
  """A quantize run copied elsewhere exports the copy's .qpq (paths in results.json are relative
  to the run), not the original's."""
  workdir = _copy_quantized(env, tmp)
  out = os.path.join(tmp, 'codes.npz')
  status, output = _export_binary(workdir, '--format=codes', f'--out={out}')
  source = json.loads(output.strip().splitlines()[-1]).get('source', '') if status == 0 else ''
  own = os.path.realpath(source).startswith(os.path.realpath(workdir) + os.sep)
  return Outcome(status, output, expect_status=0, unchanged=True,
                 wrong='' if status or own else f'exported {source}, not the copy\'s own file')


@case('relocated_run_damaged_qpq_is_reported')
def _(env, tmp):
  workdir = _copy_quantized(env, tmp)
  qpq = os.path.join(workdir, 'model.qpq')
  _write(qpq, open(qpq, 'rb').read()[:-200])
  status, output = _export_binary(workdir, '--format=onnx', f'--out={tmp}/m.onnx')
  return Outcome(status, output, expect=r'model\.qpq: quantized export truncated', unchanged=True)


# Tracebacks before.

def _check_args(config_file, workdir, *overrides):
  """(exit status, output) of `python -m qprune.main ... --only_check_args`."""
  proc = subprocess.run([sys.executable, '-m', 'qprune.main',
                         f'--config={os.path.join(REPO_ROOT, "configs", config_file)}',
                         f'--workdir={workdir}', *overrides, '--only_check_args'],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stderr + proc.stdout


@case('config_search_ratios_unset_by_empty_string')
def _(env, tmp):
  """README: '' unsets an optional field; the prune config then uses prune.ratio alone."""
  status, output = _check_args('mnist_lenet5_prune.py', f'{tmp}/w',
                               "--config.prune.search_ratios=''", f'--config.data_dir={env.data}')
  return Outcome(status, output, expect_status=0, unchanged=not os.path.exists(f'{tmp}/w'))


@case('config_max_params_unset_by_empty_string')
def _(env, tmp):
  status, output = _check_args('mnist_lenet5_prune.py', f'{tmp}/w', '--config.prune.max_params=',
                               f'--config.data_dir={env.data}')
  return Outcome(status, output, expect_status=0, unchanged=not os.path.exists(f'{tmp}/w'))


@case('config_ignored_layers_unknown')
def _(env, tmp):
  config = env.prune_config(tmp, prune__ignored_layers=('nonexistent',))
  status, output = call(config, os.path.join(tmp, 'w'))
  return Outcome(status, output, expect=r'prune\.ignored_layers.*nonexistent', unchanged=True)


@case('config_quant_exclude_every_layer')
def _(env, tmp):
  config = env.quant_config(tmp, quant__exclude=('conv1', 'conv2', 'fc1', 'fc2'))
  status, output = call(config, os.path.join(tmp, 'w'))
  return Outcome(status, output, expect=r'quant\.exclude names every quantizable layer',
                 unchanged=True)


def _export_damaged(damage, expect, quantized=False):
  def run_case(env, tmp):
    workdir = _copy_quantized(env, tmp) if quantized else env.copy_finished(tmp)
    damage(workdir)
    before = snapshot(workdir)
    status, output = _export_binary(workdir, '--format=onnx', f'--out={tmp}/m.onnx')
    return Outcome(status, output, expect=expect, unchanged=unchanged(before))
  return run_case


case('export_truncated_qpq')(_export_damaged(
    lambda w: _write(os.path.join(w, 'model.qpq'), open(os.path.join(w, 'model.qpq'),
                                                        'rb').read()[:300]),
    r'model\.qpq: quantized export truncated', quantized=True))
case('export_invalid_model_json')(_export_damaged(
    lambda w: _write(os.path.join(w, 'model.json'), b'{"name": '), r'model\.json is damaged'))
case('export_emptied_model_folder')(_export_damaged(
    lambda w: [shutil.rmtree(os.path.join(w, 'model')), os.makedirs(os.path.join(w, 'model'))],
    r'model'))


# Silently wrong before: a setting that does not apply is refused (or, quant.bits, honored).

_INAPPLICABLE = [
    ('quant_field_in_train_mode', 'mnist_lenet5.py', {'quant__k': 2}, r'quant\.k=2.*mode'),
    ('prune_field_in_train_mode', 'mnist_lenet5.py', {'prune__ratio': 0.3},
     r'prune\.ratio=0\.3.*mode'),
    ('quant_field_in_prune_mode', 'prune', {'quant__k': 2},
     r'quant\.k=2.*mode'),
    ('tolerance_with_inq', 'quant', {'quant__method': 'inq', 'quant__tolerance': 0.1},
     r'quant\.tolerance=0\.1.*inq'),
    ('k_with_inq', 'quant', {'quant__method': 'inq', 'quant__k': 2}, r'quant\.k=2.*inq'),
    ('bits_budget_with_inq', 'quant', {'quant__method': 'inq', 'quant__bits_budget': 3.0},
     r'quant\.bits_budget=3\.0.*inq'),
    ('objective_l2_with_kmeans', 'quant', {'quant__method': 'kmeans', 'quant__objective': 'l2'},
     r"quant\.objective='l2'.*kmeans"),
    ('k_with_bits_budget', 'quant', {'quant__k': 2, 'quant__bits_budget': 3.0},
     r'quant\.k=2.*bits_budget'),
    ('distill_temperature_without_distillation', 'quant', {'quant__distill_temperature': 4.0},
     r'quant\.distill_temperature=4\.0.*distill_weight'),
    ('pretrain_epochs_with_early_bird', 'prune', {'prune__pretrain_epochs': 1},
     r'prune\.pretrain_epochs=1.*early_bird'),
    ('se_reduction_without_gates', 'prune', {'prune__se_reduction': 8},
     r'prune\.se_reduction=8.*se_gates'),
    ('bits_budget_below_two_with_zero_code', 'quant', {'quant__bits_budget': 1.5},
     r'quant\.bits_budget=1\.5.*zero_code'),
]


def _inapplicable_case(file, overrides, expect):
  def run_case(env, tmp):
    workdir = os.path.join(tmp, 'w')
    config = {'quant': env.quant_config, 'prune': env.prune_config}.get(
        file, lambda tmp, **o: env.config(tmp, file=file, **o))(tmp, **overrides)
    status, output = call(config, workdir)
    return Outcome(status, output, expect=f'bad config: .*{expect}', unchanged=True)
  return run_case


for _name, _file, _overrides, _expect in _INAPPLICABLE:
  case(f'inapplicable_{_name}')(_inapplicable_case(_file, _overrides, _expect))


@case('inapplicable_epochs_override_in_quantize_mode')
def _(env, tmp):
  """--config.epochs on a quantize config (retraining epochs are quant.retrain_epochs)."""
  status, output = _check_args('mnist_lenet5_quant.py', f'{tmp}/w', '--config.epochs=3',
                               f'--config.init_from={env.finished()}')
  return Outcome(status, output, expect=r'epochs=3.*quant\.retrain_epochs', unchanged=True)


@case('inapplicable_eb_window_override_with_fixed')
def _(env, tmp):
  """The config file's own Early-Bird window is fine under stop_rule=fixed; one set on the
  command line is refused (it would do nothing)."""
  status, output = _check_args('mnist_lenet5_prune.py', f'{tmp}/w',
                               '--config.prune.stop_rule=fixed',
                               '--config.prune.pretrain_epochs=1', '--config.prune.eb_window=4')
  return Outcome(status, output, expect=r'prune\.eb_window=4.*fixed', unchanged=True)


@case('quant_bits_is_the_exported_width')
def _(env, tmp):
  """--config.quant.bits=2 on the (error-optimal) quantize config exports 2 bits a weight."""
  workdir = os.path.join(tmp, 'w')
  status, output = call(env.quant_config(tmp, quant__bits=2), workdir)
  bits = (json.load(open(os.path.join(workdir, 'results.json')))['bits_per_weight']
          if status == 0 else None)
  return Outcome(status, output, expect_status=0, unchanged=True,
                 wrong='' if status or bits == 2 else f'asked for 2 bits, exported {bits}')


# --only_check_args exits 0 only where the run would start.

@case('check_args_init_from_missing')
def _(env, tmp):
  status, output = _check_args('mnist_lenet5_quant.py', f'{tmp}/w',
                               f'--config.init_from={tmp}/nowhere')
  return Outcome(status, output, expect=r'init_from=.*nowhere.* does not exist',
                 unchanged=not os.path.exists(f'{tmp}/w'))


@case('check_args_workdir_is_a_file')
def _(env, tmp):
  _write(f'{tmp}/file', b'x')
  status, output = _check_args('mnist_lenet5.py', f'{tmp}/file')
  return Outcome(status, output, expect='is a file, not a folder',
                 unchanged=open(f'{tmp}/file', 'rb').read() == b'x')


@case('check_args_workdir_of_another_config')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  before = snapshot(workdir)
  status, output = _check_args('mnist_lenet5.py', workdir, '--config.epochs=3',
                               f'--config.data_dir={env.data}')
  return Outcome(status, output, expect=r'holds a run of a different config \(differs in: .*epochs',
                 unchanged=unchanged(before))


@case('check_args_unknown_quant_exclude_layer')
def _(env, tmp):
  status, output = _check_args('mnist_lenet5_quant.py', f'{tmp}/w',
                               f'--config.init_from={env.finished()}',
                               "--config.quant.exclude=('conv9',)")
  return Outcome(status, output, expect=r'quant\.exclude names conv9',
                 unchanged=not os.path.exists(f'{tmp}/w'))


@case('check_args_unknown_ignored_layer')
def _(env, tmp):
  status, output = _check_args('mnist_lenet5_prune.py', f'{tmp}/w',
                               "--config.prune.ignored_layers=('conv9',)")
  return Outcome(status, output, expect=r'prune\.ignored_layers.*conv9',
                 unchanged=not os.path.exists(f'{tmp}/w'))


@case('check_args_export_name_collides')
def _(env, tmp):
  """quant.export_name naming a folder the run writes (its model/) is refused up front."""
  status, output = _check_args('mnist_lenet5_quant.py', f'{tmp}/w',
                               f'--config.init_from={env.finished()}',
                               '--config.quant.export_name=model')
  return Outcome(status, output, expect=r'quant\.export_name',
                 unchanged=not os.path.exists(f'{tmp}/w'))


@case('check_args_overwrite_of_init_from')
def _(env, tmp):
  workdir = env.copy_finished(tmp)
  before = snapshot(workdir)
  status, output = _check_args('mnist_lenet5_quant.py', workdir, f'--config.init_from={workdir}',
                               '--config.overwrite=True')
  return Outcome(status, output, expect=r'init_from=.* is the workdir itself',
                 unchanged=unchanged(before))


# launch.sh: a fake interpreter stands in for the jobs (real training is the other cases' work).

_LAUNCH_FAKE = r"""#!/usr/bin/env bash
# fake "python -m qprune.main --config=C --workdir=W [--config.x=v ...]": records its arguments
# one per line, 'refuses' (exit 2) an already finished workdir like the binary's rerun.
workdir=""
for a in "$@"; do case "$a" in --workdir=*) workdir="${a#*=}" ;; esac; done
mkdir -p "$workdir"
if [[ -f "$workdir/results.json" ]]; then
  echo "$workdir already holds this finished run; nothing to do."; exit 0
fi
trap 'echo "qprune: interrupted: SIGINT: stopped" >&2; exit 130' INT
trap 'echo "qprune: interrupted: SIGTERM: stopped" >&2; exit 143' TERM
printf '%s\n' "$@" > "$workdir/args.txt"
echo "training output of $workdir (pid $$)"
sleep "${FAKE_SLEEP:-0}"
echo '{"mode": "train", "test_accuracy": 0.9}' > "$workdir/results.json"
"""


def _launch_env(tmp, **extra):
  fake = _write(os.path.join(tmp, 'fake_python'), _LAUNCH_FAKE.encode())
  os.chmod(fake, 0o755)
  env = dict(os.environ, QPRUNE_PYTHON=fake, QPRUNE_COLLECT_PYTHON=sys.executable,
             QPRUNE_NVIDIA_SMI=os.path.join(tmp, 'no-nvidia-smi'))
  env.update(extra)
  env.pop('VIRTUAL_ENV', None)
  return env


def _launch(tmp, *args, env=None, timeout=120):
  proc = subprocess.run(['bash', os.path.join(REPO_ROOT, 'launch.sh'), *args], cwd=tmp,
                        env=env or _launch_env(tmp), capture_output=True, text=True,
                        timeout=timeout)
  return proc.returncode, proc.stderr + proc.stdout


def _launch_config(tmp, name='c.py'):
  return _write(os.path.join(tmp, name), b'def get_config(): pass\n')


@case('launch_rerun_keeps_the_training_log')
def _(env, tmp):
  config = _launch_config(tmp)
  status, output = _launch(tmp, '--configs', config, '--out', 'o', '--no-plots')
  log = os.path.join(tmp, 'o', 'logs', 'c_s0.log')
  first = open(log).read() if status == 0 else ''
  status, output = _launch(tmp, '--configs', config, '--out', 'o', '--no-plots')
  kept = 'training output of' in open(log).read()
  return Outcome(status, output, expect_status=0,
                 unchanged=bool(first) and kept and open(log).read().startswith(first))


@case('launch_two_launches_into_one_out')
def _(env, tmp):
  config = _launch_config(tmp)
  launch_env = _launch_env(tmp, FAKE_SLEEP='3')
  first = subprocess.Popen(['bash', os.path.join(REPO_ROOT, 'launch.sh'), '--configs', config,
                            '--out', 'o', '--no-plots'], cwd=tmp, env=launch_env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  log = os.path.join(tmp, 'o', 'logs', 'c_s0.log')
  deadline = time.time() + 60
  while not (os.path.exists(log) and 'training output' in open(log).read()):
    assert time.time() < deadline and first.poll() is None, first.communicate()
    time.sleep(0.05)
  running_log = open(log).read()
  status, output = _launch(tmp, '--configs', config, '--out', 'o', '--no-plots', env=launch_env)
  first.communicate(timeout=60)
  final_log = open(log).read()
  log_kept = final_log.startswith(running_log) and final_log.count('training output') == 1
  rc = open(os.path.join(tmp, 'o', 'logs', 'c_s0.rc')).read().strip()
  return Outcome(status, output, expect=r'launch\.sh: error: .*o is in use by launch\.sh',
                 unchanged=log_kept and first.returncode == 0 and rc == '0')


@case('launch_refused_job_is_not_a_success')
def _(env, tmp):
  """A job the binary refuses (exit 2) is recorded as failed, and the batch exits 1."""
  config = _launch_config(tmp, 'bad.py')
  fake = _write(os.path.join(tmp, 'refusing_python'),
                b'#!/usr/bin/env bash\necho "qprune: error: refused" >&2\nexit 2\n')
  os.chmod(fake, 0o755)
  status, output = _launch(tmp, '--configs', config, '--out', 'o', '--no-plots',
                           env=_launch_env(tmp, QPRUNE_PYTHON=fake))
  rc = open(os.path.join(tmp, 'o', 'logs', 'bad_s0.rc')).read().strip()
  return Outcome(status, output, expect_status=1, expect=r'launch\.sh: error: 1 of 1 job.*bad_s0',
                 unchanged=True, wrong='' if rc == '2' else f'recorded exit {rc}')


def _sweep_case(text, expect_args):
  def run_case(env, tmp):
    config = _launch_config(tmp)
    sweep = _write(os.path.join(tmp, 'sweep.txt'), text.replace('CONFIG', config).encode())
    status, output = _launch(tmp, '--sweep', sweep, '--out', 'o', '--no-plots')
    args_file = os.path.join(tmp, 'o', 'c_s0', 'args.txt')
    if status == 0 and not os.path.exists(args_file):
      folders = [d for d in os.listdir(os.path.join(tmp, 'o')) if d.startswith('c_')]
      args_file = os.path.join(tmp, 'o', folders[0], 'args.txt') if folders else args_file
    args = (open(args_file, newline='').read().split('\n') if os.path.exists(args_file)
            else [])
    missing = [a for a in expect_args if a not in args]
    return Outcome(status, output, expect_status=0, unchanged=True,
                   wrong=f'the job got {args[3:]}, not {missing}' if missing and status == 0
                   else '')
  return run_case


case('launch_sweep_crlf_line_endings')(_sweep_case(
    '# a sweep written on Windows\r\nCONFIG --config.epochs=1\r\n', ['--config.epochs=1']))
case('launch_sweep_hash_inside_a_value')(_sweep_case(
    'CONFIG --config.quant.export_name=run#1.qpq\n', ['--config.quant.export_name=run#1.qpq']))
case('launch_sweep_quoted_value_with_spaces')(_sweep_case(
    "CONFIG \"--config.prune.search_ratios=(0.5, 0.7)\"\n",
    ['--config.prune.search_ratios=(0.5, 0.7)']))
case('launch_sweep_single_quoted_value')(_sweep_case(
    "CONFIG --config.quant.exclude='conv1'\n", ['--config.quant.exclude=conv1']))


@case('launch_ctrl_c_stops_the_batch')
def _(env, tmp):
  """SIGINT to launch.sh (Ctrl-C) stops the running job and starts no other."""
  config = _launch_config(tmp)
  proc = subprocess.Popen(['bash', os.path.join(REPO_ROOT, 'launch.sh'), '--configs', config,
                           '--seeds', '0,1,2', '--out', 'o', '--no-plots'], cwd=tmp,
                          env=_launch_env(tmp, FAKE_SLEEP='2'), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          # as from a terminal (a shell started in the background ignores
                          # SIGINT, and bash cannot trap a signal ignored on entry)
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  log = os.path.join(tmp, 'o', 'logs', 'c_s0.log')
  deadline = time.time() + 60
  while not (os.path.exists(log) and 'training output' in open(log).read()):
    assert time.time() < deadline and proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
  try:
    out, err = proc.communicate(timeout=30)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    return Outcome(-9, err + out, expect_status=130, hung=True)
  started = [d for d in os.listdir(os.path.join(tmp, 'o')) if d.startswith('c_s')]
  return Outcome(proc.returncode, err + out, expect_status=130, expect=r'launch\.sh: interrupted',
                 unchanged=True,
                 wrong='' if started == ['c_s0'] else f'went on to start {sorted(started)[1:]}')


# ---------------------------------------------------------------------------------------------
# End to end: the real binary in a subprocess.

def _binary(env, tmp, workdir, *extra, data_dir=None):
  return [sys.executable, '-m', 'qprune.main',
          f'--config={os.path.join(REPO_ROOT, "configs", "mnist_lenet5.py")}',
          f'--workdir={workdir}', f'--config.data_dir={data_dir or env.data}',
          f'--config.cache_dir={tmp}/cache', '--config.epochs=2', '--config.batch_size=32',
          '--config.eval_batch_size=40', '--config.progress=False', *extra]


# A signal that lands while the interpreter itself starts kills it before any qprune code can
# handle it: by the signal's default action (a negative status), or, during the import of `site`,
# as "Fatal Python error: init_import_site". On a loaded machine start-up can take longer than
# the shortest delay; then the signal is sent later, up to 3 times.
def _before_python_started(status: int, err: str) -> bool:
  return status < 0 or 'init_import_site' in err


def _e2e_signal(signum, delay):
  def run_case(env, tmp):
    workdir = os.path.join(tmp, 'w')
    for attempt in range(3):
      proc = subprocess.Popen(_binary(env, tmp, workdir), cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      time.sleep(delay * (attempt + 1))
      proc.send_signal(signum)
      out, err = proc.communicate(timeout=300)
      if not _before_python_started(proc.returncode, err) or os.path.exists(workdir):
        break
    status = proc.returncode
    output = err + out
    if status == 0:  # finished before the signal: nothing to check but a clean run
      return Outcome(status, output, expect_status=0, unchanged=True,
                     resumed_identical=same_params(env, workdir))
    rerun = subprocess.run(_binary(env, tmp, workdir), cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=300)
    return Outcome(status, output + ('' if rerun.returncode == 0 else rerun.stderr),
                   expect_status=128 + signum,
                   expect=rf'interrupted: {signal.Signals(signum).name}', unchanged=True,
                   resumed_identical=rerun.returncode == 0 and same_params(env, workdir))
  return run_case


# From start-up (imports, the huge-page re-exec) through flag parsing, data loading, XLA
# compilation of the train step, training, to writing the model and report (~4 s in all here).
for _delay in (0.3, 1.0, 2.0, 2.5, 3.0, 3.5):
  case(f'e2e_sigint_after_{_delay}s', slow=True)(_e2e_signal(signal.SIGINT, _delay))
for _delay in (0.3, 2.0, 3.0):
  case(f'e2e_sigterm_after_{_delay}s', slow=True)(_e2e_signal(signal.SIGTERM, _delay))


@case('e2e_two_processes_one_workdir', slow=True)
def _(env, tmp):
  workdir = os.path.join(tmp, 'w')
  procs = [subprocess.Popen(_binary(env, tmp, workdir), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  statuses = sorted(p.returncode for p in procs)
  output = '\n'.join(err + out for out, err in outs)
  refused = [err + out for (out, err), p in zip(outs, procs) if p.returncode == 2]
  # Either one refused (in use) and the other finished, or the second found the run finished.
  ok = statuses == [0, 2] and 'is in use by pid' in refused[0] or (
      statuses == [0, 0] and 'nothing to do' in output)
  line = next((ln for ln in output.splitlines() if 'in use' in ln or 'nothing to do' in ln), '')
  return Outcome(2 if statuses == [0, 2] else 0, line if ok else output,
                 expect_status=2 if statuses == [0, 2] else 0,
                 expect='is in use by pid|nothing to do', unchanged=ok,
                 resumed_identical=same_params(env, workdir))


@case('e2e_damaged_tarball', slow=True)
def _(env, tmp):
  data = env.copy_data(tmp, tar=True)
  _write(_tar_path(data), open(_tar_path(data), 'rb').read()[:2000])
  proc = subprocess.run(_binary(env, tmp, os.path.join(tmp, 'w'), data_dir=data), cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  return Outcome(proc.returncode, proc.stderr + proc.stdout,
                 expect='mnist.tar.gz is damaged or not a tar archive', unchanged=True)


@case('e2e_missing_config_file', slow=True)
def _(env, tmp):
  proc = subprocess.run([sys.executable, '-m', 'qprune.main', f'--config={tmp}/nope.py',
                         f'--workdir={tmp}/w'], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=300)
  return Outcome(proc.returncode, proc.stderr + proc.stdout, expect='nope.py: not found',
                 unchanged=not os.path.exists(f'{tmp}/w'))


# ---------------------------------------------------------------------------------------------
# pytest.

@pytest.fixture(scope='module')
def env(data_dir, tmp_path_factory):
  del data_dir  # the real copy must exist (skip or fail as conftest says)
  return Env(str(tmp_path_factory.mktemp('faults')))


@pytest.mark.real_data
@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_fault(env, tmp_path, name):
  outcome = CASES[name](env, str(tmp_path))
  assert not outcome.problems(), (outcome.problems(), outcome.output[-3000:])


def test_interrupt_inside_jit_is_deferred_until_jax_returns():
  import jax  # pylint: disable=g-import-not-at-top

  from qprune import interrupts  # pylint: disable=g-import-not-at-top
  from qprune.errors import Interrupted  # pylint: disable=g-import-not-at-top
  done = []

  def body(x):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    done.append('traced')
    return x + 1

  with pytest.raises(Interrupted) as e:
    with interrupts.handling():
      y = jax.jit(body)(np.float32(1.0))
      done.append(float(y))
      for _ in range(100):  # re-delivered within RETRY_S once out of jax
        time.sleep(0.01)
  assert done[:2] == ['traced', 2.0] and e.value.exit_status == 130


def test_lock_refuses_a_second_holder_and_is_released(tmp_path):
  from qprune import files  # pylint: disable=g-import-not-at-top
  first = files.WorkdirLock(str(tmp_path)).acquire()
  with pytest.raises(files.WorkdirBusyError, match=f'in use by pid {os.getpid()} on'):
    files.WorkdirLock(str(tmp_path)).acquire()
  first.release()
  assert not os.path.exists(tmp_path / LOCK)
  with files.WorkdirLock(str(tmp_path)):
    assert os.path.exists(tmp_path / LOCK)


def test_a_second_process_waits_for_the_holder_to_name_itself(tmp_path):
  """The holder flocks the lock file, then writes its pid: a second process that looks in
  between names the pid (waiting for it briefly), not 'another process'."""
  import fcntl  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top

  from qprune import files  # pylint: disable=g-import-not-at-top
  fd = os.open(tmp_path / LOCK, os.O_RDWR | os.O_CREAT)
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  holder = json.dumps({'pid': 4242, 'host': 'elsewhere', 'since': 'now'}).encode()
  writer = threading.Timer(0.3, lambda: os.pwrite(fd, holder, 0))
  writer.start()
  try:
    with pytest.raises(files.WorkdirBusyError, match='in use by pid 4242 on elsewhere'):
      files.WorkdirLock(str(tmp_path)).acquire()
  finally:
    writer.join()
    os.close(fd)


@pytest.mark.parametrize('name,content,expect', [
    ('search.json', b'{"best": 0}', r'search.json is damaged \(missing rows, masks\)'),
    ('model.json', b'[]', r'model.json is damaged \(a JSON list'),
    ('config.json', b'{"mode": "train"', r'config.json is damaged \(not valid JSON'),
    ('other.json', b'[1]', None),
])
def test_read_json_checks_the_run_files_it_knows(tmp_path, name, content, expect):
  from qprune import files  # pylint: disable=g-import-not-at-top
  from qprune.errors import DamagedFileError  # pylint: disable=g-import-not-at-top
  path = tmp_path / name
  path.write_bytes(content)
  if expect is None:
    assert files.read_json(str(path)) == [1]
  else:
    with pytest.raises(DamagedFileError, match=expect):
      files.read_json(str(path))
  assert files.read_json(str(tmp_path / 'missing.json')) is None


def test_read_jsonl_reads_records_and_names_a_damaged_line(tmp_path):
  from qprune import files  # pylint: disable=g-import-not-at-top
  from qprune.errors import DamagedFileError  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'metrics.jsonl'
  assert files.read_jsonl(str(path)) is None
  path.write_bytes(b'{"epoch": 1}\n\n{"epoch": 2}\n')
  assert files.read_jsonl(str(path)) == [{'epoch': 1}, {'epoch': 2}]
  path.write_bytes(b'{"epoch": 1}\n{"epoch": \n')
  with pytest.raises(DamagedFileError, match='metrics.jsonl is damaged \\(line 2 is not'):
    files.read_jsonl(str(path))
  path.write_bytes(b'{"epoch": 1}\n[2]\n')
  with pytest.raises(DamagedFileError, match='line 2'):
    files.read_jsonl(str(path))
