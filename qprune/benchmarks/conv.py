"""Per-shape conv benchmark: forward, input-grad and kernel-grad GFLOP/s, 'xla' vs 'fast'.

    python -m qprune.benchmarks.conv [--json] [--batch=128,256] [--reps=5] [--shapes=resnet20,lenet5]
    python -m qprune.benchmarks.conv --train_step [--json]   # ResNet-20 step, xla vs fast

Every variant of a shape is timed in the same process, interleaved round by round (the machine is
shared, so timings drift); each number is warm (compile excluded), block_until_ready'd, the median
over `--reps` rounds. FLOPs of each of the three ops = 2 * N * H' * W' * kh * kw * C_in * C_out.
With --json the last line is a JSON object {"rows": [...]}.
"""
import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from qprune.ops import conv as conv_ops

FLAGS = flags.FLAGS
flags.DEFINE_bool('json', False, 'Print a JSON object as the last line.')
flags.DEFINE_list('batch', ['128', '256'], 'Batch sizes for the resnet20 shapes.')
flags.DEFINE_integer('reps', 5, 'Timed rounds per variant (median reported).')
flags.DEFINE_list('shapes', ['resnet20', 'lenet5'], 'Shape groups to run.')
flags.DEFINE_bool('train_step', False, 'Instead: time a full ResNet-20 train step (batch 256, SGD '
                  'momentum, f32) with conv_impl xla vs fast, interleaved, in images/s.')

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
}
LENET_BATCH = 256


def _ops(impl, strides, padding):
  """Jitted (forward, input-grad, kernel-grad) functions of one conv impl."""
  conv = lambda x, w: conv_ops.conv2d(x, w, strides, padding, impl=impl)
  fwd = jax.jit(conv)
  dgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0])
  wgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda w_: conv(x, w_), w)[1](dy)[0])
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


def _resnet20_step(impl, batch):
  """(jitted step, state) of a ResNet-20 train step: value_and_grad of cross-entropy, SGD momentum."""
  import optax  # pylint: disable=g-import-not-at-top
  from qprune.models import create_model, init_variables  # pylint: disable=g-import-not-at-top
  model = create_model('resnet20', 10, conv_impl=impl)
  variables = init_variables(model, jax.random.key(0), (32, 32, 3))
  tx = optax.sgd(0.1, momentum=0.9)
  state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))

  def loss_fn(params, stats, images, labels):
    logits, updates = model.apply({'params': params, 'batch_stats': stats}, images, train=True,
                                  mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates['batch_stats']

  @jax.jit
  def step(state, images, labels):
    params, stats, opt = state
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, images, labels)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), stats, opt), loss

  return step, state


def train_step_main(batch=256):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, (batch,), np.int32))
  steps = {impl: _resnet20_step(impl, batch) for impl in ('xla', 'fast')}
  for step, state in steps.values():  # compile + warm up
    jax.block_until_ready(step(state, images, labels))
  times = {impl: [] for impl in steps}
  for _ in range(FLAGS.reps):
    for impl, (step, state) in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(state, images, labels))
      times[impl].append(time.perf_counter() - t0)
  ips = {impl: batch / float(np.median(t)) for impl, t in times.items()}
  print(f'ResNet-20 train step, batch {batch}, f32: xla {ips["xla"]:.1f} img/s, '
        f'fast {ips["fast"]:.1f} img/s ({ips["fast"] / ips["xla"]:.2f}x)')
  if FLAGS.json:
    print(json.dumps({'model': 'resnet20', 'batch': batch, 'xla_images_per_s': round(ips['xla'], 1),
                      'fast_images_per_s': round(ips['fast'], 1)}))


def main(argv):
  del argv
  if FLAGS.train_step:
    return train_step_main()
  jobs = []
  for group in FLAGS.shapes:
    batches = [int(b) for b in FLAGS.batch] if group == 'resnet20' else [LENET_BATCH]
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
               padding=pad, gflop=flop / 1e9, **{f'gflops_{k_}': round(v, 2) for k_, v in gf.items()},
               wgrad_speedup=round(gf['wgrad_fast'] / gf['wgrad_xla'], 2))
    rows.append(row)
    print(f'{group:9s} {name:14s} {n:4d} | {gf["fwd_xla"]:8.1f} {gf["fwd_fast"]:6.1f} | '
          f'{gf["dgrad_xla"]:9.1f} {gf["dgrad_fast"]:6.1f} | {gf["wgrad_xla"]:9.1f} '
          f'{gf["wgrad_fast"]:6.1f} {row["wgrad_speedup"]:5.1f}', flush=True)
  if FLAGS.json:
    print(json.dumps({'backend': jax.default_backend(), 'rows': rows}))


if __name__ == '__main__':
  app.run(main)
