r"""The attention ablation table: pruning criteria with and without channel attention, over seeds.

  python -m reproduce.ablation --runs=OUT [--out=results/mnist_lenet5/attention_ablation.json]
      [--merge] [--command="the command that made the runs"]

Reads every finished prune run under OUT (as `python -m reproduce.sweeps.attention_ablation` lays
them out: OUT/seed<S>/<criterion>_r<ratio>/results.json; the pretraining-only runs are skipped; each
run's seed read from its config.json), and prints / writes per (criterion, ratio) the mean ± std
over seeds of the test accuracy right after shrinking (BN re-estimated) and after fine-tuning, and
per attention variant its verdict against its base criterion. With --merge the seeds and cells
already tabulated in --out are kept (a run under OUT replaces the same criterion, pretraining, ratio
and seed), so a table can grow seed by seed, and over machines whose workdirs are gone. Standard
library only.
"""
import argparse
import dataclasses
import os
import statistics
import sys

from qprune import files, records
from qprune.errors import UserError

# attention variant -> (its base criterion, kind)
VARIANTS = {
    'attention': ('l1', 'training-free'),
    'attention_bn_gamma': ('bn_gamma', 'training-free'),
    'attention_taylor': ('taylor', 'training-free'),
    'se_l1': ('l1', 'learned'),
    'se_bn_gamma': ('bn_gamma', 'learned'),
    'se_taylor': ('taylor', 'learned'),
}
METRICS = ('pruned_test_accuracy', 'test_accuracy')


class AblationError(UserError):
  """The runs folder holds nothing to tabulate."""


GATED, PLAIN = 'SE-gated', 'plain'


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One fine-tuned decision: its cell (criterion, pretraining, ratio), its seed, its sizes and
  its accuracies right after shrinking and after fine-tuning. The unit the table averages. The
  table only carries `macs` and `params_before` (None where the run did not record them)."""
  criterion: str
  pretraining: str  # PLAIN or GATED
  ratio: float
  seed: int | None
  params: int
  macs: int | None
  params_before: int | None
  pruned_test_accuracy: float
  test_accuracy: float


@dataclasses.dataclass
class AblationRun:
  """One fine-tuned prune run: its results, and from its config.json the seed, whether it
  pretrained with SE gates and whether it pruned a ResNet's residual stream too."""
  results: records.PruneResults
  seed: int | None = None
  se_gates: bool = False
  residual: bool = False

  def measurement(self) -> Measurement:
    # The cell, the params shown and the accuracies averaged: every prune run records them.
    r, recorded = self.results, records.recorded
    return Measurement(recorded(r.criterion), GATED if self.se_gates else PLAIN,
                       recorded(r.prune_ratio), self.seed, recorded(r.params), r.macs,
                       r.params_before, recorded(r.pruned_test_accuracy),
                       recorded(r.test_accuracy))


def read_runs(runs_dir: str) -> list[AblationRun]:
  """Every finished decision run under `runs_dir` (fine-tuned, i.e. not a pretraining-only
  run)."""
  found = []
  for root, _, names in sorted(os.walk(runs_dir)):
    if 'results.json' not in names:
      continue
    data = files.read_json(os.path.join(root, 'results.json'))
    assert data is not None  # os.walk has just listed it
    results = records.from_json(data)
    if not isinstance(results, records.PruneResults) or not results.finetune_epochs:
      continue
    run = AblationRun(results)
    config_path = os.path.join(root, 'config.json')
    config = files.read_json(config_path, required=())
    if config is not None:
      prune = config.get('prune', {})
      run.seed = config.get('seed')
      run.se_gates, run.residual = bool(prune.get('se_gates')), bool(prune.get('residual'))
    found.append(run)
  return found


def _stats(values: list[float]) -> dict:
  return {'mean': statistics.fmean(values),
          'std': statistics.stdev(values) if len(values) > 1 else 0.0, 'values': values}


def tabulated(ablation: dict) -> list[Measurement]:
  """The measurements a table (`table`'s dict, as written to JSON) was made of."""
  found = []
  for row in ablation['rows']:
    columns = zip(row['seeds'], row['pruned_test_accuracy']['values'],
                  row['test_accuracy']['values'])
    found += [Measurement(row['criterion'], row.get('pretraining', PLAIN), row['ratio'], seed,
                          row['params'], row['macs'], row['params_before'], pruned, tuned)
              for seed, pruned, tuned in columns]
  return found


def merged(kept: list[Measurement], new: list[Measurement]) -> list[Measurement]:
  """`kept` and `new`; where both hold a cell's seed, the new measurement."""
  def key(m: Measurement):
    return m.criterion, m.pretraining, m.ratio, m.seed
  by_key = {key(m): m for m in kept}
  by_key.update({key(m): m for m in new})
  return list(by_key.values())


def table(measurements: list[Measurement]) -> dict:
  """{'rows': [...], 'verdicts': [...]} (see the module docstring). A row is one (criterion,
  pretraining, ratio); the pretraining is 'SE-gated' (prune.se_gates) or 'plain'. Each attention
  variant is judged against its base criterion on the same pretraining and, for the learned
  variants, also against the base on the plain one."""
  cells: dict[tuple, list[Measurement]] = {}
  for m in measurements:
    cells.setdefault((m.criterion, m.pretraining, m.ratio), []).append(m)
  rows = []
  for (criterion, pretraining, ratio), members in sorted(
      cells.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
    members.sort(key=lambda m: m.seed or 0)
    first = members[0]
    base, kind = VARIANTS.get(criterion, (criterion, 'base'))
    rows.append({'criterion': criterion, 'base': base, 'attention': kind,
                 'pretraining': pretraining, 'ratio': ratio,
                 'seeds': [m.seed for m in members], 'params': first.params,
                 'macs': first.macs, 'params_before': first.params_before,
                 **{metric: _stats([getattr(m, metric) for m in members])
                    for metric in METRICS}})
  by_key = {(row['criterion'], row['pretraining'], row['ratio']): row for row in rows}
  verdicts = []
  for row in rows:
    if row['attention'] == 'base':
      continue
    for pretraining in dict.fromkeys((row['pretraining'], PLAIN)):
      base = by_key.get((row['base'], pretraining, row['ratio']))
      if base is None:
        continue
      for metric in METRICS:
        gain = row[metric]['mean'] - base[metric]['mean']
        spread = max(row[metric]['std'], base[metric]['std'])
        seeds = min(len(row['seeds']), len(base['seeds']))
        verdicts.append({'criterion': row['criterion'], 'base': row['base'],
                         'base_pretraining': pretraining, 'ratio': row['ratio'],
                         'metric': metric, 'gain': gain, 'spread': spread, 'seeds': seeds,
                         'beats_base': seeds > 1 and gain > spread,
                         'loses_to_base': seeds > 1 and -gain > spread})
  return {'rows': rows, 'verdicts': verdicts}


def pct(stats: dict | None) -> str:
  if not stats:
    return ''
  return f'{100 * stats["mean"]:.2f} ± {100 * stats["std"]:.2f}'


def markdown(ablation: dict) -> list[str]:
  """The table and the verdicts as markdown lines."""
  out = ['| ratio | criterion | attention | pretraining | params | after shrinking | fine-tuned '
         '| seeds |', '|---|---|---|---|---|---|---|---|']
  for row in ablation['rows']:
    out.append(f'| {row["ratio"]} | `{row["criterion"]}` | {row["attention"]} | '
               f'{row.get("pretraining", PLAIN)} | {row["params"]:,} | '
               f'{pct(row["pruned_test_accuracy"])} | {pct(row["test_accuracy"])} | '
               f'{len(row["seeds"])} |')
  out += ['', 'Verdict per attention variant against its base criterion, after fine-tuning '
          '("beats" / "loses": the difference of means exceeds the larger of the two standard '
          'deviations over seeds; otherwise "within noise"):', '']
  for v in ablation['verdicts']:
    if v['metric'] != 'test_accuracy':
      continue
    word = 'beats' if v['beats_base'] else 'loses to' if v['loses_to_base'] else 'within noise of'
    note = f'{100 * v["gain"]:+.2f} points, spread {100 * v["spread"]:.2f}'
    if v['seeds'] < 2:
      word, note = 'vs', f'{100 * v["gain"]:+.2f} points; one seed: no verdict'
    base = f'`{v["base"]}`' + (' on the plain pretraining'
                               if v.get('base_pretraining') == PLAIN and
                               v['criterion'].startswith('se_') else '')
    out.append(f'- ratio {v["ratio"]}: `{v["criterion"]}` {word} {base} ({note})')
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m reproduce.ablation',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--runs', required=True, help='the folder the ablation sweep wrote')
  parser.add_argument('--out', help='write the table as JSON here (e.g. results/<group>/...)')
  parser.add_argument('--merge', action='store_true',
                      help='keep what --out already tabulates (same setting), adding the runs '
                      'under --runs; a run replaces the same cell and seed')
  parser.add_argument('--command', help='the command that made the runs, recorded in the JSON '
                      '(default: the ablation sweep of the runs\' dataset)')
  args = parser.parse_args(argv)
  try:
    runs = read_runs(args.runs)
    if not runs:
      raise AblationError(f'{args.runs} holds no finished, fine-tuned prune run')
    setting = {**{k: getattr(runs[0].results, k) for k in ('model', 'dataset', 'pretrain_epochs',
                                                           'finetune_epochs', 'selection')},
               'residual': runs[0].residual}
    measurements = [run.measurement() for run in runs]
    machines = [runs[0].results.machine]
    if args.merge and not args.out:
      raise AblationError('--merge needs --out: the table to add the runs to')
    kept = files.read_json(args.out, required=()) if args.merge else None
    if kept is not None:
      # A key the kept table lacks (older tables did not record `residual`) is not compared.
      kept_setting = kept.get('config')
      if not isinstance(kept_setting, dict) or any(kept_setting.get(k, v) != v
                                                   for k, v in setting.items()):
        raise AblationError(f'{args.out} tabulates another setting ({kept.get("config")}) than '
                            f'the runs under {args.runs} ({setting}): write to another file, or '
                            'drop --merge to replace it')
      measurements = merged(tabulated(kept), measurements)
      machines = list(dict.fromkeys(kept.get('machine', '').split(' / ') + machines))
    ablation = table(measurements)
    kind = 'cifar' if runs[0].results.dataset == 'cifar10' else 'mnist'
    ablation['command'] = (args.command or
                           f'python -m reproduce.sweeps.attention_ablation DATA OUT {kind}')
    ablation['machine'] = ' / '.join(m for m in machines if m)
    ablation['config'] = setting
    print('\n'.join(markdown(ablation)))
    if args.out:
      files.write_json_atomic(args.out, ablation, indent=1)
    return 0
  except (AblationError, OSError, ValueError, KeyError) as e:
    print(f'qprune: error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
