"""Benchmark: scoring K candidate channel masks on ResNet-20: vmapped, looped, recompiled, raced.

    python -m reproduce.benchmarks.prune_search [--num_images=500] [--candidates=32] [--json]
    python -m reproduce.benchmarks.prune_search --model_dir=results/cifar10_resnet20/fp \
        --data_dir=DATA --num_images=10000 --methods=recompile,race --json   # real: ~10 min

Defaults are sized for a few minutes on 2 CPU cores (synthetic images, random weights).

Every approach does the same work per candidate: re-estimate BatchNorm statistics on
--bn_batches x --bn_batch_size training images, then loss/accuracy on --num_images held-out
images in batches of --batch_size.
  vmap       `qprune.prune.evaluate_candidates`: ONE jitted vmap over the K stacked masks.
  loop       a Python loop over the K masks calling the same compiled single-candidate function
             (`evaluate_masks_jit`, masks as activation gates; compiled once).
  recompile  a Python loop that physically shrinks each candidate (`prune.shrink`) and evaluates
             the smaller model: a new shape, hence a new compilation, per candidate (compile
             included: that is its cost).
  race       `qprune.prune.race` (prune.search_method=race): successive elimination, each
             candidate dropped once the leader beats it significantly on the same images, so
             clearly worse candidates see a few batches, not all (timed from its first call,
             compiles included, and warm).
vmap and loop are timed warm (compile excluded, block_until_ready), median of --repeats runs;
recompile once. Compile counts are read from `jax.log_compiles`. Without --model_dir and
--data_dir, images are SYNTHETIC uniform random uint8 and the weights the model's random init
(timing only; the scores are meaningless, and a race on them proves nothing). With a trained
model (--model_dir, a finished run's workdir or results/ folder) and the real CIFAR-10 copy
(--data_dir), the held-out images are the first --num_images of the test split and the BN images
the first of the training split; the race's choice is then ranked under the exhaustive scores
(recompile's, else vmap's or loop's): rank 1 is the candidate exhaustive evaluation picks.
Candidate masks are l1/random x uniform/global x ratios 0.1..0.8.
With --json the last printed line is one JSON object (vmap_s, loop_s, recompile_s, race_s, ...).
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
from qprune.artifacts import load_saved_model
from qprune.models import create_model, init_variables
from qprune.models.spec import model_from_spec


def define_flags() -> None:
  """The command-line flags, defined only when run as a script: the suite imports this module's
  helpers and has flags of the same names (data_dir)."""
  flags.DEFINE_integer(
      'num_images', 500,
      'held-out images scored per candidate (the issue asks 10000: ~20x longer on 2 CPU cores)')
  flags.DEFINE_integer('candidates', 32, 'K candidate masks')
  flags.DEFINE_string('model', 'resnet20', 'zoo model (CIFAR input)')
  flags.DEFINE_float('width', 1.0, 'width multiplier of the model')
  flags.DEFINE_integer('batch_size', 100, 'eval images per step (vmap: K x this live)')
  flags.DEFINE_integer('bn_batches', 2, 'training batches for BN re-estimation')
  flags.DEFINE_integer('bn_batch_size', 64, 'images per BN re-estimation batch')
  flags.DEFINE_integer('repeats', 1, 'warm runs of vmap and loop (median)')
  flags.DEFINE_bool('residual', True, 'also prune the residual stream')
  flags.DEFINE_bool('json', False, 'print one JSON object as the last line')
  flags.DEFINE_string('model_dir', None, 'a trained run (saved model) instead of a random init; '
                      '--model and --width then come from it')
  flags.DEFINE_string('data_dir', None,
                      'real CIFAR-10 (cifar10/ or cifar10.tar.gz) instead of synthetic images')
  flags.DEFINE_list('methods', ['vmap', 'loop', 'recompile', 'race'],
                    'which of vmap, loop, recompile, race to run')


SHAPE = (32, 32, 3)
FLAGS = flags.FLAGS


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


def real_data(data_dir, num_images, batch_size, bn_batches, bn_batch_size):
  """The first num_images test images (held out) and the first training images (BN), batched
  like `synthetic_data`; the last eval batch padded and masked (`pad_to_batches`)."""
  from qprune.data import pipeline  # pylint: disable=g-import-not-at-top
  from qprune.train import evaluation  # pylint: disable=g-import-not-at-top
  data = pipeline.load_data('cifar10', data_dir, train_subset=bn_batches * bn_batch_size,
                            eval_subset=num_images)
  images, labels, valid = evaluation.pad_to_batches(data.test.images, data.test.labels,
                                                    batch_size)
  return prune.batched(data.train.images, bn_batch_size), images, labels, valid


def ranks(metrics) -> np.ndarray:
  """1-based rank of every candidate under choose_best's order (accuracy, then lower loss)."""
  order = sorted(range(len(metrics)), key=lambda k: (-metrics[k][0], metrics[k][1]))
  out = np.empty(len(order), int)
  out[order] = np.arange(1, len(order) + 1)
  return out


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
  methods = set(FLAGS.methods)
  unknown = methods - {'vmap', 'loop', 'recompile', 'race'}
  if unknown:
    raise app.UsageError(f'--methods: unknown {sorted(unknown)}; use vmap, loop, recompile, race')
  if FLAGS.model_dir:
    spec, variables = load_saved_model(FLAGS.model_dir)
    model = model_from_spec(spec)
    name = f'{FLAGS.model_dir} (trained)'
  else:
    model = create_model(FLAGS.model, 10, width=FLAGS.width)
    variables = init_variables(model, jax.random.PRNGKey(0), SHAPE)
    name = f'{FLAGS.model} width {FLAGS.width} (random init)'
  groups = prune.derive_groups(variables, residual=FLAGS.residual)
  valid = None
  if FLAGS.data_dir:
    bn, images, labels, valid = real_data(FLAGS.data_dir, FLAGS.num_images, FLAGS.batch_size,
                                          FLAGS.bn_batches, FLAGS.bn_batch_size)
    n = int(np.asarray(valid).sum())
    what = f'{n} real CIFAR-10 test images'
  else:
    bn, images, labels = synthetic_data(FLAGS.num_images, FLAGS.batch_size, FLAGS.bn_batches,
                                        FLAGS.bn_batch_size)
    n = int(labels.size)
    what = f'{n} SYNTHETIC random images (timing only)'
  cands = candidate_list(FLAGS.candidates)
  masks = prune.candidate_masks(variables, groups, cands, rng=jax.random.PRNGKey(1))
  stacked = prune.stack_masks(masks)
  k = len(cands)
  print(f'{name}: K={k} candidates, {what}, BN re-estimated on '
        f'{FLAGS.bn_batches}x{FLAGS.bn_batch_size} images, {len(groups)} groups, '
        f'backend {jax.default_backend()}')
  result = {'model': FLAGS.model_dir or FLAGS.model, 'width': FLAGS.width, 'candidates': k,
            'num_images': n, 'synthetic_images': not FLAGS.data_dir,
            'trained_model': bool(FLAGS.model_dir), 'backend': jax.default_backend()}
  exhaustive = {}  # method -> [(accuracy, loss)] per candidate

  if 'vmap' in methods:
    vmap_fn = lambda: prune.evaluate_candidates(model, groups, variables, stacked, bn, images,
                                                labels, valid)
    start = time.perf_counter()
    vmapped, compiles = count_compiles('evaluate_candidates',
                                       lambda: jax.block_until_ready(vmap_fn()))
    first = time.perf_counter() - start
    result.update(vmap_s=timed(vmap_fn, FLAGS.repeats), vmap_first_call_s=first,
                  vmap_compiles=compiles)
    exhaustive['vmap'] = list(zip(np.asarray(vmapped['accuracy']).tolist(),
                                  np.asarray(vmapped['loss']).tolist()))
    print(f'vmap      {result["vmap_s"]:8.2f} s warm (first call {first:.2f} s), '
          f'{compiles} compile(s)')

  if 'loop' in methods:
    def loop_fn():
      return [prune.evaluate_masks_jit(model, groups, variables, m, bn, images, labels, valid)
              for m in masks]

    start = time.perf_counter()
    looped, compiles = count_compiles('evaluate_masks', lambda: jax.block_until_ready(loop_fn()))
    first = time.perf_counter() - start
    result.update(loop_s=timed(loop_fn, FLAGS.repeats), loop_first_call_s=first,
                  loop_compiles=compiles)
    exhaustive['loop'] = [(float(r['accuracy']), float(r['loss'])) for r in looped]
    print(f'loop      {result["loop_s"]:8.2f} s warm (first call {first:.2f} s), '
          f'{compiles} compile(s)')

  if 'recompile' in methods:
    def recompile_fn():
      out = []
      for m in masks:
        small, small_vars = prune.shrink(model, variables, groups, m)
        out.append(prune.evaluate_masks_jit(small, (), small_vars, None, bn, images, labels,
                                            valid))
      return jax.block_until_ready(out)

    start = time.perf_counter()
    shrunk, compiles = count_compiles('evaluate_masks', recompile_fn)
    result.update(recompile_s=time.perf_counter() - start, recompile_compiles=compiles)
    exhaustive['recompile'] = [(float(r['accuracy']), float(r['loss'])) for r in shrunk]
    print(f'recompile {result["recompile_s"]:8.2f} s incl. compiles, {compiles} compile(s)')

  if 'race' in methods:
    race_fn = lambda: prune.race(model, groups, variables, masks, bn, images, labels, valid)
    start = time.perf_counter()
    (raced, best), compiles = count_compiles('_batch_outcomes', race_fn)
    first = time.perf_counter() - start
    result.update(race_first_call_s=first, race_s=timed(race_fn, FLAGS.repeats),
                  race_compiles=compiles, race_best=cands[best].description,
                  race_images_scored=int(sum(m['images'] for m in raced)),
                  race_images_fraction=sum(m['images'] for m in raced) / (k * n))
    print(f'race      {result["race_s"]:8.2f} s warm (first call {first:.2f} s, compiles '
          f'included), {compiles} compile(s) of the batch step; scored '
          f'{result["race_images_fraction"]:.1%} of the K x {n} candidate-images; chose '
          f'{cands[best].description}')
    reference = next((m for m in ('recompile', 'vmap', 'loop') if m in exhaustive), None)
    if reference:
      rank = int(ranks(exhaustive[reference])[best])
      chosen = max(range(k), key=lambda i: (exhaustive[reference][i][0],
                                            -exhaustive[reference][i][1]))
      result.update(race_rank_under_exhaustive=rank, exhaustive_best=cands[chosen].description,
                    race_same_choice=bool(chosen == best), exhaustive_reference=reference)
      print(f'          its rank under exhaustive evaluation ({reference}): {rank} of {k} '
            f'(exhaustive picks {cands[chosen].description})')

  base = result.get('recompile_s')
  for method in ('vmap', 'loop', 'race'):
    if base is not None and f'{method}_s' in result:
      result[f'speedup_{method}_vs_recompile'] = base / result[f'{method}_s']
  if base is not None and 'race_first_call_s' in result:
    result['speedup_race_incl_compile_vs_recompile'] = base / result['race_first_call_s']
  if 'vmap' in exhaustive and 'loop' in exhaustive:
    result['max_accuracy_diff_vmap_vs_loop'] = float(np.abs(
        np.array(exhaustive['vmap'])[:, 0] - np.array(exhaustive['loop'])[:, 0]).max())
  if 'vmap' in exhaustive and 'recompile' in exhaustive:
    result['max_loss_diff_vmap_vs_shrunk'] = float(np.abs(
        np.array(exhaustive['vmap'])[:, 1] - np.array(exhaustive['recompile'])[:, 1]).max())
  ratios = [f'{key[len("speedup_"):]} = {value:.2f}x' for key, value in result.items()
            if key.startswith('speedup_')]
  if ratios:
    print('speedups: ' + ', '.join(ratios))
  if FLAGS.json:
    print(json.dumps(result))


if __name__ == '__main__':
  define_flags()
  app.run(main)
