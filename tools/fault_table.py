"""Runs every fault-injection case of tests/test_faults*.py and prints a markdown table.

  python tools/fault_table.py [--fast] [--only REGEX] [--module NAME] > faults.md

Every module tests/test_faults*.py (test_faults.py, and the distributed and library suites where
they exist) contributes its `CASES`: name -> fn(env, tmp) returning an `Outcome` (the protocol of
tests/test_faults.py; a module may bring its own `Env`, else test_faults.Env is used, and its own
`SLOW` set of end-to-end case names).

Columns: the module and case, its exit status, the line the user reads (temp paths shortened to
<tmp>), whether the existing files stayed byte-identical, whether the rerun ended bit-identical to
an uninterrupted run (n/a where no rerun applies), the fault class of the answer (clear, unclear,
traceback, hang, silent, data loss: test_faults.classify) and, when not clear, why. The last lines
count the cases per class. Needs the real MNIST copy ($QPRUNE_DATA_DIR). Exit status 1 if any case
is not clear.
"""
import argparse
import glob
import importlib
import os
import re
import shutil
import sys
import tempfile
import time
import traceback

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests')
sys.path.insert(0, TESTS)
sys.path.insert(0, os.path.dirname(TESTS))

import test_faults  # noqa: E402  pylint: disable=wrong-import-position


def fault_modules() -> list:
  """test_faults first, then every other tests/test_faults*.py in name order (imported)."""
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(TESTS,
                                                                          'test_faults*.py')))
  names = ['test_faults'] + [n for n in names if n != 'test_faults']
  return [importlib.import_module(n) for n in names]


def _mark(value) -> str:
  return 'n/a' if value is None else ('yes' if value else 'NO')


def _cell(text: str, root: str) -> str:
  text = ' '.join(text.replace(root, '<tmp>').replace('|', '\\|').split())
  return text if len(text) <= 160 else text[:157] + '...'


def _short(module) -> str:
  return module.__name__.removeprefix('test_faults').lstrip('_') or 'main'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--fast', action='store_true', help='skip the slow (end-to-end) cases')
  parser.add_argument('--only', default='',
                      help='run only cases whose name matches this regular expression')
  parser.add_argument('--module', default='', help="only this suite: 'main' (test_faults.py), "
                      "'distributed', 'library', ...")
  args = parser.parse_args(argv)
  root = tempfile.mkdtemp(prefix='qprune-faults-')
  rows, counts, start = [], {k: 0 for k in test_faults.KINDS}, time.time()
  for module in fault_modules():
    if args.module and _short(module) != args.module:
      continue
    env_class = getattr(module, 'Env', test_faults.Env)
    env = env_class(os.path.join(root, f'env-{_short(module)}'))
    os.makedirs(env.root, exist_ok=True)
    slow = getattr(module, 'SLOW', set())
    names = [n for n in module.CASES
             if re.search(args.only, n) and not (args.fast and n in slow)]
    for name in names:
      tmp = os.path.join(root, _short(module), name)
      os.makedirs(tmp)
      try:
        outcome = module.CASES[name](env, tmp)
        problems = outcome.problems()
        kind = test_faults.classify(outcome)
        row = (_short(module), name, str(outcome.status),
               _cell(outcome.line or '(no message: ok)', root), _mark(outcome.unchanged),
               _mark(outcome.resumed_identical), kind,
               _cell('; '.join(problems), root) if problems else '')
      except Exception as e:  # pylint: disable=broad-except  (the case itself broke)
        problems, kind = [repr(e)], 'traceback'
        traceback.print_exc()
        row = (_short(module), name, 'TRACEBACK', _cell(f'{type(e).__name__}: {e}', root), '?',
               '?', kind, 'the case raised')
      counts[kind] += 1
      rows.append(row)
      print(f'{name}: {kind}{"" if not problems else f" {problems}"}', file=sys.stderr,
            flush=True)
  print('| suite | case | exit | line | files unchanged | resume bit-identical | class | why |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  for row in rows:
    print('| ' + ' | '.join(f'`{c}`' if i == 1 else c for i, c in enumerate(row)) + ' |')
  unclear = len(rows) - counts['clear']
  print(f'\n{len(rows)} cases, {counts["clear"]} clear, {unclear} not clear '
        f'({time.time() - start:.0f} s).')
  print('By class: ' + ', '.join(f'{k} {counts[k]}' for k in test_faults.KINDS) + '.')
  shutil.rmtree(root, ignore_errors=True)
  return 1 if unclear else 0


if __name__ == '__main__':
  sys.exit(main())
