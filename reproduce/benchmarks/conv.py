"""Per-shape conv benchmark: forward, input-grad and kernel-grad GFLOP/s, 'xla' vs 'fast'.

    python -m reproduce.benchmarks.conv [--json] [--batch=128,256] [--reps=5]
                                        [--shapes=resnet20,lenet5,vgg]

Every variant of a shape is timed in the same process, interleaved round by round (the machine is
shared, so timings drift); each number is warm (compile excluded), block_until_ready'd, the median
over `--reps` rounds. FLOPs of each of the three ops = 2 * N * H' * W' * kh * kw * C_in * C_out.
Both impls compile through `qprune.ops.compile.jit` (qprune's CPU compiler options), so the
columns isolate the conv formulation. Isolated ops do not predict the train step well here (XLA
picks other layouts when the conv's operands come from fusions): `qprune.ops.conv.fast_route` was
decided with `reproduce.benchmarks.train_step`, which also compares against plain XLA.
With --json the last line is a JSON object {"rows": [...]}.
"""
import json
import time

import jax
import numpy as np
from absl import app, flags

from qprune.ops import compile as compile_lib
from qprune.ops import conv as conv_ops

FLAGS = flags.FLAGS
flags.DEFINE_bool('json', False, 'Print a JSON object as the last line.')
flags.DEFINE_list('batch', ['128', '256'], 'Batch sizes for the resnet20 shapes.')
flags.DEFINE_integer('reps', 5, 'Timed rounds per variant (median reported).')
flags.DEFINE_list('shapes', ['resnet20', 'lenet5', 'vgg'], 'Shape groups to run.')

# (name, H, W, C_in, C_out, k, stride, padding)
SHAPES = {
    'resnet20': [
        ('stem 3->16', 32, 32, 3, 16, 3, 1, 'SAME'),
        ('s1 16->16', 32, 32, 16, 16, 3, 1, 'SAME'),
        ('s2 16->32 /2', 32, 32, 16, 32, 3, 2, 'SAME'),
        ('s2 32->32', 16, 16, 32, 32, 3, 1, 'SAME'),
        ('s3 32->64 /2', 16, 16, 32, 64, 3, 2, 'SAME'),
        ('s3 64->64', 8, 8, 64, 64, 3, 1, 'SAME'),
    ],
    'lenet5': [
        ('conv1 1->20', 28, 28, 1, 20, 5, 1, 'VALID'),
        ('conv2 20->50', 12, 12, 20, 50, 5, 1, 'VALID'),
    ],
    'vgg': [
        ('stem 3->64', 32, 32, 3, 64, 3, 1, 'SAME'),
        ('b3 256->256', 8, 8, 256, 256, 3, 1, 'SAME'),
        ('b4 512->512', 4, 4, 512, 512, 3, 1, 'SAME'),
        ('b5 512->512', 2, 2, 512, 512, 3, 1, 'SAME'),
    ],
}
GROUP_BATCH = {'lenet5': 256, 'vgg': 32}  # resnet20 uses --batch


def _ops(impl, strides, padding):
  """Jitted (forward, input-grad, kernel-grad) functions of one conv impl."""
  conv = lambda x, w: conv_ops.conv2d(x, w, strides, padding, impl=impl)
  fwd = compile_lib.jit(conv)
  dgrad = compile_lib.jit(lambda x, w, dy: jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0])
  wgrad = compile_lib.jit(lambda x, w, dy: jax.vjp(lambda w_: conv(x, w_), w)[1](dy)[0])
  return {'fwd': lambda x, w, dy: fwd(x, w), 'dgrad': dgrad, 'wgrad': wgrad}


def bench_shape(n, h, w, cin, cout, k, s, padding, reps):
  """{(impl, op): median seconds} for one conv shape; all variants interleaved per round."""
  kx, kw_, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (n, h, w, cin))
  ker = jax.random.normal(kw_, (k, k, cin, cout))
  y = conv_ops.xla_conv2d(x, ker, (s, s), padding)
  dy = jax.random.normal(kd, y.shape)
  fns = {(impl, op): f for impl in ('xla', 'fast')
         for op, f in _ops(impl, (s, s), padding).items()}
  for f in fns.values():  # compile + warm up
    jax.block_until_ready(f(x, ker, dy))
  times = {key: [] for key in fns}
  for _ in range(reps):
    for key, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(x, ker, dy))
      times[key].append(time.perf_counter() - t0)
  flop = 2 * n * y.shape[1] * y.shape[2] * k * k * cin * cout
  return flop, {key: float(np.median(t)) for key, t in times.items()}


def main(argv):
  del argv
  jobs = []
  for group in FLAGS.shapes:
    batches = [int(b) for b in FLAGS.batch] if group == 'resnet20' else [GROUP_BATCH[group]]
    jobs += [(group, n, shape) for n in batches for shape in SHAPES[group]]
  rows = []
  header = (f'{"model":9s} {"shape":14s} {"N":>4s} | {"fwd xla":>8s} {"fast":>6s} | '
            f'{"dgrad xla":>9s} {"fast":>6s} | {"wgrad xla":>9s} {"fast":>6s} {"x":>5s}   GFLOP/s')
  print(f'backend={jax.default_backend()} devices={jax.devices()}')
  print(header)
  for group, n, (name, h, w, cin, cout, k, s, pad) in jobs:
    flop, t = bench_shape(n, h, w, cin, cout, k, s, pad, FLAGS.reps)
    gf = {f'{op}_{impl}': flop / t[(impl, op)] / 1e9 for (impl, op) in t}
    row = dict(model=group, shape=name, batch=n, H=h, W=w, cin=cin, cout=cout, k=k, stride=s,
               padding=pad, gflop=flop / 1e9,
               **{f'gflops_{k_}': round(v, 2) for k_, v in gf.items()},
               wgrad_speedup=round(gf['wgrad_fast'] / gf['wgrad_xla'], 2))
    rows.append(row)
    print(f'{group:9s} {name:14s} {n:4d} | {gf["fwd_xla"]:8.1f} {gf["fwd_fast"]:6.1f} | '
          f'{gf["dgrad_xla"]:9.1f} {gf["dgrad_fast"]:6.1f} | {gf["wgrad_xla"]:9.1f} '
          f'{gf["wgrad_fast"]:6.1f} {row["wgrad_speedup"]:5.1f}', flush=True)
  if FLAGS.json:
    print(json.dumps({'backend': jax.default_backend(), 'rows': rows}))


if __name__ == '__main__':
  app.run(main)
