r"""Does channel attention improve a pruning criterion? The ablation behind RESULTS.md's table.

  python -m reproduce.sweeps.attention_ablation DATA_DIR OUT [mnist|cifar|tiny|tiny_cifar]
      [--seeds=0,1,2] [--plain=...] [--learned=...] [--gated=...] [--dry_run]

Every criterion, with and without attention, and random, from the same pretraining, at two
ratios and several seeds; then the table (mean ± std over seeds) written to
results/<dataset>_<model>/attention_ablation.json and RESULTS.md rewritten.

  mnist  configs/experiments/mnist_lenet5_prune_ablation.py: LeNet-5 on all of MNIST, masks after
         2 pretraining epochs, 1 fine-tuning epoch (about 15 minutes per seed on 2 cores)
  cifar  configs/experiments/cifar10_resnet20_prune_ablation.py: ResNet-20 on CIFAR-10, masks
         after 2 of 10 pretraining epochs, block-internal channels only, ratios 0.5 and 0.7,
         1 fine-tuning epoch; by default only random, l1, attention and se_l1 (and l1 on the
         SE-gated network): about 45 minutes per seed on 2 cores
  tiny / tiny_cifar  a smoke test of mnist / cifar on 1,400 images (not published)
  --plain / --learned / --gated  the criteria to run (defaults: CRITERIA below): base and
         training-free attention criteria on the plain pretraining, learned SE criteria on the
         SE-gated one, and as their control base criteria on that same SE-gated network (in
         gated_<criterion>_r<ratio>/)

Per seed, two pretraining runs keep a snapshot of every epoch: a plain one, and one with learned
squeeze-and-excitation gates (prune.se_gates). Every decision replays one of them
(prune.decide_from, stop_rule=fixed). Finished runs are skipped; each ratio of a seed joins the
table as soon as it is done (`reproduce.ablation --merge`: a run replaces its own criterion,
ratio and seed there), so --seeds=3,4 later adds seeds. Run from the checkout's root.
"""
import os
import sys
from collections.abc import Sequence

from reproduce.sweeps import PYTHON, Step, driver_parser, qprune_run, run_driver, write_book

KINDS = ('mnist', 'cifar', 'tiny', 'tiny_cifar')
CONFIGS = {'mnist': 'configs/experiments/mnist_lenet5_prune_ablation.py',
           'cifar': 'configs/experiments/cifar10_resnet20_prune_ablation.py'}
RATIOS = {'mnist': ('0.6', '0.8'), 'cifar': ('0.5', '0.7')}
# (plain, learned, gated) criteria per dataset.
CRITERIA: dict[str, dict[str, Sequence[str]]] = {
    'mnist': {'plain': ('random', 'l1', 'bn_gamma', 'taylor', 'attention', 'attention_bn_gamma',
                        'attention_taylor'),
              'learned': ('se_l1', 'se_bn_gamma', 'se_taylor'),
              'gated': ('l1', 'bn_gamma', 'taylor')},
    'cifar': {'plain': ('random', 'l1', 'attention'), 'learned': ('se_l1',), 'gated': ('l1',)},
}
GROUPS = {'mnist': 'results/mnist_lenet5', 'cifar': 'results/cifar10_resnet20'}
TINY = ('--config.train_subset=1400', '--config.eval_subset=500', '--config.batch_size=64',
        '--config.prune.holdout=300')


def command(kind: str) -> str:
  """The command recorded in the table (DATA and OUT left as names)."""
  return f'python -m reproduce.sweeps.attention_ablation DATA OUT {kind}'


def plan(data: str, out: str, kind: str, seeds: Sequence[int] = (0, 1, 2),
         criteria: dict[str, Sequence[str]] | None = None) -> list[Step]:
  dataset = 'cifar' if kind.endswith('cifar') else 'mnist'
  config, ratios = CONFIGS[dataset], RATIOS[dataset]
  criteria = {**CRITERIA[dataset], **(criteria or {})}
  extra = list(TINY) if kind.startswith('tiny') else []
  group = None if kind.startswith('tiny') else GROUPS[dataset]
  steps: list[Step] = []

  def run(workdir: str, *overrides: str):  # skipped once finished; its log in OUT/logs
    name = os.path.relpath(workdir, out).replace(os.sep, '_')
    steps.append(qprune_run(config, workdir, [f'--config.data_dir={data}',
                                              '--config.progress=False', *extra, *overrides],
                            log=os.path.join(out, 'logs', f'{name}.log'), skip_finished=True))

  for seed in seeds:
    root, s = os.path.join(out, f'seed{seed}'), f'--config.seed={seed}'
    plain, gated = os.path.join(root, 'pretrain'), os.path.join(root, 'pretrain_se')
    run(plain, s, '--config.prune.snapshots=True', '--config.prune.finetune_epochs=0')
    run(gated, s, '--config.prune.snapshots=True', '--config.prune.finetune_epochs=0',
        '--config.prune.se_gates=True', '--config.prune.criterion=se_l1')
    for ratio in ratios:
      r = f'--config.prune.ratio={ratio}'
      for criterion in criteria['plain']:
        run(os.path.join(root, f'{criterion}_r{ratio}'), s,
            f'--config.prune.criterion={criterion}', r, f'--config.prune.decide_from={plain}')
      for criterion in criteria['learned']:
        run(os.path.join(root, f'{criterion}_r{ratio}'), s,
            f'--config.prune.criterion={criterion}', r, '--config.prune.se_gates=True',
            f'--config.prune.decide_from={gated}')
      for criterion in criteria['gated']:  # the se_* runs' network, scored without excitation
        run(os.path.join(root, f'gated_{criterion}_r{ratio}'), s,
            f'--config.prune.criterion={criterion}', r, '--config.prune.se_gates=True',
            f'--config.prune.decide_from={gated}')
      # After each ratio, so a machine lost mid-seed keeps the ratios already done; --merge keeps
      # the seeds already in the table, also those of machines whose workdirs are gone.
      table = [PYTHON, '-m', 'reproduce.ablation', f'--runs={root}', f'--command={command(kind)}']
      if group:
        table += [f'--out={group}/attention_ablation.json', '--merge']
      steps.append(Step(tuple(table)))
      if group:
        steps.append(write_book())
  return steps


def _names(text: str) -> list[str]:
  return [v for v in text.replace(' ', ',').split(',') if v]


def main(argv=None) -> int:
  parser = driver_parser('reproduce.sweeps.attention_ablation', __doc__, KINDS, default='mnist')
  parser.add_argument('--seeds', default='0,1,2')
  for group in ('plain', 'learned', 'gated'):
    parser.add_argument(f'--{group}', type=_names, help=f'{group} criteria (comma-separated)')
  args = parser.parse_args(argv)
  try:
    seeds = [int(s) for s in _names(args.seeds)]
  except ValueError:
    parser.error(f'--seeds={args.seeds}: give integers, e.g. 0,1,2')
  criteria = {g: getattr(args, g) for g in ('plain', 'learned', 'gated')
              if getattr(args, g) is not None}
  return run_driver(plan(args.data, args.out, args.kind, seeds, criteria), args)


if __name__ == '__main__':
  sys.exit(main())
