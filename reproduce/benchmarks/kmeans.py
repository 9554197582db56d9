"""Benchmark: clustered target selection for k = 1..k_max on every layer of a CIFAR ResNet.

    python -m reproduce.benchmarks.kmeans [--model=resnet56] [--k_max=8] [--nosklearn]

qprune: ONE jitted call (`qprune.quant.kmeans.cluster_all`) clusters log2|w| of all layers for all
k; timed warm (compile excluded, `block_until_ready`), median of --repeats runs.
Weights: Kaiming-normal (std = sqrt(2 / fan_in)) for every conv and dense kernel, numpy seed 0,
shapes from the zoo model (`jax.eval_shape`, no training).

Quality, per k:
* against the exact optimum of the same objective, 1-D k-means (least Σ (x − center)² over the
  same log2 values x; `kmeans1d`, an O(k·n) exact solver, from .[bench], or a small exact dynamic
  program here for layers of <= 2000 values without it): the fraction of layers whose exponent set
  (rounded, de-duplicated centers) equals the exact one, and the relative SSE gap
  SSE(qprune) / SSE(exact) − 1 (mean and max over layers);
* as context, the quantity that matters after quantization, the L1 weight error Σ|W − Ŵ| relative
  to the error-optimal sets of `quant.method=optimal` (`qprune.quant.optimal`).

scikit-learn (.[bench]): per layer and per k, (a) a default `KMeans(n_clusters=k, random_state=0)`
fit (k-means++ init) and (b) a same-init fit `KMeans(init=qprune's DP initial centers, n_init=1,
algorithm='lloyd', max_iter=100)`, rounding/de-duplication included. Its thread pools are pinned
to one thread (threadpoolctl, and OMP_NUM_THREADS=1 before it is imported): thread pools fighting
over a loaded machine's cores made the ratio swing 6x-60x. --sklearn_repeats runs of each; every
run is paired with a qprune timing right after it, the speedup is the median per-pair ratio.
The last printed line is one JSON object (qprune_s, sklearn_*_s, speedups, per-k quality, ...).
"""
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qprune.models import create_model
from qprune.quant import kmeans, optimal, targets

_LOG2_RANGE = 24.0  # same exclusion of negligible weights as cluster_all's default
_PAIRED_REPEATS = 7  # qprune calls (median) timed after each sklearn run
_SMALL_EXACT = 2000  # without kmeans1d, the O(k·n²) exact program runs on layers up to this size


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
  """(median seconds, Clusters) of the warm jitted call."""
  return _time_warm(lambda: kmeans.cluster_all(arrays, k_max=k_max), repeats)


def log2_values(w) -> np.ndarray:
  """The values cluster_all clusters for one layer: log2|w| of the non-negligible weights
  (computed with the same XLA log2, as float32, in any order)."""
  a = np.abs(np.asarray(w, np.float32).reshape(-1))
  keep = (a >= a.max(initial=0.0) * 2.0 ** -_LOG2_RANGE) & (a >= np.finfo(np.float32).tiny)
  return np.asarray(jnp.log2(jnp.asarray(a[keep])))


def exponent_set(centers) -> tuple:
  """The exponent set of some centers: rounded (as jnp.round, half to even), de-duplicated."""
  return tuple(int(e) for e in np.unique(np.round(np.asarray(centers, np.float64))))


def sse(x, centers) -> float:
  """Σ min_c (x − c)² in float64."""
  x = np.sort(np.asarray(x, np.float64))
  c = np.sort(np.asarray(centers, np.float64))
  if x.size == 0 or c.size == 0:
    return 0.0
  # Nearest center by bisection on the midpoints (sorted data, O(n log k)).
  owner = np.searchsorted(0.5 * (c[1:] + c[:-1]), x)
  return float(np.sum((x - c[owner]) ** 2))


def exact_kmeans_small(x, k):
  """Exact 1-D k-means centers of x (O(k·n²) dynamic program over the sorted values; small n)."""
  x = np.sort(np.asarray(x, np.float64))
  n = x.size
  k = min(k, len(np.unique(x)))
  if k <= 1:
    return np.array([x.mean()]) if n else x
  s = np.concatenate([[0.0], np.cumsum(x)])
  q = np.concatenate([[0.0], np.cumsum(x * x)])
  lo, hi = np.triu_indices(n + 1, 1)
  cost = np.full((n + 1, n + 1), np.inf)  # cost[m, i]: SSE of x[m:i] as one cluster
  cost[lo, hi] = np.maximum(q[hi] - q[lo] - (s[hi] - s[lo]) ** 2 / (hi - lo), 0.0)
  best, starts = cost[0], []  # best[i]: least SSE of x[:i] in j clusters
  for _ in range(k - 1):
    total = best[:, None] + cost
    starts.append(np.argmin(total, axis=0))  # where cluster j + 1 starts, per end i
    best = total[starts[-1], np.arange(n + 1)]
  bounds = [n]
  for start in starts[::-1]:  # clusters k, k-1, ..., 2
    bounds.append(start[bounds[-1]])
  bounds = [0] + bounds[::-1]
  return np.array([x[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:]) if b > a])


def exact_kmeans(x, k):
  """Exact 1-D k-means centers of the non-empty clusters (kmeans1d, or the small program)."""
  try:
    import kmeans1d  # benchmark-only extra
  except ImportError:
    if x.size > _SMALL_EXACT:
      return None
    return exact_kmeans_small(x, k)
  x = np.asarray(x, np.float64)
  if x.size == 0:
    return x
  clustered = kmeans1d.cluster(x, k)
  used = np.unique(clustered.clusters)
  return np.asarray(clustered.centroids, np.float64)[used]


def exact_quality(layers, clusters, k_max):
  """Per k: qprune's sets vs the exact 1-D k-means optimum, and L1 error vs the optimal sets."""
  centers, sizes = np.asarray(clusters.centers), np.asarray(clusters.sizes)
  ours = kmeans.exponent_sets(clusters.exponents, clusters.valid)
  values = [log2_values(w) for w in layers.values()]
  per_k, start = [], time.perf_counter()
  exact_sets = {}
  for k in range(1, k_max + 1):
    equal, gaps = [], []
    for ln, x in enumerate(values):
      best = exact_kmeans(x, k)
      if best is None:
        continue
      exact_sets[ln, k] = exponent_set(best)
      live = centers[ln, k - 1, :k][sizes[ln, k - 1, :k] > 0]
      equal.append(ours[ln][k - 1] == exact_sets[ln, k])
      exact_sse = sse(x, best)
      gaps.append(sse(x, live) / exact_sse - 1.0 if exact_sse > 0 else 0.0)
    per_k.append({'k': k, 'layers_checked': len(equal),
                  'equal_to_exact': float(np.mean(equal)) if equal else None,
                  'sse_gap_mean': float(np.mean(gaps)) if gaps else None,
                  'sse_gap_max': float(np.max(gaps)) if gaps else None})
  exact_s = time.perf_counter() - start
  optimal_table = optimal.optimal_table(layers, k_max=k_max)
  clustered = kmeans.candidate_table(layers, k_max=k_max)
  l1_ratio = clustered.errors / np.maximum(optimal_table.errors, 1e-30)
  for row, ratios in zip(per_k, l1_ratio.T):
    row.update(l1_over_optimal_mean=float(ratios.mean()), l1_over_optimal_max=float(ratios.max()))
  checked = [r['equal_to_exact'] * r['layers_checked'] for r in per_k if r['layers_checked']]
  total = sum(r['layers_checked'] for r in per_k)
  return {'exact_solver': _exact_solver_name(), 'exact_s': exact_s,
          'equal_to_exact': sum(checked) / total if total else None, 'per_k': per_k}


def _exact_solver_name():
  try:
    import kmeans1d  # noqa: F401  (benchmark-only extra)
    return 'kmeans1d'
  except ImportError:
    return f'dp (layers <= {_SMALL_EXACT} values)'


def sklearn_sets(arrays, inits, k_max, same_init: bool):
  """scikit-learn's per-layer, per-k fits: exponent sets [L][k-1]."""
  from sklearn.cluster import KMeans  # benchmark-only extra
  out = []
  for w, init in zip(arrays, inits):
    x = log2_values(w).reshape(-1, 1)
    row = []
    for k in range(1, k_max + 1):
      if same_init:
        model = KMeans(n_clusters=k, init=init[k - 1, :k].reshape(-1, 1), n_init=1,
                       algorithm='lloyd', max_iter=100)
      else:
        model = KMeans(n_clusters=k, random_state=0)
      fit = model.fit(x)
      used = np.unique(fit.labels_)
      row.append(exponent_set(fit.cluster_centers_[used, 0]))
    out.append(row)
  return out


def time_sklearn(arrays, inits, k_max, repeats, same_init):
  """(median seconds, sets) with scikit-learn's thread pools pinned to one thread."""
  os.environ.setdefault('OMP_NUM_THREADS', '1')  # before sklearn's first import
  from threadpoolctl import threadpool_limits  # benchmark-only extra (a scikit-learn dependency)
  times = []
  with threadpool_limits(limits=1):
    sklearn_sets(arrays[:1], inits[:1], 1, same_init)  # untimed: imports and first-call set-up
    for _ in range(repeats):
      start = time.perf_counter()
      sets = sklearn_sets(arrays, inits, k_max, same_init)
      times.append(time.perf_counter() - start)
  return statistics.median(times), sets


def run(layers: dict, k_max: int, repeats: int, sklearn_repeats: int, use_sklearn: bool) -> dict:
  """The benchmark on {name: kernel}: timings and quality (see the module docstring)."""
  arrays = [jnp.asarray(a) for a in layers.values()]
  qprune_s, clusters = time_qprune(arrays, k_max, repeats)
  result = {'layers': len(arrays), 'weights': int(sum(a.size for a in arrays)), 'k_max': k_max,
            'device': jax.devices()[0].platform, 'qprune_s': qprune_s,
            'qprune_repeats': repeats, **exact_quality(layers, clusters, k_max)}
  if use_sklearn:
    ours = kmeans.exponent_sets(clusters.exponents, clusters.valid)
    inits = np.asarray(kmeans.initial_centers(arrays, k_max=k_max))
    for name, same_init in (('same_init', True), ('default', False)):
      # Each sklearn run is paired with a qprune timing taken right after it, and the speedup is
      # the median of the per-pair ratios: the machine's load drifts over the minute this takes,
      # and a ratio of two medians taken at different times drifts with it.
      seconds, ratios = [], []
      for _ in range(sklearn_repeats):
        fit_s, theirs = time_sklearn(list(layers.values()), inits, k_max, 1, same_init)
        ours_s, _ = time_qprune(arrays, k_max, _PAIRED_REPEATS)
        seconds.append(fit_s)
        ratios.append(fit_s / ours_s)
      pairs = [(a, b) for row_a, row_b in zip(ours, theirs) for a, b in zip(row_a, row_b)]
      result.update({f'sklearn_{name}_s': statistics.median(seconds),
                     f'speedup_{name}': statistics.median(ratios),
                     f'speedup_{name}_runs': ratios,
                     f'sklearn_{name}_same_sets': sum(a == b for a, b in pairs) / len(pairs)})
    result['sklearn_repeats'] = sklearn_repeats
    result['sklearn_threads'] = 1
  return result


def print_table(result: dict) -> None:
  print(f'{result["layers"]} layers, {result["weights"]} weights, k = 1..{result["k_max"]}: '
        f'qprune {result["qprune_s"] * 1e3:.1f} ms (one jitted call, warm median of '
        f'{result["qprune_repeats"]})')
  print(f'exact 1-D k-means: {result["exact_solver"]} ({result["exact_s"]:.2f} s, untimed '
        f'reference); qprune set == exact set in {result["equal_to_exact"]:.1%} of (layer, k)')
  print('  k  layers  set==exact  SSE gap mean  SSE gap max  L1/optimal mean  L1/optimal max')
  for r in result['per_k']:
    if r['layers_checked']:
      print(f'{r["k"]:3d} {r["layers_checked"]:7d} {r["equal_to_exact"]:11.1%} '
            f'{r["sse_gap_mean"]:13.2e} {r["sse_gap_max"]:12.2e} '
            f'{r["l1_over_optimal_mean"]:16.3f} {r["l1_over_optimal_max"]:15.3f}')
  for name in ('same_init', 'default'):
    if f'sklearn_{name}_s' in result:
      print(f'sklearn {name:9s} (1 thread, median of {result["sklearn_repeats"]}): '
            f'{result[f"sklearn_{name}_s"] * 1e3:9.1f} ms, qprune '
            f'{result[f"speedup_{name}"]:.1f}x faster (median paired ratio); same sets as '
            f'qprune: {result[f"sklearn_{name}_same_sets"]:.1%}')


def define_flags() -> None:
  """The command-line flags, defined only when run as a script: importing the module (tests) must
  not clash with the other benchmarks' flags of the same names."""
  flags.DEFINE_string('model', 'resnet56', 'zoo model whose layers are clustered')
  flags.DEFINE_integer('k_max', 8, 'k = 1..k_max for every layer')
  flags.DEFINE_integer('repeats', 21, 'timed warm runs of qprune (median)')
  flags.DEFINE_integer('sklearn_repeats', 3, 'timed runs of each sklearn fit kind (median)')
  flags.DEFINE_bool('sklearn', True, 'also time scikit-learn (needs .[bench])')
  flags.DEFINE_bool('json', True, 'kept for old command lines: the JSON line is always printed')


def main(argv):
  del argv
  f = flags.FLAGS
  layers = kaiming_layers(f.model)
  result = {'model': f.model, 'init': 'kaiming_normal(seed=0)',
            **run(layers, f.k_max, f.repeats, f.sklearn_repeats, f.sklearn)}
  print_table(result)
  print(json.dumps(result))


if __name__ == '__main__':
  define_flags()
  app.run(main)
