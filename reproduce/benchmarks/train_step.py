r"""Warm train-step throughput of zoo models: qprune's fast path versus plain Flax/XLA.

  python -m reproduce.benchmarks.train_step --model=resnet20 --batch_size=256 [--json]
  python -m reproduce.benchmarks.train_step --model=all --batch_size=32
  python -m reproduce.benchmarks.train_step --variants=qprune,qprune_4k,xla_conv,plain  # why

Times the real jitted train step of `qprune.train` (SGD momentum, weight decay, BatchNorm,
on-device batch gather and augmentation) on random uint8 images. Variants:
  qprune     what `python -m qprune.main` runs: conv_impl='auto' (custom kernel gradient on CPU),
             qprune's CPU compiler options, huge-page malloc (`qprune.ops.malloc`, where the
             machine supports it; `anon_huge_mib` in the JSON shows whether it took effect)
  qprune_4k  the same with glibc's default malloc (4 KiB pages)
  xla_conv   lax conv (what flax.linen.Conv computes) + qprune's CPU compiler options
  xla_conv_huge  xla_conv with the huge-page malloc: against `qprune`, the conv route alone
  plain      lax conv, plain `jax.jit` with XLA's default options: what a Flax user gets
  qprune_bf16  `qprune` in bfloat16 compute whatever --dtype says: `--variants=qprune_bf16,qprune`
             is the bfloat16 / float32 ratio in one run
All variants use the same model code otherwise (FusedBatchNorm included). Each variant runs in
its own process (measured: a step timed in a process holding other compiled variants ran up to
1.45x slower than alone; we suspect their large temporaries interleaving in glibc's allocator),
and the processes alternate variant by variant for --repeats rounds so machine noise hits them
alike. In a process:
compile plus two warm-up steps (excluded), then --steps timed steps, each blocked on. Reported:
the median over all timed steps of a variant, and `speedup`, the ratio of the first variant to
the last. GFLOP/s counts 6 x MACs per image (forward 2, backward 4). With --json the last line
is one JSON object: the first model's row (images_per_s, plain_images_per_s, speedup, ...) with
a 'rows' list.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qprune import models
from qprune.data import pipeline
from qprune.ops import malloc
from qprune.train import loop, parallel, steps
from qprune.train.state import create_state

# name -> (conv_impl, xla_defaults, huge-page malloc, compute dtype or None for --dtype's)
VARIANTS = {'qprune': ('auto', False, True, None), 'qprune_4k': ('auto', False, False, None),
            'xla_conv': ('xla', False, False, None), 'xla_conv_huge': ('xla', False, True, None),
            'plain': ('xla', True, False, None), 'qprune_bf16': ('auto', False, True, 'bfloat16')}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

_MODEL = flags.DEFINE_string('model', 'resnet20', f'one of {sorted(models.MODELS)} or "all"')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'global batch size')
_STEPS = flags.DEFINE_integer('steps', 5, 'timed steps per process', lower_bound=1)
_REPEATS = flags.DEFINE_integer('repeats', 2, 'processes per variant, alternating',
                                 lower_bound=1)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', sorted(DTYPES), 'compute dtype')
_VARIANTS = flags.DEFINE_list('variants', ['qprune', 'plain'],
                              f'variants from {sorted(VARIANTS)}; the first is reported as '
                              'images_per_s, the last is the baseline')
_JSON = flags.DEFINE_bool('json', False, 'print one JSON object as the last line')
_WORKER = flags.DEFINE_string('worker', None, 'internal: time this one variant, print JSON')

_SHAPES = {'lenet5': (28, 28, 1)}


class _Runner:
  """One variant's compiled step and its donated state, stepping on a fixed two-batch split."""

  def __init__(self, name, batch_size, conv_impl, xla_defaults, dtype):
    self.shape = _SHAPES.get(name, (32, 32, 3))
    self.model = models.create_model(name, 10, dtype=dtype, conv_impl=conv_impl)
    variables = models.init_variables(self.model, jax.random.PRNGKey(0), self.shape)
    self.macs = models.count_macs(self.model, variables, self.shape)
    mesh = parallel.make_mesh()
    n = batch_size * 2
    rng = np.random.default_rng(0)
    self.images = jax.device_put(rng.integers(0, 256, (n, *self.shape), np.uint8),
                                 parallel.replicated(mesh))
    self.labels = jax.device_put(rng.integers(0, 10, (n,), np.int32), parallel.replicated(mesh))
    tx = loop.make_optimizer(loop.TrainOptions(epochs=1, batch_size=batch_size), n)
    self.state = jax.device_put(create_state(variables, tx), parallel.replicated(mesh))
    augment = pipeline.AUGMENTATIONS['crop_flip' if self.shape[-1] == 3 else 'none']
    self.step_fn = steps.make_train_step(model=self.model, tx=tx, batch_size=batch_size,
                                         augment=augment,
                                         batch_sharding=parallel.batch_sharded(mesh),
                                         xla_defaults=xla_defaults)
    self.key, self.perm, self.metrics = jax.random.PRNGKey(0), jnp.arange(n), steps.zero_metrics()
    self.i = 0

  def step(self) -> float:
    start = time.perf_counter()
    self.state, self.metrics = self.step_fn(self.state, self.images, self.labels, self.perm,
                                            jnp.int32(self.i % 2), self.key, {}, self.metrics)
    jax.block_until_ready(self.state)
    self.i += 1
    return time.perf_counter() - start


def variant_dtype(variant: str, dtype: str) -> str:
  """The compute dtype `variant` runs in when --dtype is `dtype`."""
  return VARIANTS[variant][3] or dtype


def _worker(name, batch_size, n_steps, variant, dtype: str) -> dict:
  conv_impl, xla_defaults, _, _ = VARIANTS[variant]
  runner = _Runner(name, batch_size, conv_impl, xla_defaults,
                   DTYPES[variant_dtype(variant, dtype)])
  for _ in range(3):  # compile, then let caches and allocations settle
    runner.step()
  times = [runner.step() for _ in range(n_steps)]
  return {'times': times, 'macs': runner.macs, 'anon_huge_mib': malloc.anon_huge_mib()}


def _worker_env(hugepages: bool) -> dict:
  """The worker's environment: as `qprune.main` would re-execute with, or without the tunable."""
  if hugepages:
    return malloc.hugepage_env(os.environ) or dict(os.environ)
  return malloc.default_malloc_env(os.environ)


def _run_worker(name: str, variant: str) -> dict:
  cmd = [sys.executable, '-m', 'reproduce.benchmarks.train_step', f'--worker={variant}',
         f'--model={name}', f'--batch_size={_BATCH.value}', f'--steps={_STEPS.value}',
         f'--dtype={_DTYPE.value}']
  out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                       env=_worker_env(VARIANTS[variant][2]))
  if out.returncode != 0:
    raise RuntimeError(f'benchmark worker {variant} for {name} failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark(name: str, variants) -> dict:
  times, macs, huge = {v: [] for v in variants}, 0, {v: [] for v in variants}
  for _ in range(_REPEATS.value):
    for v in variants:
      result = _run_worker(name, v)
      times[v] += result['times']
      macs = result['macs']
      huge[v].append(result['anon_huge_mib'])
  batch_size = _BATCH.value
  per = {}
  for v in variants:
    step_s = statistics.median(times[v])
    per[v] = {'images_per_s': batch_size / step_s, 'step_s': step_s,
              'dtype': variant_dtype(v, _DTYPE.value),
              'gflops_per_s': 6 * macs * batch_size / step_s / 1e9, 'anon_huge_mib': huge[v]}
  first, base = per[variants[0]], per[variants[-1]]
  return {'model': name, 'batch_size': batch_size, 'dtype': _DTYPE.value,
          'backend': jax.default_backend(), 'devices': jax.device_count(),
          'cpu_count': os.cpu_count(), 'macs_per_image': macs,
          'variant': variants[0], 'baseline': variants[-1],
          'images_per_s': first['images_per_s'], 'gflops_per_s': first['gflops_per_s'],
          'plain_images_per_s': base['images_per_s'], 'plain_gflops_per_s': base['gflops_per_s'],
          'speedup': first['images_per_s'] / base['images_per_s'],
          'variants': per}


def main(argv):
  del argv
  unknown = sorted(set(_VARIANTS.value) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f'unknown --variants {unknown}; choose from {sorted(VARIANTS)}')
  names = sorted(models.MODELS) if _MODEL.value == 'all' else [_MODEL.value]
  if not set(names) <= set(models.MODELS):
    raise app.UsageError(f'unknown --model={_MODEL.value!r}; choose from '
                         f'{sorted(models.MODELS)} or "all"')
  if _WORKER.value:
    print(json.dumps(_worker(names[0], _BATCH.value, _STEPS.value, _WORKER.value,
                             _DTYPE.value)))
    return
  variants = list(_VARIANTS.value)
  print(f'{"model":10s} {"batch":>5s} ' + ' '.join(f'{v + " img/s":>16s}' for v in variants)
        + f' {"GFLOP/s":>8s} {"speedup":>8s}')
  rows = []
  for name in names:
    r = benchmark(name, variants)
    rows.append(r)
    print(f'{name:10s} {r["batch_size"]:5d} '
          + ' '.join(f'{r["variants"][v]["images_per_s"]:16.1f}' for v in variants)
          + f' {r["gflops_per_s"]:8.1f} {r["speedup"]:7.2f}x', flush=True)
  if _JSON.value:
    print(json.dumps({**rows[0], 'rows': rows}))


if __name__ == '__main__':
  app.run(main)
