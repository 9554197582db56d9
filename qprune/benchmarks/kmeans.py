"""Benchmark: clustered target selection for k = 1..k_max on every layer of a CIFAR ResNet.

    python -m qprune.benchmarks.kmeans [--model=resnet56] [--k_max=8] [--json]

qprune: ONE jitted call (`qprune.quant.kmeans.cluster_all`) clusters log2|w| of all layers for all
k; timed warm (compile excluded, `block_until_ready`), median of --repeats runs.
scikit-learn: `KMeans(n_clusters=k, n_init=1, algorithm='lloyd', max_iter=100)` fit per layer and
per k on the same log2 values, started from the same deterministic initial centers that qprune
computes (given to sklearn for free, not timed); its rounding/de-duplication is included; median of
--sklearn_repeats runs. Weights: Kaiming-normal (std = sqrt(2 / fan_in)) for every conv and dense
kernel, numpy seed 0, shapes from the zoo model (`jax.eval_shape`, no training).
Exact reference: the error-optimal sets (`qprune.quant.optimal`, one jitted call, also timed)
give the least L1 error any set of k exponents can have; reported are the fraction of (layer, k)
where k-means finds that same set and its L1 error relative to the optimum.
With --json the last printed line is one JSON object (qprune_s, sklearn_s, speedup, ...).
--nosklearn skips scikit-learn (no .[bench] needed).
"""
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qprune.models import create_model
from qprune.quant import kmeans, optimal, targets

_MODEL = flags.DEFINE_string('model', 'resnet56', 'zoo model whose layers are clustered')
_K_MAX = flags.DEFINE_integer('k_max', 8, 'k = 1..k_max for every layer')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'timed warm runs of qprune (median)')
_SKLEARN_REPEATS = flags.DEFINE_integer('sklearn_repeats', 3, 'timed runs of sklearn (median)')
_JSON = flags.DEFINE_bool('json', False, 'print one JSON object as the last line')
_SKLEARN = flags.DEFINE_bool('sklearn', True, 'also time scikit-learn (needs .[bench])')

_LOG2_RANGE = 24.0  # same exclusion of negligible weights as cluster_all's default


def kaiming_layers(model_name: str, seed: int = 0) -> dict:
  """{layer: kernel} with Kaiming-normal values for the model's quantizable kernels."""
  model = create_model(model_name, 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 32, 32, 3), jnp.uint8)))
  rng = np.random.default_rng(seed)
  layers = targets.quantizable_layers(shapes['params'])
  return {name: (rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)
          for name, s in layers.items()}


def _time_warm(fn, repeats):
  """(median seconds of warm calls, the last output); the first call compiles, untimed."""
  out = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def time_qprune(arrays, k_max, repeats):
  """(median seconds, exponent sets [L][k-1]) of the warm jitted call."""
  seconds, clusters = _time_warm(lambda: kmeans.cluster_all(arrays, k_max=k_max), repeats)
  return seconds, kmeans.exponent_sets(clusters.exponents, clusters.valid)


def exact_quality(layers, k_max, repeats):
  """Timing of the optimal sets and how close k-means comes to them (L1 error)."""
  arrays = [jnp.asarray(a) for a in layers.values()]
  optimal_s, _ = _time_warm(lambda: optimal.optimal_sets(arrays, k_max=k_max), repeats)
  exact = optimal.optimal_table(layers, k_max=k_max)
  clustered = kmeans.candidate_table(layers, k_max=k_max)
  same = np.array([[a == b for a, b in zip(ra, rb)] for ra, rb in zip(exact.sets,
                                                                      clustered.sets)])
  ratio = clustered.errors / np.maximum(exact.errors, 1e-30)
  return {'optimal_s': optimal_s, 'kmeans_equals_optimal': float(same.mean()),
          'kmeans_l1_over_optimal_median': float(np.median(ratio)),
          'kmeans_l1_over_optimal_max': float(ratio.max())}


def sklearn_sets(arrays, inits, k_max):
  """scikit-learn's per-layer, per-k fits: exponent sets [L][k-1]."""
  from sklearn.cluster import KMeans  # benchmark-only extra
  out = []
  for w, init in zip(arrays, inits):
    a = np.abs(w.reshape(-1))
    x = np.log2(a[(a >= a.max() * 2.0 ** -_LOG2_RANGE) & (a >= np.finfo(np.float32).tiny)])
    x = x.reshape(-1, 1).astype(np.float32)
    row = []
    for k in range(1, k_max + 1):
      fit = KMeans(n_clusters=k, init=init[k - 1, :k].reshape(-1, 1), n_init=1,
                   algorithm='lloyd', max_iter=100).fit(x)
      used = np.unique(fit.labels_)
      row.append(tuple(int(e) for e in np.unique(np.round(fit.cluster_centers_[used, 0]))))
    out.append(row)
  return out


def time_sklearn(arrays, inits, k_max, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sets = sklearn_sets(arrays, inits, k_max)
    times.append(time.perf_counter() - start)
  return statistics.median(times), sets


def main(argv):
  del argv
  layers = kaiming_layers(_MODEL.value)
  arrays = list(layers.values())
  k_max = _K_MAX.value
  qprune_s, ours = time_qprune([jnp.asarray(a) for a in arrays], k_max, _REPEATS.value)
  result = {
      'model': _MODEL.value, 'layers': len(arrays), 'weights': int(sum(a.size for a in arrays)),
      'k_max': k_max, 'init': 'kaiming_normal(seed=0)', 'device': jax.devices()[0].platform,
      'qprune_s': qprune_s, **exact_quality(layers, k_max, _REPEATS.value)}
  print(f'{_MODEL.value}: {result["layers"]} layers, {result["weights"]} weights, k = 1..{k_max} '
        f'({len(arrays) * k_max} clusterings)')
  print(f'qprune  (one jitted call, warm median of {_REPEATS.value}): {qprune_s * 1e3:9.1f} ms')
  print(f'optimal sets (one jitted call, warm median):  {result["optimal_s"] * 1e3:9.1f} ms; '
        f'k-means finds the optimal set in {result["kmeans_equals_optimal"]:.1%} of (layer, k), '
        f'L1 error x{result["kmeans_l1_over_optimal_median"]:.3f} of optimal (median), '
        f'x{result["kmeans_l1_over_optimal_max"]:.3f} (max)')
  if _SKLEARN.value:
    inits = np.asarray(kmeans.initial_centers([jnp.asarray(a) for a in arrays], k_max=k_max))
    sklearn_s, theirs = time_sklearn(arrays, inits, k_max, _SKLEARN_REPEATS.value)
    pairs = [(a, b) for row_a, row_b in zip(ours, theirs) for a, b in zip(row_a, row_b)]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    result.update(sklearn_s=sklearn_s, speedup=sklearn_s / qprune_s,
                  same_exponent_sets=agreement)
    print(f'sklearn (per layer and k, median of {_SKLEARN_REPEATS.value}):        '
          f'{sklearn_s * 1e3:9.1f} ms')
    print(f'speedup: {result["speedup"]:.1f}x; identical exponent sets: {agreement:.1%}')
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
