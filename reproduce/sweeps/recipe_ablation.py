r"""The ResNet-20 CPU recipe, one change at a time (issue: a strong full-precision model).

  python -m reproduce.sweeps.recipe_ablation DATA_DIR OUT [cpu40|tiny] [--changes=ema,linear]
      [--dry_run]

Each run is configs/cifar10_resnet20_cpu40.py (40 bfloat16 epochs, label smoothing 0.1, SGD with
Nesterov momentum, one warm-up epoch, cosine decay, weight decay 5e-4 on kernels only) with one
change, on the full CIFAR-10 test split, published as results/cifar10_resnet20/fp_cpu40_<change>
as soon as it finishes; the recipe itself is the published `fp_bf16_ls_40ep`, and RESULTS.md's
table of full-precision runs puts each change beside it.

  no_ls          label smoothing off (what the 0.1 adds at 40 epochs)
  ema            an exponential moving average of the weights, decay 0.999 (about 2.5 epochs)
  linear         linear decay to 0 after the warm-up (the one-cycle shape) instead of cosine
  wd1e-4         weight decay 1e-4 instead of 5e-4
  batch256       batch 256 at peak LR 0.2 (the linear scaling rule, Goyal et al. 2017)

  cpu40  the real schedule: about 85 minutes per change on 2 cores
  tiny   a smoke test of every command on 512 images, 1 epoch (not published)

DATA_DIR holds cifar10/ or cifar10.tar.gz. Run from the checkout's root; reruns skip finished
runs and resume the others from their checkpoints.
"""
import os
import sys

from reproduce.sweeps import Step, driver_parser, publish, qprune_run, run_driver, write_book

CONFIG = 'configs/cifar10_resnet20_cpu40.py'
CHANGES = {
    'no_ls': ('--config.label_smoothing=0',),
    'ema': ('--config.ema_decay=0.999',),
    'linear': ('--config.lr_schedule=linear',),
    'wd1e-4': ('--config.weight_decay=1e-4',),
    'batch256': ('--config.batch_size=256', '--config.learning_rate=0.2'),
}
KINDS = ('cpu40', 'tiny')
TINY = ('--config.epochs=1', '--config.warmup_epochs=0', '--config.train_subset=512',
        '--config.eval_subset=256')


def plan(data: str, out: str, kind: str, changes=tuple(CHANGES)) -> list[Step]:
  """One run per change, each published as it finishes (cpu40), then the book."""
  steps: list[Step] = []
  for name in changes:
    workdir = os.path.join(out, name)
    extra = TINY if kind == 'tiny' else ()
    steps.append(qprune_run(CONFIG, workdir,
                            [f'--config.data_dir={data}', *CHANGES[name], *extra],
                            log=os.path.join(out, 'logs', f'{name}.log'), skip_finished=True))
    if kind != 'tiny':
      steps.append(publish(workdir, f'results/cifar10_resnet20/fp_cpu40_{name}'))
  return steps if kind == 'tiny' else steps + [write_book()]


def main(argv=None) -> int:
  parser = driver_parser('reproduce.sweeps.recipe_ablation', __doc__, KINDS, default='cpu40')
  parser.add_argument('--changes', default=','.join(CHANGES))
  args = parser.parse_args(argv)
  changes = [c for c in args.changes.split(',') if c]
  unknown = [c for c in changes if c not in CHANGES]
  if unknown:
    parser.error(f'--changes: unknown {", ".join(unknown)}; choose from {", ".join(CHANGES)}')
  return run_driver(plan(args.data, args.out, args.kind, changes), args)


if __name__ == '__main__':
  sys.exit(main())
