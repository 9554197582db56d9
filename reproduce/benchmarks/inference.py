"""Benchmark: inference latency and throughput of the unpruned vs the pruned model, JAX vs ONNX.

    python -m reproduce.benchmarks.inference [--models=lenet5,resnet20] [--ratio=0.5] [--json]
    python -m reproduce.benchmarks.inference --workdir=W      # a finished run's model instead

For each model the benchmark prunes inside the run: `prune.derive_groups` (ResNets with the
residual stream too, `--residual`), `prune.make_masks(criterion=--criterion, ratio=--ratio,
'uniform')` and `prune.shrink`, from the model's random init (timing does not depend on the
weights' values) or from `--workdir`'s final model. Then, for both the full and the pruned model:

  jax   `model.apply(..., train=False)` compiled with `qprune.ops.compile.jit` (qprune's CPU
        options), warmed up, each call `block_until_ready`;
  onnx  `qprune.deploy.to_onnx` (BatchNorm folded) in onnxruntime's CPUExecutionProvider (all
        graph optimizations, --threads intra-op threads), `session.run` calls;

at batch 1 (latency, ms; median of --repeats) and at --batch (throughput, images/s; median of
--throughput_repeats), on SYNTHETIC uint8 images. The
speed-up columns are full / pruned times measured in the same process, interleaved per repeat
(full, pruned, full, ...), so drifts in machine load hit both alike. `--tiny` shrinks batches and
repeats to check the benchmark runs (its timings mean nothing). With --json the last printed line
is one JSON object {'rows': [...], 'meta': {...}}.
"""
import json
import os
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags, logging

from qprune import prune
from qprune.models import count_macs, count_params, create_model, init_variables

_MODELS = flags.DEFINE_list('models', ['lenet5', 'resnet20'], 'zoo models to time')
_WORKDIR = flags.DEFINE_string('workdir', None, 'time this finished run\'s model instead')
_RATIO = flags.DEFINE_float('ratio', 0.5, 'fraction of channels removed')
_CRITERION = flags.DEFINE_string('criterion', 'l1', 'pruning criterion')
_RESIDUAL = flags.DEFINE_bool('residual', True, 'ResNets: also prune the residual stream')
_BATCH = flags.DEFINE_integer('batch', 256, 'throughput batch size')
_REPEATS = flags.DEFINE_integer('repeats', 30, 'timed batch-1 calls per latency figure (median)')
_THROUGHPUT_REPEATS = flags.DEFINE_integer('throughput_repeats', 5,
                                           'timed --batch calls per throughput figure (median)')
_THREADS = flags.DEFINE_integer('threads', 0, 'onnxruntime intra-op threads (0: its default)')
_BACKENDS = flags.DEFINE_list('backends', ['jax', 'onnx'], 'jax and/or onnx')
_TINY = flags.DEFINE_bool('tiny', False, 'batch 2, 2 repeats: only checks that it runs')
_JSON = flags.DEFINE_bool('json', False, 'print one JSON object as the last line')

INPUT_SHAPES = {'lenet5': (28, 28, 1)}
DEFAULT_SHAPE = (32, 32, 3)


def _median_interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
  """{name: median seconds}; every fn is warmed up twice, then the fns alternate per repeat."""
  for fn in fns.values():
    fn()
    fn()
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}


def _jax_runner(model, variables, images) -> Callable[[], None]:
  from qprune.ops import compile as qcompile  # pylint: disable=g-import-not-at-top
  apply = qcompile.jit(lambda v, x: model.apply(v, x, train=False))
  variables = jax.device_put(variables)
  images = jax.device_put(images)
  return lambda: apply(variables, images).block_until_ready()


def _onnx_runner(model, variables, images, input_shape, threads: int = 0) -> Callable[[], None]:
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top

  from qprune import deploy  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  options.log_severity_level = 3
  options.intra_op_num_threads = threads
  session = ort.InferenceSession(deploy.to_onnx(model, variables, input_shape), options,
                                 providers=['CPUExecutionProvider'])
  feed = {'images': np.asarray(images)}
  return lambda: session.run(None, feed)


def model_pair(name: str, ratio: float, criterion: str, residual: bool, workdir=None):
  """(input_shape, {'full': (model, variables), 'pruned': (model, variables)})."""
  if workdir:
    from qprune import deploy  # pylint: disable=g-import-not-at-top
    run = deploy.load_run(workdir)
    model, variables, shape = run.model, run.variables, tuple(run.spec['input_shape'])
  else:
    shape = INPUT_SHAPES.get(name, DEFAULT_SHAPE)
    model = create_model(name, 10)
    variables = init_variables(model, jax.random.PRNGKey(0), shape)
  is_resnet = 'stem_conv' in variables['params']
  groups = prune.derive_groups(variables, residual=residual and is_resnet)
  masks = prune.make_masks(variables, groups, criterion, ratio, 'uniform')
  small_model, small_variables = prune.shrink(model, variables, groups, masks)
  return shape, {'full': (model, variables), 'pruned': (small_model, small_variables)}


def bench_model(name: str, *, ratio: float, criterion: str, residual: bool, batch: int,
                repeats: int, throughput_repeats: int, backends: list[str], threads: int = 0,
                workdir=None) -> list[dict]:
  """Rows {model, measure, batch, backend, full_ms, pruned_ms, *_images_per_s, speedup, ...}."""
  shape, pair = model_pair(name, ratio, criterion, residual, workdir)
  counts = {k: {'params': count_params(v['params']), 'macs': count_macs(m, v, shape)}
            for k, (m, v) in pair.items()}
  rng = np.random.default_rng(0)
  rows = []
  for label, n, reps in (('latency', 1, repeats), ('throughput', batch, throughput_repeats)):
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    for backend in backends:
      if backend == 'jax':
        fns = {k: _jax_runner(m, v, images) for k, (m, v) in pair.items()}
      elif backend == 'onnx':
        fns = {k: _onnx_runner(m, v, images, shape, threads) for k, (m, v) in pair.items()}
      else:
        raise app.UsageError(f'unknown backend {backend!r} (jax, onnx)')
      t = _median_interleaved(fns, reps)
      rows.append({'model': name, 'measure': label, 'batch': n, 'backend': backend,
                   'full_ms': 1e3 * t['full'], 'pruned_ms': 1e3 * t['pruned'],
                   'full_images_per_s': n / t['full'], 'pruned_images_per_s': n / t['pruned'],
                   'speedup': t['full'] / t['pruned'],
                   'macs_ratio': counts['full']['macs'] / counts['pruned']['macs'],
                   'params_ratio': counts['full']['params'] / counts['pruned']['params']})
  return rows


def format_table(rows: list[dict]) -> str:
  head = ('| model | measure | batch | backend | full | pruned | speed-up | MACs ratio |\n'
          '| --- | --- | --- | --- | --- | --- | --- | --- |')
  lines = [head]
  for r in rows:
    if r['measure'] == 'latency':
      full, pruned = f'{r["full_ms"]:.3f} ms', f'{r["pruned_ms"]:.3f} ms'
    else:
      full, pruned = f'{r["full_images_per_s"]:.0f} img/s', f'{r["pruned_images_per_s"]:.0f} img/s'
    lines.append(f'| {r["model"]} | {r["measure"]} | {r["batch"]} | {r["backend"]} | {full} | '
                 f'{pruned} | {r["speedup"]:.2f}x | {r["macs_ratio"]:.2f}x |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)
  batch, repeats, t_repeats = ((2, 2, 2) if _TINY.value else
                               (_BATCH.value, _REPEATS.value, _THROUGHPUT_REPEATS.value))
  if min(batch, repeats, t_repeats) < 1:
    raise app.UsageError('--batch, --repeats and --throughput_repeats must be >= 1')
  names = ['workdir'] if _WORKDIR.value else _MODELS.value
  rows = []
  for name in names:
    model_rows = bench_model(name, ratio=_RATIO.value, criterion=_CRITERION.value,
                             residual=_RESIDUAL.value, batch=batch, repeats=repeats,
                             throughput_repeats=t_repeats, backends=_BACKENDS.value,
                             threads=_THREADS.value, workdir=_WORKDIR.value)
    rows += model_rows
    print(format_table(model_rows), flush=True)
  meta = {'ratio': _RATIO.value, 'criterion': _CRITERION.value, 'repeats': repeats,
          'throughput_repeats': t_repeats, 'onnxruntime_threads': _THREADS.value,
          'tiny': _TINY.value, 'jax_backend': jax.default_backend(), 'cpu_count': os.cpu_count(),
          'load_avg_1min': os.getloadavg()[0], 'synthetic_images': True}
  if _JSON.value:
    print(json.dumps({'rows': rows, 'meta': meta}), flush=True)


if __name__ == '__main__':
  app.run(main)
