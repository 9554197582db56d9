"""VGG's 2x2 max-pool: XLA's select-and-scatter (`nn.max_pool`) vs `ZooModel.max_pool` (the
elementwise custom VJP of `qprune.ops.pool` on CPU), on one VGG train step (forward + backward).

  python tools/vgg_pool_ab.py [--depth=11] [--batch=64] [--rounds=8]

Both variants are compiled first (excluded), then timed alternately in one process; prints whether
loss and gradients are identical and the median times' ratio (< 1: ZooModel.max_pool faster).
"""
import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qprune.models.vgg import CONFIGS, VGG


class XlaPoolVGG(VGG):
  """VGG with `nn.max_pool`, as the zoo had it before; everything else is the zoo's VGG."""

  def max_pool(self, x, window, strides=None, padding='VALID'):
    return nn.max_pool(x, window, window if strides is None else strides, padding)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--depth', type=int, default=11, choices=sorted(CONFIGS))
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=8)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (args.batch, 32, 32, 3)), jnp.uint8)
  labels = jnp.asarray(np.arange(args.batch) % 10)
  variants = {}
  for name, cls in (('nn.max_pool', XlaPoolVGG), ('ZooModel.max_pool', VGG)):
    model = cls(num_classes=10, depth=args.depth)
    variables = model.init(jax.random.PRNGKey(0), images)

    def loss(params, stats, model=model):
      logits, updates = model.apply({'params': params, 'batch_stats': stats}, images,
                                    train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates
    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    args_ = (variables['params'], variables['batch_stats'])
    variants[name] = (step, args_, jax.block_until_ready(step(*args_)))  # compiled here
  (_, _, old), (_, _, new) = variants.values()
  same = jax.tree.all(jax.tree.map(np.array_equal, old, new))
  times = {name: [] for name in variants}
  for _ in range(args.rounds):
    for name, (step, args_, _) in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(step(*args_))
      times[name].append(time.perf_counter() - start)
  medians = {name: statistics.median(t) for name, t in times.items()}
  for name, median in medians.items():
    print(f'{name:18s} {1e3 * median:8.1f} ms per step (median of {args.rounds})')
  print(f'identical loss and gradients: {same}; ratio ZooModel.max_pool / nn.max_pool: '
        f'{medians["ZooModel.max_pool"] / medians["nn.max_pool"]:.3f}')


if __name__ == '__main__':
  main()
