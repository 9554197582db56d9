"""Benchmark: scoring K candidate channel masks on ResNet-20, vmapped vs looped vs recompiled.

    python -m qprune.benchmarks.prune_search [--num_images=500] [--candidates=32] [--json]

Defaults are sized for a few minutes on 2 CPU cores; the issue's figure is --num_images=10000.

Every approach does the same work per candidate: re-estimate BatchNorm statistics on
--bn_batches x --bn_batch_size training images, then loss/accuracy on --num_images held-out
images in batches of --batch_size.
  vmap       `qprune.prune.evaluate_candidates`: ONE jitted vmap over the K stacked masks.
  loop       a Python loop over the K masks calling the same compiled single-candidate function
             (`evaluate_masks_jit`, masks as activation gates; compiled once).
  recompile  a Python loop that physically shrinks each candidate (`prune.shrink`) and evaluates
             the smaller model: a new shape, hence a new compilation, per candidate (compile
             included: that is its cost).
vmap and loop are timed warm (compile excluded, block_until_ready), median of --repeats runs;
recompile once. Compile counts are read from `jax.log_compiles`. Images are SYNTHETIC uniform
random uint8 (timing only; the scores are meaningless), weights are the model's random init, and
candidate masks are l1/random x uniform/global x ratios 0.1..0.8.
With --json the last printed line is one JSON object (vmap_s, loop_s, recompile_s, ...).
"""
import json
import logging
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qprune import prune
from qprune.models import create_model, init_variables

_NUM_IMAGES = flags.DEFINE_integer(
    'num_images', 500,
    'held-out images scored per candidate (the issue asks 10000: ~20x longer on 2 CPU cores)')
_CANDIDATES = flags.DEFINE_integer('candidates', 32, 'K candidate masks')
_MODEL = flags.DEFINE_string('model', 'resnet20', 'zoo model (CIFAR input)')
_WIDTH = flags.DEFINE_float('width', 1.0, 'width multiplier of the model')
_BATCH = flags.DEFINE_integer('batch_size', 100, 'eval images per step (vmap: K x this live)')
_BN_BATCHES = flags.DEFINE_integer('bn_batches', 2, 'training batches for BN re-estimation')
_BN_BATCH = flags.DEFINE_integer('bn_batch_size', 64, 'images per BN re-estimation batch')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'warm runs of vmap and loop (median)')
_RESIDUAL = flags.DEFINE_bool('residual', True, 'also prune the residual stream')
_JSON = flags.DEFINE_bool('json', False, 'print one JSON object as the last line')

SHAPE = (32, 32, 3)


class CompileCounter(logging.Handler):
  """Counts XLA compilations (jax.log_compiles messages) of functions named `needle`."""

  def __init__(self, needle: str):
    super().__init__()
    self.needle, self.count = needle, 0

  def emit(self, record):
    message = record.getMessage()
    if message.startswith('Compiling') and self.needle in message:
      self.count += 1


def count_compiles(needle, fn):
  """(fn(), number of compilations of `needle` while it ran)."""
  counter = CompileCounter(needle)
  logger = logging.getLogger('jax')
  logger.addHandler(counter)
  propagate, logger.propagate = logger.propagate, False  # count, do not print, the messages
  try:
    with jax.log_compiles():
      result = fn()
  finally:
    logger.removeHandler(counter)
    logger.propagate = propagate
  return result, counter.count


def synthetic_data(num_images, batch_size, bn_batches, bn_batch_size, seed=0):
  rng = np.random.default_rng(seed)
  eval_images = rng.integers(0, 256, (num_images, *SHAPE), dtype=np.uint8)
  eval_labels = rng.integers(0, 10, (num_images,), dtype=np.int32)
  bn_images = rng.integers(0, 256, (bn_batches * bn_batch_size, *SHAPE), dtype=np.uint8)
  return (prune.batched(jnp.asarray(bn_images), bn_batch_size),
          prune.batched(jnp.asarray(eval_images), batch_size),
          prune.batched(jnp.asarray(eval_labels), batch_size))


def candidate_list(k):
  per_grid = 4  # criteria x selections
  ratios = np.linspace(0.1, 0.8, max(1, -(-k // per_grid)))
  return prune.candidate_grid(['l1', 'random'], [round(float(r), 3) for r in ratios],
                              ['uniform', 'global'])[:k]


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(_):
  logging.getLogger('jax').setLevel(logging.WARNING)
  model = create_model(_MODEL.value, 10, width=_WIDTH.value)
  variables = init_variables(model, jax.random.PRNGKey(0), SHAPE)
  groups = prune.derive_groups(variables, residual=_RESIDUAL.value)
  bn, images, labels = synthetic_data(_NUM_IMAGES.value, _BATCH.value, _BN_BATCHES.value,
                                      _BN_BATCH.value)
  cands = candidate_list(_CANDIDATES.value)
  masks = prune.candidate_masks(variables, groups, cands, rng=jax.random.PRNGKey(1))
  stacked = prune.stack_masks(masks)
  k, n = len(cands), int(labels.size)
  print(f'{_MODEL.value} width {_WIDTH.value}: K={k} candidates, {n} SYNTHETIC random images '
        f'(timing only), BN re-estimated on {_BN_BATCHES.value}x{_BN_BATCH.value} images, '
        f'{len(groups)} groups, backend {jax.default_backend()}')

  vmap_fn = lambda: prune.evaluate_candidates(model, groups, variables, stacked, bn, images, labels)
  start = time.perf_counter()
  vmapped, vmap_compiles = count_compiles('evaluate_candidates',
                                          lambda: jax.block_until_ready(vmap_fn()))
  vmap_first = time.perf_counter() - start
  vmap_s = timed(vmap_fn, _REPEATS.value)

  def loop_fn():
    return [prune.evaluate_masks_jit(model, groups, variables, m, bn, images, labels)
            for m in masks]

  start = time.perf_counter()
  looped, loop_compiles = count_compiles('evaluate_masks', lambda: jax.block_until_ready(loop_fn()))
  loop_first = time.perf_counter() - start
  loop_s = timed(loop_fn, _REPEATS.value)

  def recompile_fn():
    out = []
    for m in masks:
      small, small_vars = prune.shrink(model, variables, groups, m)
      out.append(prune.evaluate_masks_jit(small, (), small_vars, None, bn, images, labels))
    return jax.block_until_ready(out)

  start = time.perf_counter()
  shrunk, recompile_compiles = count_compiles('evaluate_masks', recompile_fn)
  recompile_s = time.perf_counter() - start

  loop_acc = np.array([float(r['accuracy']) for r in looped])
  shrunk_loss = np.array([float(r['loss']) for r in shrunk])
  agree_loop = float(np.abs(np.asarray(vmapped['accuracy']) - loop_acc).max())
  agree_shrunk = float(np.abs(np.asarray(vmapped['loss']) - shrunk_loss).max())
  result = {
      'model': _MODEL.value, 'width': _WIDTH.value, 'candidates': k, 'num_images': n,
      'synthetic_images': True, 'backend': jax.default_backend(),
      'vmap_s': vmap_s, 'vmap_first_call_s': vmap_first, 'vmap_compiles': vmap_compiles,
      'loop_s': loop_s, 'loop_first_call_s': loop_first, 'loop_compiles': loop_compiles,
      'recompile_s': recompile_s, 'recompile_compiles': recompile_compiles,
      'speedup_vs_loop': loop_s / vmap_s, 'speedup_vs_recompile': recompile_s / vmap_s,
      'speedup_vs_recompile_incl_compile': recompile_s / vmap_first,
      'max_accuracy_diff_vs_loop': agree_loop, 'max_loss_diff_vs_shrunk': agree_shrunk,
  }
  print(f'vmap      {vmap_s:8.2f} s warm (first call {vmap_first:.2f} s), '
        f'{vmap_compiles} compile(s)')
  print(f'loop      {loop_s:8.2f} s warm (first call {loop_first:.2f} s), '
        f'{loop_compiles} compile(s)   loop/vmap = {loop_s / vmap_s:.2f}x')
  print(f'recompile {recompile_s:8.2f} s incl. compiles, {recompile_compiles} compile(s)   '
        f'recompile/vmap = {recompile_s / vmap_s:.2f}x (vs vmap incl. its compile: '
        f'{recompile_s / vmap_first:.2f}x)')
  print(f'agreement: max |acc vmap - loop| = {agree_loop:.2g}, '
        f'max |loss vmap - shrunk| = {agree_shrunk:.2g}')
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
