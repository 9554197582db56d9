r"""Collects the results.json of a batch of runs into one table: `<out>/summary.md` + `.csv`.

  python -m qprune.report.collect OUT [--plots]
  python qprune/report/collect.py OUT [--plots]     # same; standard library only (no JAX)

With `OUT/jobs.tsv` (written by launch.sh: name, config, seed, overrides, workdir, log per
line) every listed job is a row, in launch order, with its status: `ok`, `failed (exit N)`
(from `OUT/logs/<name>.rc`), or `not finished`. Without it, every `results.json` found under
OUT is a row named by its folder. Columns that no row fills are left out. `--plots` also
draws accuracy vs bits per weight and vs MACs (`OUT/plots/`, needs matplotlib).
"""
import argparse
import csv
import io
import os
import sys

if __name__ == '__main__' and sys.path and (
    os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__))):
  # Run by path: this folder's modules must not shadow top-level ones, and the checkout's
  # qprune (records.py: standard library only) is importable without installing it.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qprune import files, records  # noqa: E402  (standard library only, no JAX)
from qprune.errors import DamagedFileError  # noqa: E402

JOBS_TSV = 'jobs.tsv'
LOGS_DIR = 'logs'
SUMMARY_MD = 'summary.md'
SUMMARY_CSV = 'summary.csv'
JOB_FIELDS = ('name', 'config', 'seed', 'overrides', 'workdir', 'log')

# (column, results key): the record fields marked as columns (qprune/records.py); values are
# looked up at the top level, then in pipeline stages.
RESULT_COLUMNS = tuple((name, name) for name in records.COLUMNS)
ALWAYS = ('job', 'status')


def _read_results(path: str) -> dict | None:
  """A run's results.json, or None where it is missing or damaged (that run is not finished)."""
  try:
    results = files.read_json(path, required=())
  except DamagedFileError:
    return None
  return results


def read_jobs(out: str) -> list[dict[str, str]] | None:
  """launch.sh's job list, or None when OUT has none."""
  path = os.path.join(out, JOBS_TSV)
  if not os.path.exists(path):
    return None
  jobs = []
  with open(path) as f:
    for line in f:
      line = line.rstrip('\n')
      if not line or line.startswith('#'):
        continue
      values = line.split('\t') + [''] * len(JOB_FIELDS)
      jobs.append(dict(zip(JOB_FIELDS, values)))
  return jobs


def _status(out: str, name: str, results: dict | None) -> str:
  try:
    with open(os.path.join(out, LOGS_DIR, f'{name}.rc')) as f:
      rc = int(f.read().strip() or 1)
  except (FileNotFoundError, ValueError):
    rc = None
  if rc not in (None, 0):
    return f'failed (exit {rc})'
  return 'ok' if results is not None else 'not finished'


def collect(out: str) -> list[dict]:
  """One row per job: job, status, config, seed, overrides and the RESULT_COLUMNS, plus the
  full results dict under '_results' (None when missing)."""
  jobs = read_jobs(out)
  rows: list[dict] = []
  if jobs is not None:
    for job in jobs:
      workdir = job['workdir'] or os.path.join(out, job['name'])
      if not os.path.isabs(workdir) and not os.path.exists(workdir):
        workdir = os.path.join(out, workdir)
      results = _read_results(os.path.join(workdir, 'results.json'))
      rows.append({'job': job['name'], 'status': _status(out, job['name'], results),
                   'config': job['config'], 'seed': job['seed'], 'overrides': job['overrides'],
                   '_results': results})
  else:
    for folder, _, names in sorted(os.walk(out)):
      if 'results.json' in names:
        results = _read_results(os.path.join(folder, 'results.json'))
        rows.append({'job': os.path.relpath(folder, out) if folder != out else '.',
                     'status': 'ok' if results is not None else 'unreadable',
                     '_results': results})
  for row in rows:
    found = row['_results'] or {}
    for column, key in RESULT_COLUMNS:
      row[column] = records.result_field(found, key)
  return rows


def columns_of(rows: list[dict]) -> list[str]:
  """ALWAYS columns, then every other column some row fills (in a fixed order)."""
  candidates = ['config', 'seed', 'overrides'] + [c for c, _ in RESULT_COLUMNS]
  return list(ALWAYS) + [c for c in candidates
                         if any(r.get(c) not in (None, '') for r in rows)]


def _cell(value, column: str) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    if records.UNITS.get(column) == records.FRACTION:
      return f'{value:.4f}'
    if column == 'wall_time_s':
      return f'{value:.1f}'
    return f'{value:.4g}'
  return str(value).replace('|', '\\|')


def to_markdown(rows: list[dict], columns: list[str]) -> str:
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' for _ in columns) + '|']
  for r in rows:
    lines.append('| ' + ' | '.join(_cell(r.get(c), c) for c in columns) + ' |')
  return '\n'.join(lines) + '\n'


def to_csv(rows: list[dict], columns: list[str]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(columns)
  for r in rows:
    writer.writerow(['' if r.get(c) is None else r.get(c) for c in columns])
  return buffer.getvalue()


def write_summary(out: str, plots: bool = False) -> list[dict]:
  """Writes OUT/summary.md and OUT/summary.csv (and with plots=True OUT/plots/*.png)."""
  rows = collect(out)
  columns = columns_of(rows)
  failed = [r['job'] for r in rows if r['status'] != 'ok']
  md = f'# Sweep summary: {os.path.abspath(out)}\n\n' + to_markdown(rows, columns)
  md += f'\n{len(rows) - len(failed)} of {len(rows)} jobs ok'
  md += (f'; not ok: {", ".join(failed)}\n' if failed else '\n')
  files.write_text_atomic(os.path.join(out, SUMMARY_MD), md + write_seed_summary(out, rows))
  files.write_text_atomic(os.path.join(out, SUMMARY_CSV), to_csv(rows, columns))
  if plots:
    results = [dict(r['_results'], job=r['job']) for r in rows if r['_results']]
    try:
      from qprune.report import plots as plots_lib  # pylint: disable=g-import-not-at-top
      plots_lib.sweep_plots(results, os.path.join(out, 'plots'))
    except ImportError as e:  # collector still works without matplotlib / qprune installed
      print(f'collect: no sweep plots ({e})', file=sys.stderr)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('out', help='folder of the batch (launch.sh --out)')
  parser.add_argument('--plots', action='store_true', help='also write OUT/plots/*.png')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.out):
    print(f'collect: error: no folder {args.out}', file=sys.stderr)
    return 2
  rows = write_summary(args.out, plots=args.plots)
  print(to_markdown(rows, columns_of(rows)), end='')
  print(f'wrote {os.path.join(args.out, SUMMARY_MD)} and {os.path.join(args.out, SUMMARY_CSV)}')
  return 0


# ------------------------------------------------------------------- seeds (launch.sh --seeds)

SEEDS_CSV = 'summary_seeds.csv'


def seed_group(row: dict) -> str:
  """The name of a job's group: its name without launch.sh's `_s<seed>` suffix (jobs that
  differ only in their seed share it)."""
  import re  # pylint: disable=g-import-not-at-top
  return re.sub(r'_s\d+$', '', row['job'])


def aggregate_seeds(rows: list[dict]) -> list[dict]:
  """One row per group of jobs that differ only in the seed (in first-job order), when some group
  has two or more jobs: group, n (finished jobs), jobs, and for each numeric result column the
  mean and sample standard deviation over the finished jobs (`<column>_mean`, `<column>_std`;
  std None for n < 2). [] when every job is alone in its group."""
  import statistics  # pylint: disable=g-import-not-at-top
  groups: dict[str, list[dict]] = {}
  for row in rows:
    groups.setdefault(seed_group(row), []).append(row)
  if all(len(members) < 2 for members in groups.values()):
    return []
  out = []
  for name, members in groups.items():
    ok = [r for r in members if r['status'] == 'ok']
    agg = {'group': name, 'n': len(ok), 'jobs': len(members)}
    for column, _ in RESULT_COLUMNS:
      values = [r[column] for r in ok if isinstance(r.get(column), (int, float))
                and not isinstance(r.get(column), bool)]
      if values and len(values) == len(ok):
        agg[f'{column}_mean'] = statistics.fmean(values)
        agg[f'{column}_std'] = statistics.stdev(values) if len(values) > 1 else None
    out.append(agg)
  return out


def seeds_markdown(groups: list[dict]) -> str:
  """The groups as a markdown table of `mean ± std` cells (n: finished jobs of the group)."""
  columns = [c for c, _ in RESULT_COLUMNS if any(f'{c}_mean' in g for g in groups)]
  lines = ['| group | n | ' + ' | '.join(columns) + ' |',
           '|' + '|'.join('---' for _ in range(len(columns) + 2)) + '|']
  for g in groups:
    cells = []
    for c in columns:
      mean, std = g.get(f'{c}_mean'), g.get(f'{c}_std')
      cells.append('' if mean is None else _cell(float(mean), c) +
                   ('' if std is None else f' ± {_cell(float(std), c)}'))
    lines.append(f'| {g["group"]} | {g["n"]}/{g["jobs"]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_seed_summary(out: str, rows: list[dict]) -> str:
  """Writes OUT/summary_seeds.csv (one row per group: group, n, jobs, <column>_mean,
  <column>_std) when jobs repeat over seeds; returns the summary.md section ('' otherwise)."""
  groups = aggregate_seeds(rows)
  if not groups:
    return ''
  columns = ['group', 'n', 'jobs'] + [k for c, _ in RESULT_COLUMNS
                                      for k in (f'{c}_mean', f'{c}_std')
                                      if any(f'{c}_mean' in g for g in groups)]
  files.write_text_atomic(os.path.join(out, SEEDS_CSV), to_csv(groups, columns))
  return ('\n## Over seeds: mean ± sample std (n = finished jobs / jobs)\n\n' +
          seeds_markdown(groups))


if __name__ == '__main__':
  sys.exit(main())
