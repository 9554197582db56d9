r"""qprune binary: train, quantize, prune or run the whole pipeline from a config.

  python -m qprune.main --config=configs/mnist_lenet5.py --workdir=/tmp/lenet \
      --config.data_dir=../shared/data --config.epochs=1

Rerunning with the same workdir resumes an unfinished run and leaves a finished one untouched.
Bad input (config values, data, init_from, workdir) ends with one 'qprune: error: ...' line and
exit status 2.
On Linux it re-executes itself once at start with glibc's huge-page malloc tunable (faster CPU
training, see qprune/ops/malloc.py; QPRUNE_HUGEPAGES=0 turns that off).
"""
import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file in configs/.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def maybe_initialize_distributed():
  """Multi-host (TPU pod / multi-node GPU): join the job when the environment says so.

  TPU pods, SLURM and MPI are detected by jax itself; elsewhere set JAX_COORDINATOR_ADDRESS
  (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID (launch.sh --multi-host prints
  the per-host commands).
  """
  import jax  # pylint: disable=g-import-not-at-top
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS') or int(env.get('JAX_NUM_PROCESSES', '1')) > 1:
    kwargs = {}
    if env.get('JAX_COORDINATOR_ADDRESS'):
      kwargs['coordinator_address'] = env['JAX_COORDINATOR_ADDRESS']
    if env.get('JAX_NUM_PROCESSES'):
      kwargs['num_processes'] = int(env['JAX_NUM_PROCESSES'])
    if env.get('JAX_PROCESS_ID'):
      kwargs['process_id'] = int(env['JAX_PROCESS_ID'])
    jax.distributed.initialize(**kwargs)


def run(config, workdir: str) -> dict:
  """Validates, prepares the workdir and runs config.mode; returns results.json's content."""
  # Imports here keep `--help` and config errors fast (no JAX start-up).
  from qprune import configs  # pylint: disable=g-import-not-at-top
  configs.validate(config)
  from qprune.modes import MODES, common  # pylint: disable=g-import-not-at-top
  from qprune import files  # pylint: disable=g-import-not-at-top
  from qprune.train import parallel  # pylint: disable=g-import-not-at-top

  finished = common.prepare_workdir(config, workdir)
  if finished is not None:
    print(f'{workdir} already holds this finished run; nothing to do.', flush=True)
    return finished
  maybe_initialize_distributed()
  mesh = parallel.make_mesh()
  start = time.time()
  results = MODES[config.mode](config, workdir, mesh)
  results = {'mode': config.mode, 'model': config.model, 'dataset': config.dataset,
             **results, 'wall_time_s': time.time() - start, 'devices': int(mesh.devices.size),
             'machine': machine_description(), 'command': command_line()}
  files.write_json_atomic(os.path.join(workdir, common.RESULTS_JSON), results)
  write_report(config, workdir, results)
  return results


def machine_description() -> str:
  """'<device kind> x<count>, <CPU model>, <cores> cores': where a result was measured."""
  import platform  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  devices = jax.devices()
  return f'{devices[0].device_kind} x{len(devices)}, {cpu}, {os.cpu_count()} cores'


def command_line() -> str:
  """The command that started this run, as typed (relative paths stay relative)."""
  import shlex  # pylint: disable=g-import-not-at-top
  return shlex.join(['python', '-m', 'qprune.main', *sys.argv[1:]])


def write_report(config, workdir: str, results: dict):
  """report.md + plots; a failure here only warns (the run's results are already safe)."""
  from qprune import report  # pylint: disable=g-import-not-at-top
  # The full-precision weights the quantization targets were chosen from, for the histograms.
  full_precision = {'quantize': config.init_from or None,
                    'pipeline': os.path.join(workdir, 'prune')}.get(config.mode)
  try:
    path = report.write_report(workdir, results, variables=full_precision)
    print(f'report: {path}', flush=True)
  except Exception as e:  # pylint: disable=broad-except
    print(f'qprune: warning: could not write the report: {type(e).__name__}: {e}',
          file=sys.stderr, flush=True)


def _summary(results: dict) -> str:
  keys = ('mode', 'model', 'dataset', 'test_accuracy', 'params', 'macs', 'epochs_run',
          'wall_time_s')
  return json.dumps({k: results[k] for k in keys if k in results})


def parse_flags(argv):
  """absl's parser, but a bad override (unknown field, wrong type) is one line, exit status 2."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: a field the config does not have
    field = str(e).strip('"\'')
    print(f'qprune: error: unknown config field {field!r} (see qprune/configs.py for the fields)',
          file=sys.stderr, flush=True)
    sys.exit(2)
  except (flags.Error, TypeError, ValueError) as e:
    print(f'qprune: error: bad flag: {e}', file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from qprune.errors import UserError  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  try:
    results = run(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    print(f'qprune: error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  print(_summary(results), flush=True)


if __name__ == '__main__':
  from qprune.ops import malloc  # pylint: disable=g-import-not-at-top
  malloc.reexec_with_hugepages()  # before any work: see qprune/ops/malloc.py
  app.run(main, flags_parser=parse_flags)
