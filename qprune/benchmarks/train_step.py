r"""Warm train-step throughput of zoo models: the qprune conv path versus plain XLA conv.

  python -m qprune.benchmarks.train_step --model=resnet20 --batch_size=256 [--json]
  python -m qprune.benchmarks.train_step --model=all

Times the real jitted train step of `qprune.train` (SGD momentum, weight decay, BatchNorm,
on-device batch gather and augmentation) on random uint8 images: compile and two warm-up steps
excluded, each step blocked on, median of --steps. 'plain' uses conv_impl='xla', i.e.
lax.conv_general_dilated, which is what flax.linen.Conv computes; 'qprune' uses conv_impl='auto'.
GFLOP/s counts 6 x MACs per image (forward 2, backward 4). With --json the last line is one JSON
object (the first model's, with a 'rows' list for all models).
"""
import json
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from qprune import models
from qprune.data import pipeline
from qprune.train import loop, parallel, steps
from qprune.train.state import create_state

_MODEL = flags.DEFINE_string('model', 'resnet20', f'one of {sorted(models.MODELS)} or "all"')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'global batch size')
_STEPS = flags.DEFINE_integer('steps', 10, 'timed steps (median reported)')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype')
_IMPLS = flags.DEFINE_list('impls', ['auto', 'xla'], 'conv impls to compare; the first is qprune')
_JSON = flags.DEFINE_bool('json', False, 'print one JSON object as the last line')

_SHAPES = {'lenet5': (28, 28, 1)}


def time_train_step(name: str, batch_size: int, n_steps: int, conv_impl: str, dtype) -> dict:
  shape = _SHAPES.get(name, (32, 32, 3))
  model = models.create_model(name, 10, dtype=dtype, conv_impl=conv_impl)
  variables = models.init_variables(model, jax.random.PRNGKey(0), shape)
  mesh = parallel.make_mesh()
  n = batch_size * 2
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (n, *shape), np.uint8), parallel.replicated(mesh))
  labels = jax.device_put(rng.integers(0, 10, (n,), np.int32), parallel.replicated(mesh))
  options = loop.TrainOptions(epochs=1, batch_size=batch_size)
  tx = loop.make_optimizer(options, n)
  state = jax.device_put(create_state(variables, tx), parallel.replicated(mesh))
  augment = pipeline.AUGMENTATIONS['crop_flip' if shape[-1] == 3 else 'none']
  step = steps.make_train_step(model, tx, batch_size, augment, batch_sharding=parallel.batch_sharded(mesh))
  key, perm, metrics = jax.random.PRNGKey(0), jnp.arange(n), steps.zero_metrics()
  times = []
  for i in range(n_steps + 2):
    start = time.perf_counter()
    state, metrics = step(state, images, labels, perm, jnp.int32(i % 2), key, {}, metrics)
    jax.block_until_ready(state)
    if i >= 2:  # the first call compiles, the second settles caches
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  macs = models.count_macs(model, variables, shape)
  return {'images_per_s': batch_size / step_s, 'step_s': step_s,
          'gflops_per_s': 6 * macs * batch_size / step_s / 1e9, 'macs': macs}


def benchmark(name: str) -> dict:
  dtype = jnp.bfloat16 if _DTYPE.value == 'bfloat16' else jnp.float32
  results = {impl: time_train_step(name, _BATCH.value, _STEPS.value, impl, dtype)
             for impl in _IMPLS.value}
  main, plain = results[_IMPLS.value[0]], results[_IMPLS.value[-1]]
  return {'model': name, 'batch_size': _BATCH.value, 'dtype': _DTYPE.value,
          'backend': jax.default_backend(), 'devices': jax.device_count(),
          'images_per_s': main['images_per_s'], 'gflops_per_s': main['gflops_per_s'],
          'plain_images_per_s': plain['images_per_s'], 'plain_gflops_per_s': plain['gflops_per_s'],
          'speedup': main['images_per_s'] / plain['images_per_s'], 'macs_per_image': main['macs']}


def main(argv):
  del argv
  names = sorted(models.MODELS) if _MODEL.value == 'all' else [_MODEL.value]
  rows = []
  print(f'{"model":10s} {"batch":>5s} {"qprune img/s":>13s} {"GFLOP/s":>8s} '
        f'{"plain img/s":>12s} {"GFLOP/s":>8s} {"speedup":>8s}')
  for name in names:
    r = benchmark(name)
    rows.append(r)
    print(f'{name:10s} {r["batch_size"]:5d} {r["images_per_s"]:13.1f} {r["gflops_per_s"]:8.1f} '
          f'{r["plain_images_per_s"]:12.1f} {r["plain_gflops_per_s"]:8.1f} {r["speedup"]:8.2f}x',
          flush=True)
  if _JSON.value:
    print(json.dumps({**rows[0], 'rows': rows}))


if __name__ == '__main__':
  app.run(main)
