r"""The CIFAR-10 ResNet-20 pruning decision study in one command.

  python -m reproduce.sweeps.prune_decision DATA_DIR OUT [gpu|cpu|cpu40|tiny]
      [--criteria=l1,bn_gamma] [--control_epochs=2,4] [--long_finetune=EPOCHS,LR] [--seed=N]
      [--early_seeds=1] [--dry_run]

Per criterion, one pretraining run that records the masks and a snapshot of every epoch
(stop_rule=full), then decisions taken from it at 10 %, 20 % and 50 % of the pretraining epochs
and by the Early-Bird rule (prune.decide_from: no pretraining is repeated), each shrunk and
fine-tuned with the same budget; then published under
results/cifar10_resnet20/prune_<criterion>_<decision>/ (cpu) or results/cifar10_resnet20_gpu/...
(gpu) and RESULTS.md rewritten.

  cpu   configs/experiments/cifar10_resnet20_prune_decision.py: 10 pretraining epochs,
        2 fine-tuning epochs (about 1 hour per criterion on 2 cores)
  gpu   the paper's schedule: 160 pretraining epochs, Early-Bird window 5, 40 fine-tuning epochs
  cpu40 Early-Bird's own protocol (You et al. 2020: find the masks early, then train the pruned
        network) at the 40-epoch CPU recipe (configs/cifar10_resnet20_cpu40.py: bfloat16, label
        smoothing 0.1): the decision after all 40 epochs fine-tuned 10 epochs at lr 0.01 is the
        reference; decisions at 10 % and 20 % of the schedule (epochs 4 and 8) train the
        pruned network at lr 0.1 to 0.35x, 0.5x and 1.0x of the reference's training compute
        (prune.train_budget), the 0.35x ones again with each --early_seeds seed. They decide
        from a replay of the reference's first 8 epochs (pretrain8, checked epoch for epoch
        against the published reference), so no step needs the reference's workdir: each run
        is published under results/cifar10_resnet20_cpu40/ as it finishes and skipped once
        published, and the study goes on from a fresh checkout (per criterion on 2 cores: the
        reference ~2 h, the replay ~20 min, a decision 0.5-1.5 h, 2.5 h at 1.0x)
  tiny  a smoke test of the whole command on 1,024 images (minutes on a CPU; not published)
  --criteria        default l1,bn_gamma (bn_gamma pretrains with the Network Slimming penalty on
                    BatchNorm gamma, lambda 1e-5 as Liu et al. 2017 use for ResNets)
  --control_epochs  decision epochs whose masks also cut the fully pretrained weights
                    (prune.shrink_weights=final), named epoch<E>_final_weights
  --long_finetune   EPOCHS,LR: the decisions after all pretraining epochs, at 20 % and by the
                    Early-Bird rule again, fine-tuned for EPOCHS at LR (named <decision>_ft<EPOCHS>)
  --seed            cpu40: the whole study (its own pretraining) with this seed; run names are
                    prune_<criterion>_seed<N>_<run> for N > 0
  --early_seeds     cpu40: more seeds of what follows the early decisions at 0.35x, from the
                    same pretraining (default: the study's seed + 1; run names end in _s<seed>);
                    '' for none

DATA_DIR holds cifar10/ or cifar10.tar.gz. Run from the checkout's root; reruns resume every run
and skip finished ones.
"""
import json
import os
import subprocess
import sys
from collections.abc import Sequence

from reproduce.sweeps import (
  PYTHON,
  Step,
  driver_parser,
  publish,
  qprune_run,
  run_driver,
  write_book,
)

KINDS = ('gpu', 'cpu', 'cpu40', 'tiny')
CONFIG = 'configs/experiments/cifar10_resnet20_prune_decision.py'
EXTRA = {
    'cpu': (),
    'gpu': ('--config.epochs=160', '--config.weight_decay=1e-4', '--config.prune.eb_window=5',
            '--config.prune.finetune_epochs=40', '--config.batch_size=256',
            '--config.learning_rate=0.2'),
    'cpu40': ('--config.epochs=40', '--config.compute_dtype=bfloat16',
              '--config.label_smoothing=0.1', '--config.prune.eb_window=5'),
    'tiny': ('--config.epochs=4', '--config.train_subset=1024', '--config.eval_subset=256',
             '--config.batch_size=64', '--config.prune.holdout=300',
             '--config.prune.finetune_epochs=1'),
}


def decision_epochs(epochs: int) -> list[int]:
  """10 %, 20 % and 50 % of the pretraining epochs (at least 1), deduplicated, ascending."""
  return sorted({max(1, epochs * pct // 100) for pct in (10, 20, 50)})


def plan(data: str, out: str, kind: str, epochs: int, criteria: Sequence[str] = ('l1', 'bn_gamma'),
         control_epochs: Sequence[int] = (),
         long_finetune: tuple[int, float] | None = None) -> list[Step]:
  """The study's steps; `epochs`: the config's pretraining epochs with the kind's overrides."""
  extra = list(EXTRA[kind])
  group = 'results/cifar10_resnet20' + ('' if kind == 'cpu' else f'_{kind}')
  steps: list[Step] = []
  for criterion in criteria:
    crit = [f'--config.prune.criterion={criterion}']
    if criterion == 'bn_gamma':
      crit.append('--config.prune.slimming_lambda=1e-5')
    source = os.path.join(out, criterion, 'full')
    names: list[str] = []

    # The two closures run within this iteration only, so the loop variables they read are
    # this criterion's (B023 does not apply).
    def run(name: str, *overrides: str):  # noqa: B023
      names.append(name)  # noqa: B023
      steps.append(qprune_run(CONFIG, os.path.join(out, criterion, name),  # noqa: B023
                              [f'--config.data_dir={data}', *extra, *crit, *overrides],  # noqa: B023
                              log=os.path.join(out, 'logs', f'{criterion}_{name}.log')))  # noqa: B023

    def decide(name: str, epoch: int | None, *overrides: str):
      rule = (['--config.prune.stop_rule=early_bird'] if epoch is None else
              ['--config.prune.stop_rule=fixed', f'--config.prune.pretrain_epochs={epoch}'])
      run(name, f'--config.prune.decide_from={source}', *rule, *overrides)  # noqa: B023

    run('full')
    for e in decision_epochs(epochs):
      decide(f'epoch{e}', e)
    decide('early_bird', None)
    # Controls: the same early masks cutting the weights after all pretraining epochs, then the
    # same fine-tuning; what is left of the gap to the full-training decision is the mask's.
    for e in control_epochs:
      decide(f'epoch{e}_final_weights', e, '--config.prune.shrink_weights=final')
    if long_finetune:  # the last epoch, 20 % and the Early-Bird rule, each trained longer
      ft_epochs, ft_lr = long_finetune
      ft = (f'--config.prune.finetune_epochs={ft_epochs}',
            f'--config.prune.finetune_learning_rate={ft_lr:g}')
      early = max(1, epochs // 5)
      for e in (epochs, early):
        decide(f'full_ft{ft_epochs}' if e == epochs else f'epoch{e}_ft{ft_epochs}', e, *ft)
      decide(f'early_bird_ft{ft_epochs}', None, *ft)
    if kind != 'tiny':
      steps += [publish(os.path.join(out, criterion, name), f'{group}/prune_{criterion}_{name}')
                for name in names]
  return steps if kind == 'tiny' else steps + [write_book()]


# cpu40: the reference's fine-tuning, the early decisions' learning rate and budgets (fractions
# of the reference's training compute), most telling first: a long study is read as it goes.
# 0.35x comes first and gets the second seed: it is the least compute at which an early L1
# decision matched the reference (RESULTS.md, the cpu40 section).
PROTOCOL_FINETUNE = ('--config.prune.finetune_epochs=10',
                     '--config.prune.finetune_learning_rate=0.01')
PROTOCOL_LR = 0.1
PROTOCOL_BUDGETS = (0.35, 0.5, 1.0)


def protocol_plan(data: str, out: str, epochs: int, criteria: Sequence[str] = ('l1', 'bn_gamma'),
                  seed: int = 0, early_seeds: Sequence[int] | None = None) -> list[Step]:
  """cpu40: Early-Bird's protocol. Per criterion, the pretraining run (with `seed`) with its
  decision after all `epochs` (the reference); then that pretraining's first 20 % again, with a
  snapshot per epoch (`pretrain<E>`), checked to be the reference's epoch for epoch (a training
  run is deterministic on a machine); decisions at 10 % and 20 % from it, each trained to
  PROTOCOL_BUDGETS of the reference's training compute, the first budget's again with each of
  `early_seeds` (default `seed` + 1; what follows the decision only). Every run is published as
  soon as it finishes and skipped once published, so the study goes on from a fresh checkout
  in steps that fit a working session (the reference ~2 h on 2 cores; the replayed
  pretraining ~20 min; a decision 0.5-2.5 h); the book is rewritten after each criterion."""
  group = 'results/cifar10_resnet20_cpu40'
  study = f'seed{seed}_' if seed else ''
  early_seeds = (seed + 1,) if early_seeds is None else early_seeds
  early = sorted({max(1, epochs * pct // 100) for pct in (10, 20)})
  steps: list[Step] = []
  for criterion in criteria:
    common = [f'--config.data_dir={data}', *EXTRA['cpu40'],
              f'--config.prune.criterion={criterion}']
    if criterion == 'bn_gamma':
      common.append('--config.prune.slimming_lambda=1e-5')
    root = os.path.join(out, criterion, f'seed{seed}')

    def published(name: str) -> str:
      return f'{group}/prune_{criterion}_{study}{name}'  # noqa: B023 (this iteration's)

    def run(name: str, *overrides: str, run_seed: int = seed, done: Sequence[str] = (),
            publishes: bool = True) -> list[Step]:
      """The qprune run `name` (skipped once published, or once every file of `done` exists)
      and, if it `publishes`, its publication."""
      workdir = os.path.join(root, name)  # noqa: B023
      log = os.path.join(out, 'logs', f'{criterion}_s{seed}_{name}.log')  # noqa: B023
      config = [*common, f'--config.seed={run_seed}', *overrides]  # noqa: B023
      if not publishes:
        return [qprune_run(CONFIG, workdir, config, log=log, done=done)]
      return [qprune_run(CONFIG, workdir, config, log=log,
                         done=[os.path.join(published(name), 'results.json')]),
              publish(workdir, published(name), skip_published=True)]

    reference = published('full')
    steps += run('full', *PROTOCOL_FINETUNE)
    source = os.path.join(root, f'pretrain{early[-1]}')
    decisions: list[Step] = []
    for budget in PROTOCOL_BUDGETS:
      trained = (f'--config.prune.train_budget={budget:g}', f'--config.prune.budget_of={reference}',
                 f'--config.prune.finetune_learning_rate={PROTOCOL_LR:g}',
                 f'--config.prune.decide_from={source}', '--config.prune.stop_rule=fixed')
      again = early_seeds if budget == PROTOCOL_BUDGETS[0] else ()
      for run_seed in (seed, *again):  # (a decision run's seed drives what follows the decision)
        for e in early:
          name = f'epoch{e}_b{budget:g}' + ('' if run_seed == seed else f'_s{run_seed}')
          decisions += run(name, *trained, f'--config.prune.pretrain_epochs={e}',
                           run_seed=run_seed)
    # The replayed pretraining (not published) runs while any decision from it is unpublished.
    pending = tuple(done for step in decisions for done in step.done)
    steps += run(os.path.basename(source), '--config.prune.stop_rule=fixed',
                 f'--config.prune.pretrain_epochs={early[-1]}', '--config.prune.finetune_epochs=0',
                 done=pending, publishes=False)
    steps.append(Step((PYTHON, '-m', 'reproduce.results', 'check_replay', source, reference),
                      done=pending))
    steps += decisions
    steps.append(write_book())
  return steps


def config_epochs(kind: str) -> int:
  """The config's pretraining epochs with the kind's overrides, as the binary resolves them."""
  python = os.environ.get('QPRUNE_PYTHON') or sys.executable
  printed = subprocess.run([python, '-m', 'qprune.main', f'--config={CONFIG}', *EXTRA[kind],
                            '--print_config'], capture_output=True, text=True, check=True)
  return int(json.loads(printed.stdout)['epochs'])


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(',') if v.strip()]


def main(argv=None) -> int:
  parser = driver_parser('reproduce.sweeps.prune_decision', __doc__, KINDS, default='gpu')
  parser.add_argument('--criteria', default='l1,bn_gamma')
  parser.add_argument('--control_epochs', type=_ints, default=[])
  parser.add_argument('--long_finetune', help='EPOCHS,LR, e.g. 6,0.1')
  parser.add_argument('--seed', type=int, default=0, help='cpu40: the study\'s seed')
  parser.add_argument('--early_seeds', type=_ints, default=None,
                      help='cpu40: seeds of what follows the early decisions at 0.35x '
                      '(default: the study\'s seed + 1)')
  args = parser.parse_args(argv)
  long_finetune = None
  if args.long_finetune:
    try:
      ft_epochs, ft_lr = args.long_finetune.split(',')
      long_finetune = (int(ft_epochs), float(ft_lr))
    except ValueError:
      parser.error(f'--long_finetune={args.long_finetune}: give EPOCHS,LR, e.g. 6,0.1')
  criteria = [c for c in args.criteria.split(',') if c]
  if args.kind == 'cpu40':
    if args.seed in (args.early_seeds or ()):
      parser.error(f'--early_seeds={args.seed} is the study\'s own --seed; give others')
    if args.control_epochs or long_finetune:
      parser.error('--control_epochs and --long_finetune do not apply to cpu40 (its decisions '
                   'are trained to budgets of the reference\'s compute)')
    steps = protocol_plan(args.data, args.out, config_epochs(args.kind), criteria, args.seed,
                          args.early_seeds)
  else:
    if args.seed or args.early_seeds is not None:
      parser.error('--seed and --early_seeds apply to cpu40 only (the other kinds use the '
                   'config\'s seed)')
    steps = plan(args.data, args.out, args.kind, config_epochs(args.kind), criteria,
                 args.control_epochs, long_finetune)
  return run_driver(steps, args)


if __name__ == '__main__':
  sys.exit(main())
