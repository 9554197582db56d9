"""Per-layer power-of-two target sets from 1-D k-means on log2|w| (clustered targets).

For every layer l and every k in 1..k_max, Lloyd's k-means clusters the layer's log2 magnitudes
`x = log2|w|` into k clusters; the centers, rounded to integers and de-duplicated, are the layer's
exponents, so its values are {0, ±2^e}. Everything (all layers, all k) runs in ONE compiled call:

* Layers are flattened, padded and stacked: x [L, N]. Layers are split into at most
  `max_groups` groups of similar size (least padding), one vmapped computation per group inside
  the same compiled call, so small layers are not padded to the largest one. Zeros, and weights
  smaller than `max|w|·2^-log2_range` (negligible; also avoids float32 denormals whose log2 is
  -inf) are excluded from clustering; they become the zero code through the quantizer.
* Each row is sorted once (on CPU by numpy through a callback: XLA's CPU sort took ~70% of the
  time; same sorted rows). In 1-D, with sorted centers, each cluster is a contiguous run of the
  sorted data between the midpoints of adjacent centers, so one Lloyd step is k binary searches
  plus prefix-sum differences: O(k log N) instead of O(k N). Rows are centered (mean subtracted)
  before the prefix sum to keep float32 differences accurate.
* Initialisation (deterministic, all k at once): each row's value range is cut into `num_bins`
  equal bins, and dynamic programming finds the exact k-means optimum among partitions whose cuts
  lie on bin edges (D_j[i] = min_m D_{j-1}[m] + SSE(bins m..i-1), O(k_max·B²) per layer, exact
  cluster sums from the prefix sums; all layers in one scan, a few layers at a time so their
  tables stay in cache, only the triangle m < i computed). Lloyd's iterations then polish the
  split on the raw values. Lloyd never increases the SSE, so the result is at least as good as
  the best bin-aligned partition (the global optimum whenever no two values that the optimum
  separates share a bin, e.g. on every small test case), and it is a Lloyd fixed point.
* Centers are padded to k_max; the k of a lane only masks which centers are live. `jax.vmap`
  runs all (layer, k) lanes together; a `lax.while_loop` iterates until the largest center
  shift of every lane is below `tol` (in log2 units) or `max_iter`.
* A layer with fewer distinct values than k gets empty clusters (dropped) or duplicate rounded
  centers (de-duplicated), so its set has fewer than k exponents. An all-zero layer gets none.

Adaptive k (all on host from the [L, k_max] table of candidate sets and errors, no recompiles):
fixed k; the smallest k whose relative L1 error Σ|W−Ŵ|/Σ|W| (the L1 error normalised by the layer's
L1 norm, so one tolerance fits every layer) is <= tol; or a global average bit budget per weight,
spent greedily on the upgrade with the largest L1 error reduction per extra bit.
"""
import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qprune.quant import targets as targets_lib

_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


class Clusters(NamedTuple):
  """k-means results of L layers for every k = 1..K (index k-1), padded to K centers.

  centers:   [L, K, K] float32 log2-space centers (sorted; lanes beyond k are padding).
  sizes:     [L, K, K] int32 points per cluster.
  exponents: [L, K, K] int32 rounded, de-duplicated, ascending exponents, compacted to the front.
  valid:     [L, K, K] bool, which `exponents` entries are real.
  """
  centers: jax.Array
  sizes: jax.Array
  exponents: jax.Array
  valid: jax.Array


# ---------------------------------------------------------------------------------------------
# Data preparation.

def length_groups(layers: Sequence[jax.Array], max_groups: int) -> list:
  """Layer indices split into <= max_groups groups of similar size, minimising the padded total
  Σ_group len(group)·max size (exact DP over the size-sorted layers; runs at trace time)."""
  sizes = [int(np.prod(w.shape)) for w in layers]
  order = sorted(range(len(sizes)), key=sizes.__getitem__)
  sorted_sizes = [sizes[i] for i in order]
  n, inf = len(order), float('inf')
  # cost[g][i]: best padded total of the i smallest layers in g groups; cut[g][i]: last group start.
  cost = [[0.0] + [inf] * n] + [[inf] * (n + 1) for _ in range(max_groups)]
  cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
  for g in range(1, max_groups + 1):
    for i in range(1, n + 1):
      for j in range(i):
        c = cost[g - 1][j] + (i - j) * sorted_sizes[i - 1]
        if c < cost[g][i]:
          cost[g][i], cut[g][i] = c, j
  g = min(range(1, max_groups + 1), key=lambda g: cost[g][n])
  groups, i = [], n
  while i > 0:
    groups.append(order[cut[g][i]:i])
    i, g = cut[g][i], g - 1
  return [grp for grp in groups[::-1] if grp]


def _sort_rows(x: jax.Array) -> jax.Array:
  """Sorts each row of x ascending. XLA's CPU sort is a generic comparator sort, ~40x slower than
  numpy's vectorised one (most of `cluster_all`'s time on ResNet-56 went into it), so on CPU the
  rows go to numpy through a callback. Rows hold only finite values and +inf (no NaN, no -0.0),
  so every sort returns the same array: the results do not depend on the platform."""
  def numpy_sort(rows):
    return jax.pure_callback(lambda a: np.sort(np.asarray(a), axis=-1),
                             jax.ShapeDtypeStruct(rows.shape, rows.dtype), rows)
  return jax.lax.platform_dependent(x, cpu=numpy_sort, default=lambda r: jnp.sort(r, axis=-1))


def _padded_log2_rows(layers: Sequence[jax.Array], log2_range: float):
  """Stack layers as sorted log2|w| rows [L, N] (+inf padded) and their valid counts [L]."""
  length = max(int(np.prod(w.shape)) for w in layers)
  rows = []
  for w in layers:  # over layers at trace time, not over weights
    a = jnp.abs(jnp.asarray(w, jnp.float32).reshape(-1))
    floor = jnp.maximum(jnp.max(a) * 2.0 ** -log2_range, _FLOAT32_TINY)
    x = jnp.where(a >= floor, jnp.log2(jnp.maximum(a, _FLOAT32_TINY)), jnp.inf)
    rows.append(jnp.pad(x, (0, length - x.shape[0]), constant_values=jnp.inf))
  x = _sort_rows(jnp.stack(rows))
  return x, jnp.sum(jnp.isfinite(x), axis=1).astype(jnp.int32)


def _centered_prefix_sums(sorted_x: jax.Array, count: jax.Array):
  """(mean, prefix [N+1], prefix_sq [N+1]): running Σ(x − mean) and Σ(x − mean)² of valid x."""
  valid = jnp.arange(sorted_x.shape[0]) < count
  finite = jnp.where(valid, sorted_x, 0.0)
  mean = jnp.sum(finite) / jnp.maximum(count, 1)
  centered = jnp.where(valid, finite - mean, 0.0)
  zero = jnp.zeros((1,), jnp.float32)
  return (mean, jnp.concatenate([zero, jnp.cumsum(centered)]),
          jnp.concatenate([zero, jnp.cumsum(centered * centered)]))


# ---------------------------------------------------------------------------------------------
# Initialisation: exact k-means over bin-aligned partitions (dynamic programming).

def _bin_edges(sorted_x, count, num_bins: int):
  """[B+1] positions in sorted_x of B equal-width bins spanning [min, max] of the valid values."""
  lo = sorted_x[0]
  hi = sorted_x[jnp.maximum(count - 1, 0)]
  edges = lo + (hi - lo) * jnp.arange(1, num_bins, dtype=jnp.float32) / num_bins
  inner = jnp.minimum(jnp.searchsorted(sorted_x, edges, side='left'), count).astype(jnp.int32)
  return jnp.concatenate([jnp.zeros((1,), jnp.int32), inner, count[None]])


def _run_costs(positions, prefix, prefix_sq):
  """C [B+1, B+1]: SSE of one cluster holding bins m..i-1 (C[m, i], inf unless m < i)."""
  n = (positions[None, :] - positions[:, None]).astype(jnp.float32)
  s = prefix[positions][None, :] - prefix[positions][:, None]
  q = prefix_sq[positions][None, :] - prefix_sq[positions][:, None]
  cost = jnp.maximum(q - s * s / jnp.maximum(n, 1.0), 0.0)
  m, i = jnp.indices(n.shape)
  return jnp.where(m < i, cost, jnp.inf)


_DP_LAYERS_PER_BATCH = 14  # [B+1, B+1] f32 tables of 14 layers (3.7 MB) stay in cache


def _first_argmin(total):
  """(min over axis -2, the smallest index attaining it) of total [..., M, I]. XLA's argmin on
  CPU is a slow two-operand reduction; two plain min reductions over the same floats give the
  same index (ties to the smallest, an all-inf column to 0)."""
  low = jnp.min(total, axis=-2)
  iota = jnp.arange(total.shape[-2], dtype=jnp.int32)[:, None]
  return low, jnp.min(jnp.where(total == low[..., None, :], iota, total.shape[-2]), axis=-2)


def _best_starts_one(costs, k_max: int):
  """A [K, B+1]: A[j-1, i] = first bin of cluster j in the best j-cluster split of bins [0, i).

  D_1[i] = C[0, i];  D_j[i] = min_m D_{j-1}[m] + C[m, i]  (Bellman, O(K·B²) for all k at once).
  C[m, i] is inf unless m < i, so the columns i < h only need the rows m < h: the table is cut
  into a left block [:h, :h] and a right one [:, h:], a quarter less work (more blocks cost more
  ops than they save). Cluster K only ever ends at bin B (the top cluster of the k = K split), so
  its step computes that one column; its other entries are never read.
  """
  n = costs.shape[-1]
  h = (n + 1) // 2
  left, right = costs[:h, :h], costs[:, h:]

  def add_cluster(best, _):
    low_left, arg_left = _first_argmin(best[:h, None] + left)
    low_right, arg_right = _first_argmin(best[:, None] + right)
    return (jnp.concatenate([low_left, low_right]), jnp.concatenate([arg_left, arg_right]))

  first = jnp.zeros((1, n), jnp.int32)
  if k_max == 1:
    return first
  best, starts = jax.lax.scan(add_cluster, costs[0], None, length=k_max - 2)
  _, top = _first_argmin(best[:, None] + costs[:, -1:])
  return jnp.concatenate([first, starts, jnp.broadcast_to(top, (1, n))])


def _best_starts(costs, k_max: int):
  """`_best_starts_one` of every layer: costs [L, B+1, B+1] -> [L, K, B+1]. Vmapped over all
  layers each step streams every table through memory; a few layers at a time the tables stay in
  cache across the K steps (2.5x faster on ResNet-56)."""
  return jax.lax.map(lambda c: _best_starts_one(c, k_max), costs,
                     batch_size=min(_DP_LAYERS_PER_BATCH, costs.shape[0]))


def _dp_centers(sorted_x, count, k, starts, positions, prefix, mean):
  """Centers [K] of the best bin-aligned k-cluster split; clusters >= k and empty ones sit on the
  next data value, so centers stay sorted."""
  k_max, num_bins = starts.shape[0], starts.shape[1] - 1

  def peel(end, j):  # j = K..1: cluster j spans bins [start, end)
    active = j <= k
    start = jnp.where(active, starts[j - 1, end], end)
    return start, (start, end)

  _, (lo, hi) = jax.lax.scan(peel, jnp.int32(num_bins), jnp.arange(k_max, 0, -1))
  lo, hi = positions[lo[::-1]], positions[hi[::-1]]
  sizes = hi - lo
  means = (prefix[hi] - prefix[lo]) / jnp.maximum(sizes, 1) + mean
  next_value = sorted_x[jnp.clip(lo, 0, jnp.maximum(count - 1, 0))]
  return jnp.where(count > 0, jnp.where(sizes > 0, means, next_value), 0.0)


# ---------------------------------------------------------------------------------------------
# Lloyd polish on the raw sorted data.

def _cluster_bounds(sorted_x, count, k, centers):
  """[K+1] run boundaries: cluster c owns sorted_x[b[c]:b[c+1]]; clusters >= k are empty."""
  k_max = centers.shape[0]
  mids = 0.5 * (centers[:-1] + centers[1:])
  inner = jnp.minimum(jnp.searchsorted(sorted_x, mids, side='left'), count)
  inner = jnp.where(jnp.arange(1, k_max) < k, inner, count)
  return jnp.concatenate([jnp.zeros((1,), jnp.int32), inner.astype(jnp.int32), count[None]])


def _lloyd_step(sorted_x, prefix, count, k, centers_centered, mean):
  """One Lloyd step in centered coordinates: returns (new centers, cluster sizes)."""
  bounds = _cluster_bounds(sorted_x, count, k, centers_centered + mean)
  lo, hi = bounds[:-1], bounds[1:]
  sizes = hi - lo
  sums = prefix[hi] - prefix[lo]
  new = jnp.where(sizes > 0, sums / jnp.maximum(sizes, 1), centers_centered)  # empty: stay
  return new, sizes


def _lloyd(sorted_x, prefix, count, k, init, mean, max_iter: int, tol: float):
  """Lloyd iterations from `init` until the largest center shift <= tol: (centers, sizes)."""
  def keep_going(state):
    _, shift, it = state
    return (shift > tol) & (it < max_iter)

  def body(state):
    centers, _, it = state
    new, _ = _lloyd_step(sorted_x, prefix, count, k, centers, mean)
    return new, jnp.max(jnp.abs(new - centers)), it + 1

  centers, _, _ = jax.lax.while_loop(keep_going, body, (init - mean, jnp.inf, 0))
  _, sizes = _lloyd_step(sorted_x, prefix, count, k, centers, mean)  # sizes of the final centers
  return centers + mean, sizes


def _rounded_unique_exponents(centers, sizes, k):
  """Round live, non-empty centers; sort, de-duplicate, compact to the front.

  Returns ([K] int, [K] bool)."""
  k_max = centers.shape[0]
  big = targets_lib.MAX_EXPONENT + 1
  live = (jnp.arange(k_max) < k) & (sizes > 0)
  e = jnp.clip(jnp.round(centers), targets_lib.MIN_EXPONENT, targets_lib.MAX_EXPONENT)
  e = jnp.sort(jnp.where(live, e.astype(jnp.int32), big))
  first = jnp.concatenate([jnp.ones((1,), bool), e[1:] != e[:-1]])
  keep = (e < big) & first
  e = jnp.sort(jnp.where(keep, e, big))  # compact survivors to the front, still ascending
  valid = e < big
  return jnp.where(valid, e, 0), valid


def _initial_centers_by_group(rows, k_max: int, num_bins: int):
  """Per group of `rows` [(sorted_x, counts)]: (DP initial centers [G, K, K] for k = 1..K, means
  [G], centered prefix sums [G, N+1]). The DP of every layer runs in one batched scan: its
  [B+1, B+1] tables have the same shape in every group, and a scan step costs the same few ops
  whatever the batch, so one scan instead of one per group saves per-op overhead."""
  stats = []
  for sorted_x, counts in rows:
    mean, prefix, prefix_sq = jax.vmap(_centered_prefix_sums)(sorted_x, counts)
    positions = jax.vmap(functools.partial(_bin_edges, num_bins=num_bins))(sorted_x, counts)
    stats.append((mean, prefix, positions, jax.vmap(_run_costs)(positions, prefix, prefix_sq)))
  starts = _best_starts(jnp.concatenate([costs for *_, costs in stats]), k_max)
  splits = np.cumsum([len(mean) for mean, *_ in stats])[:-1]
  out = []
  for (sorted_x, counts), (mean, prefix, positions, _), group_starts in zip(
      rows, stats, jnp.split(starts, splits)):
    def row_centers(x, count, row_starts, row_positions, row_prefix, row_mean):
      return jax.vmap(lambda k: _dp_centers(x, count, k, row_starts, row_positions, row_prefix,
                                            row_mean))(jnp.arange(1, k_max + 1))
    inits = jax.vmap(row_centers)(sorted_x, counts, group_starts, positions, prefix, mean)
    out.append((inits, mean, prefix))
  return out


def _grouped_rows(layers: Sequence[jax.Array], log2_range: float, max_groups: int):
  """(groups of layer indices, [(sorted_x [G, N_g], counts [G])] per group). Padding every layer
  to the longest one would waste most of the work on small layers; each group costs one more copy
  of the computation to compile, hence few groups."""
  groups = length_groups(layers, max_groups)
  return groups, [_padded_log2_rows([layers[i] for i in group], log2_range) for group in groups]


def _in_layer_order(groups, outputs):
  """Per-group outputs (pytrees of [G, ...]) concatenated back into the order of the layers."""
  inverse = np.argsort(np.asarray([i for group in groups for i in group]))
  return jax.tree.map(lambda *xs: jnp.concatenate(xs)[inverse], *outputs)


def _cluster_row_all_k(sorted_x, count, inits, mean, prefix, max_iter, tol):
  """Lloyd from the initial centers for all k = 1..K of one row: stacked Clusters fields [K, K]."""
  def one_k(k, init):
    centers, sizes = _lloyd(sorted_x, prefix, count, k, init, mean, max_iter, tol)
    e, valid = _rounded_unique_exponents(centers, sizes, k)
    return centers, sizes, e, valid
  return jax.vmap(one_k)(jnp.arange(1, inits.shape[0] + 1), inits)


@functools.partial(jax.jit, static_argnames=('k_max', 'max_iter', 'tol', 'log2_range', 'num_bins',
                                             'max_groups'))
def cluster_all(layers: Sequence[jax.Array], k_max: int = 8, max_iter: int = 100,
                tol: float = 1e-4, log2_range: float = 24.0, num_bins: int = 256,
                max_groups: int = 3) -> Clusters:
  """k-means on log2|w| of every layer (a list of arrays, any shapes) for every k = 1..k_max.

  One compiled call per (layer shapes, k_max); see the module docstring for the method.
  Returns `Clusters` with leading axis = layer order of `layers`.
  """
  groups, rows = _grouped_rows(list(layers), log2_range, max_groups)
  starts = _initial_centers_by_group(rows, k_max, num_bins)
  per_row = functools.partial(_cluster_row_all_k, max_iter=max_iter, tol=tol)
  outputs = [jax.vmap(per_row)(x, c, *init) for (x, c), init in zip(rows, starts)]
  return Clusters(*_in_layer_order(groups, outputs))


@functools.partial(jax.jit, static_argnames=('k_max', 'log2_range', 'num_bins', 'max_groups'))
def initial_centers(layers: Sequence[jax.Array], k_max: int = 8, log2_range: float = 24.0,
                    num_bins: int = 256, max_groups: int = 3) -> jax.Array:
  """[L, K, K] the deterministic DP initial centers `cluster_all` starts Lloyd from (for k at
  index k-1 (its first k entries are live)); e.g. to give another k-means the same start."""
  groups, rows = _grouped_rows(list(layers), log2_range, max_groups)
  starts = _initial_centers_by_group(rows, k_max, num_bins)
  return _in_layer_order(groups, [inits for inits, _, _ in starts])


# ---------------------------------------------------------------------------------------------
# Errors of the candidate sets.

@functools.partial(jax.jit, static_argnames=('zero',))
def candidate_errors(layers: Sequence[jax.Array], exponents: jax.Array, valid: jax.Array,
                     zero: bool = True):
  """L1 errors Σ|W − Ŵ| of quantizing each layer with each candidate set (zero=False: the sets
  are zero-free, `targets.quantize`).

  layers: list of L arrays; exponents/valid: [L, C, n] candidate sets (C candidates per layer).
  Returns (errors [L, C], l1_norms [L]) with l1_norms = Σ|W| per layer.
  """
  errors, norms = [], []
  for w, e, v in zip(layers, exponents, valid):  # over layers at trace time
    flat = jnp.asarray(w, jnp.float32).reshape(-1)
    quantize_with = lambda e_c, v_c, flat=flat: targets_lib.l1_error(
        flat, targets_lib.quantize(flat, e_c, v_c, zero))
    errors.append(jax.vmap(quantize_with)(e, v))
    norms.append(jnp.sum(jnp.abs(flat)))
  return jnp.stack(errors), jnp.stack(norms)


# ---------------------------------------------------------------------------------------------
# Host-side selection of k.

class CandidateTable(NamedTuple):
  """Per layer, the candidate sets for k = 1..K and their cost/error (host numpy / lists).

  names: layer names; sets[l][k-1]: exponent tuple; bits [L, K]; errors [L, K] (Σ|W−Ŵ|);
  l1_norms [L] (Σ|W|); num_weights [L].
  """
  names: tuple[str, ...]
  sets: tuple[tuple[tuple[int, ...], ...], ...]
  bits: np.ndarray
  errors: np.ndarray
  l1_norms: np.ndarray
  num_weights: np.ndarray

  @property
  def relative_errors(self) -> np.ndarray:
    return self.errors / np.where(self.l1_norms > 0, self.l1_norms, 1.0)[:, None]


def exponent_sets(exponents: jax.Array, valid: jax.Array):
  """Padded [..., n] exponents + mask -> nested lists of int tuples (host side, outside jit)."""
  e, v = np.asarray(exponents), np.asarray(valid)
  if e.ndim == 1:
    return tuple(int(x) for x in e[v])
  return [exponent_sets(e_i, v_i) for e_i, v_i in zip(e, v)]


def score_candidates(names: Sequence[str], arrays: Sequence[jax.Array], exponents: jax.Array,
                     valid: jax.Array, zero: bool = True) -> CandidateTable:
  """The table of padded candidate sets [L, K, K] (row k-1 of layer l: its k-set), scored."""
  errors, norms = candidate_errors(list(arrays), exponents, valid, zero)
  sets = exponent_sets(exponents, valid)
  bits = targets_lib.bits_per_weight_array(jnp.sum(valid, axis=-1), zero)
  return CandidateTable(names=tuple(names),
                        sets=tuple(tuple(tuple(s) for s in row) for row in sets),
                        bits=np.asarray(bits), errors=np.asarray(errors, np.float64),
                        l1_norms=np.asarray(norms, np.float64),
                        num_weights=np.array([int(np.prod(a.shape)) for a in arrays]))


def candidate_table(layers: Mapping[str, jax.Array], k_max: int = 8, **kmeans_options
                    ) -> CandidateTable:
  """Clusters every layer for k = 1..k_max (one compiled call) and scores every candidate."""
  names = tuple(layers)
  arrays = [layers[n] for n in names]
  clusters = cluster_all(arrays, k_max=k_max, **kmeans_options)
  return score_candidates(names, arrays, clusters.exponents, clusters.valid)


def select_fixed_k(table: CandidateTable, k: int) -> dict:
  """Every layer uses its k-cluster set (k clipped to 1..K)."""
  index = min(max(int(k), 1), table.bits.shape[1]) - 1
  return {name: table.sets[ln][index] for ln, name in enumerate(table.names)}


def select_by_tolerance(table: CandidateTable, tolerance: float) -> dict:
  """Per layer the smallest k with Σ|W−Ŵ|/Σ|W| <= tolerance (the largest k if none is)."""
  ok = table.relative_errors <= tolerance
  index = np.where(ok.any(axis=1), ok.argmax(axis=1), ok.shape[1] - 1)
  return {name: table.sets[ln][index[ln]] for ln, name in enumerate(table.names)}


def select_by_bit_budget(table: CandidateTable, bits_per_weight: float) -> dict:
  """Greedy: spend Σ_l n_l·bits_l <= budget·Σ_l n_l on the largest error drop per extra bit.

  Each layer starts at its cheapest candidate (k = 1); an upgrade moves a layer to any candidate
  with more bits and less error; the upgrade with the best (error drop) / (extra bits · n_l)
  that still fits is applied until none fits. Never exceeds the budget unless even the cheapest
  choice does (then every layer keeps its cheapest candidate).
  """
  n = table.num_weights.astype(np.float64)
  budget = float(bits_per_weight) * n.sum()
  choice = [0] * len(table.names)
  spent = float(np.sum(n * table.bits[:, 0]))
  while True:
    best = None
    for ln in range(len(choice)):  # over layers and candidates, not weights
      b0, e0 = table.bits[ln, choice[ln]], table.errors[ln, choice[ln]]
      for c in range(table.bits.shape[1]):
        extra = (table.bits[ln, c] - b0) * n[ln]
        gain = e0 - table.errors[ln, c]
        if extra > 0 and gain > 0 and spent + extra <= budget:
          ratio = gain / extra
          if best is None or ratio > best[0]:
            best = (ratio, ln, c, extra)
    if best is None:
      break
    _, ln, c, extra = best
    choice[ln], spent = c, spent + extra
  return {name: table.sets[ln][choice[ln]] for ln, name in enumerate(table.names)}


def check_choice(*, k=None, tolerance=None, bits_per_weight=None, k_max=None) -> None:
  """TargetsError unless exactly one of k (an integer >= 1), tolerance (>= 0) or bits_per_weight
  (> 0) is given, and k_max is an integer >= 1."""
  chosen = [x is not None for x in (k, tolerance, bits_per_weight)]
  if sum(chosen) != 1:
    raise targets_lib.TargetsError('give exactly one of k, tolerance, bits_per_weight')
  if k is not None and (not targets_lib._is_integer(k) or int(k) < 1):  # pylint: disable=protected-access
    raise targets_lib.TargetsError(f'k is the number of exponents per layer, an integer >= 1; '
                                   f'got {k!r}')
  if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 <= tolerance
                                    < float('inf')):
    raise targets_lib.TargetsError(f'tolerance is a relative L1 error >= 0, got {tolerance!r}')
  if bits_per_weight is not None and not (isinstance(bits_per_weight, (int, float)) and
                                          0 < bits_per_weight < float('inf')):
    raise targets_lib.TargetsError(f'bits_per_weight is an average bit budget > 0, got '
                                   f'{bits_per_weight!r}')
  if k_max is not None and (not targets_lib._is_integer(k_max) or int(k_max) < 1):  # pylint: disable=protected-access
    raise targets_lib.TargetsError(f'k_max must be an integer >= 1, got {k_max!r}')


def select_targets(table: CandidateTable, *, k: int | None = None,
                   tolerance: float | None = None,
                   bits_per_weight: float | None = None) -> dict:
  """One set per layer from `table`: exactly one of a fixed k, an L1 tolerance, a bit budget."""
  check_choice(k=k, tolerance=tolerance, bits_per_weight=bits_per_weight)
  if k is not None:
    return select_fixed_k(table, k)
  if tolerance is not None:
    return select_by_tolerance(table, tolerance)
  assert bits_per_weight is not None  # check_choice: exactly one of the three is set
  return select_by_bit_budget(table, bits_per_weight)


def kmeans_targets(layers: Mapping[str, jax.Array], *, k: int | None = None,
                   tolerance: float | None = None, bits_per_weight: float | None = None,
                   k_max: int = 8, **kmeans_options) -> dict:
  """Clustered target sets {layer: exponents}: exactly one of k, tolerance, bits_per_weight.

  layers: {name: weights}, e.g. `quantizable_layers(params)`. TargetsError for empty layers or
  a bad choice (k < 1, a negative tolerance, ...)."""
  targets_lib.check_layers(layers)
  check_choice(k=k, tolerance=tolerance, bits_per_weight=bits_per_weight, k_max=k_max)
  table = candidate_table(layers, k_max=max(k_max, k or 1), **kmeans_options)
  return select_targets(table, k=k, tolerance=tolerance, bits_per_weight=bits_per_weight)
