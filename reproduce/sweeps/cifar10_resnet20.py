r"""The whole CIFAR-10 ResNet-20 quantization table in one command.

  python -m reproduce.sweeps.cifar10_resnet20 DATA_DIR OUT [gpu|cpu|tiny] [--dry_run]

The full-precision model, then every target rule of configs/sweeps/cifar10_resnet20_quant.txt
from it (launch.sh, one job per GPU), then the runs published under results/cifar10_resnet20/
(cpu) or results/cifar10_resnet20_gpu/ (gpu) and RESULTS.md rewritten.

  gpu   configs/cifar10_resnet20_gpu.py (160 epochs, batch 256): the paper's schedule
  cpu   configs/cifar10_resnet20_cpu.py (30 epochs, about 1.5 h on 2 cores), then one
        retraining epoch per INQ step (~12 min per quantized variant)
  tiny  a smoke test of the whole command on 512 images (minutes on a CPU; not published)

DATA_DIR holds cifar10/ or cifar10.tar.gz (image-folder layout). Run from the checkout's root;
reruns resume every run from its checkpoints and skip finished ones.
"""
import os
import sys

from reproduce.sweeps import (
  Step,
  driver_parser,
  publish,
  publish_sweep,
  qprune_run,
  run_driver,
  write_book,
)

KINDS = ('gpu', 'cpu', 'tiny')
SWEEP = 'configs/sweeps/cifar10_resnet20_quant.txt'


def plan(data: str, out: str, kind: str) -> list[Step]:
  extra: list[str] = []        # every run
  quant_extra: list[str] = []  # the quantized variants only
  fp_config = 'configs/cifar10_resnet20_cpu.py'
  if kind == 'gpu':
    fp_config = 'configs/cifar10_resnet20_gpu.py'
  elif kind == 'cpu':
    quant_extra = ['--config.quant.retrain_epochs=1']  # ~12 min per variant on 2 cores
  elif kind == 'tiny':
    extra = ['--config.epochs=1', '--config.train_subset=512', '--config.eval_subset=256',
             '--config.batch_size=64', '--config.quant.retrain_epochs=1',
             '--config.quant.final_epochs=0']
  else:
    raise ValueError(f'unknown kind {kind!r}')
  fp = os.path.join(out, 'fp')
  shared = ' '.join([f'--config.init_from={fp}', f'--config.data_dir={data}', *extra,
                     *quant_extra])
  steps = [qprune_run(fp_config, fp, [f'--config.data_dir={data}', *extra]),
           Step(('bash', './launch.sh', '--sweep', SWEEP, '--out', os.path.join(out, 'quant'),
                 '--no-plots', '--set', shared))]
  if kind == 'tiny':
    return steps
  group = 'results/cifar10_resnet20' + ('' if kind == 'cpu' else f'_{kind}')
  return steps + [publish(fp, f'{group}/fp'),
                  publish_sweep(os.path.join(out, 'quant'), group),
                  write_book()]


def main(argv=None) -> int:
  parser = driver_parser('reproduce.sweeps.cifar10_resnet20', __doc__, KINDS, default='gpu')
  args = parser.parse_args(argv)
  return run_driver(plan(args.data, args.out, args.kind), args)


if __name__ == '__main__':
  sys.exit(main())
