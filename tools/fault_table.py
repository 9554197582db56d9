"""Runs every fault-injection case of tests/test_faults.py and prints a markdown table.

  python tools/fault_table.py [--fast] [--only SUBSTRING] > faults.md

Columns: the case, its exit status, the line the user reads (temp paths shortened to <tmp>),
whether the existing files stayed byte-identical, whether the rerun ended bit-identical to an
uninterrupted run (n/a where no rerun applies), and whether the case is clear (every check of
`Outcome.problems` holds). Needs the real MNIST copy (../shared/data or $QPRUNE_DATA_DIR). Exit
status 1 if any case is not clear.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests')
sys.path.insert(0, TESTS)
sys.path.insert(0, os.path.dirname(TESTS))

import test_faults  # noqa: E402  pylint: disable=wrong-import-position


def _mark(value) -> str:
  return 'n/a' if value is None else ('yes' if value else 'NO')


def _cell(text: str, root: str) -> str:
  text = text.replace(root, '<tmp>').replace('|', '\\|')
  return text if len(text) <= 160 else text[:157] + '...'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--fast', action='store_true', help='skip the slow (end-to-end) cases')
  parser.add_argument('--only', default='', help='run only cases whose name contains this')
  args = parser.parse_args(argv)
  root = tempfile.mkdtemp(prefix='qprune-faults-')
  env = test_faults.Env(os.path.join(root, 'env'))
  os.makedirs(env.root)
  names = [n for n in test_faults.CASES if args.only in n and
           not (args.fast and n in test_faults.SLOW)]
  rows, unclear, start = [], 0, time.time()
  for name in names:
    tmp = os.path.join(root, name)
    os.makedirs(tmp)
    try:
      outcome = test_faults.CASES[name](env, tmp)
      problems = outcome.problems()
      row = (name, str(outcome.status), _cell(outcome.line or '(no message: ok)', root),
             _mark(outcome.unchanged), _mark(outcome.resumed_identical),
             'yes' if not problems else 'NO: ' + _cell('; '.join(problems), root))
    except Exception as e:  # pylint: disable=broad-except
      problems = [repr(e)]
      traceback.print_exc()
      row = (name, 'TRACEBACK', _cell(f'{type(e).__name__}: {e}', root), '?', '?', 'NO')
    unclear += bool(problems)
    rows.append(row)
    print(f'{name}: {"clear" if not problems else problems}', file=sys.stderr, flush=True)
  print('| case | exit | line | files unchanged | resume bit-identical | clear |')
  print('| --- | --- | --- | --- | --- | --- |')
  for row in rows:
    print('| ' + ' | '.join(f'`{row[0]}`' if i == 0 else c for i, c in enumerate(row)) + ' |')
  print(f'\n{len(rows)} cases, {len(rows) - unclear} clear, {unclear} not clear '
        f'({time.time() - start:.0f} s).')
  shutil.rmtree(root, ignore_errors=True)
  return 1 if unclear else 0


if __name__ == '__main__':
  sys.exit(main())
