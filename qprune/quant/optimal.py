"""Exactly optimal power-of-two target sets: for every layer and every k, the k integer exponents
whose nearest-target quantizer (`targets.quantize`) has the smallest error.

k-means on log2|w| (`kmeans`, the clustered targets) minimizes a proxy, the squared distance in log2
space, which weighs a tiny weight's relative error as much as a large weight's; the quantity
that matters, the quantization error of the layer, Σ|W − Ŵ| (`l1`) or Σ(W − Ŵ)² (`l2`),
is dominated by the large weights. Exponents are integers, so the error-optimal set can be found
exactly instead:

* Candidates. An optimal set uses exponents in [e_lo, e_hi] with e_hi = ceil(log2 max|w|) (a
  larger top target can be lowered to 2^e_hi, still >= every weight, moving every weight it
  serves closer) and e_lo = e_hi − span + 1: weights below 2^-span of the largest are negligible
  (the same cut `kmeans` makes with log2_range). M = span candidates, magnitudes c_1 < ... < c_M.
* Decomposition. With chosen magnitudes 0 = m_0 < m_1 < ... < m_n, each weight maps to the
  nearest (ties upward, the largest clips), so the error is a sum over adjacent pairs: the pair
  (a, b) serves the weights in [a, b), those below (a + b)/2 with cost (|w| − a), the others with
  (b − |w|); the weights >= m_n cost (|w| − m_n). Every pair cost is a difference of prefix sums
  (count, Σ|w|, Σw²) of the sorted magnitudes at a, b and (a + b)/2.
* Dynamic program. D_1[j] = pair(0, c_j); D_t[j] = min_{i<j} D_{t−1}[i] + pair(c_i, c_j); the
  best n-exponent set ends at argmin_j D_n[j] + top(c_j). O(k_max·M²) per layer after one sort,
  all layers (vmapped, grouped by size like `kmeans`) and all k in one compiled call.

The optimum is exact over the candidate range, up to float32 rounding of the prefix sums (a test
compares it with brute force over every subset). Adding an exponent never increases the error,
so the k-set is the best set of at most k exponents.
"""
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qprune.quant import kmeans as kmeans_lib
from qprune.quant import targets as targets_lib

OBJECTIVES = ('l1', 'l2')


def _candidate_exponents(max_abs, span: int):
  """[M] int32 candidate exponents e_hi - M + 1 .. e_hi, e_hi = ceil(log2 max|w|)."""
  safe = jnp.maximum(max_abs, np.float32(2.0 ** targets_lib.MIN_EXPONENT))
  # frexp is exact: max = f·2^e with f in [0.5, 1), so ceil(log2 max) = e - (f == 0.5).
  mantissa, exponent = jnp.frexp(safe)
  e_hi = exponent - (mantissa == 0.5).astype(exponent.dtype)
  e = e_hi - span + 1 + jnp.arange(span, dtype=jnp.int32)
  return jnp.clip(e, targets_lib.MIN_EXPONENT, targets_lib.MAX_EXPONENT)


def _prefix_at(sorted_abs, prefix_n, prefix_s, prefix_q,
               points) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(count, Σ|w|, Σw²) of the magnitudes below each of `points` (any shape)."""
  index = jnp.searchsorted(sorted_abs, points.reshape(-1), side='left')
  take = lambda p: p[index].reshape(points.shape)
  return take(prefix_n), take(prefix_s), take(prefix_q)


def _row_optimal_sets(sorted_abs, count, k_max: int, span: int, objective: str,
                      zero_code: bool):
  """Best sets of 1..k_max exponents of one layer: (exponents [K, K], valid [K, K]).

  zero_code=False: the best zero-free sets (`targets.quantize`): every magnitude below the smallest
  chosen one goes to it, so D_1[j] is the cost of [0, c_j) at c_j instead of pair(0, c_j).

  sorted_abs: [N] ascending magnitudes, padded with +inf beyond `count`.
  """
  valid_w = jnp.arange(sorted_abs.shape[0]) < count
  finite = jnp.where(valid_w, sorted_abs, 0.0)
  zero = jnp.zeros((1,), jnp.float32)
  prefix_n = jnp.concatenate([zero, jnp.cumsum(valid_w.astype(jnp.float32))])
  prefix_s = jnp.concatenate([zero, jnp.cumsum(finite)])
  prefix_q = jnp.concatenate([zero, jnp.cumsum(finite * finite)])
  max_abs = jnp.where(count > 0, sorted_abs[jnp.maximum(count - 1, 0)], 0.0)
  exponents = _candidate_exponents(max_abs, span)
  mags = jnp.ldexp(jnp.ones((span,), jnp.float32), exponents)
  # Index 0 is the zero target, 1..M the candidates.
  values = jnp.concatenate([zero, mags])
  at = functools.partial(_prefix_at, sorted_abs, prefix_n, prefix_s, prefix_q)

  def cost_between(lo_n, lo_s, lo_q, hi_n, hi_s, hi_q, target):
    """Error of sending the magnitudes in [lo, hi) to `target`."""
    n, s, q = hi_n - lo_n, hi_s - lo_s, hi_q - lo_q
    if objective == 'l1':
      return jnp.abs(s - target * n)  # every such weight lies on one side of its target
    return q - 2.0 * target * s + target * target * n

  a, b = values[:, None], values[None, :]
  mid = 0.5 * (a + b)
  lo, md, hi = at(jnp.broadcast_to(a, mid.shape)), at(mid), at(jnp.broadcast_to(b, mid.shape))
  pair = cost_between(*lo, *md, a) + cost_between(*md, *hi, b)
  size = span + 1
  i, j = jnp.indices((size, size))
  pair = jnp.where(i < j, pair, jnp.inf)        # pair[i, j]: m_prev = values[i] < m = values[j]
  total = (prefix_n[-1], prefix_s[-1], prefix_q[-1])
  top_n, top_s, top_q = (jnp.broadcast_to(t, (size,)) for t in total)
  top = cost_between(*at(values), top_n, top_s, top_q, values)
  top = top.at[0].set(jnp.inf)                  # a set has at least one exponent

  def add_exponent(best, _):
    candidates = best[:, None] + pair
    new = jnp.min(candidates, axis=0)
    return new, (new, jnp.argmin(candidates, axis=0).astype(jnp.int32))

  if zero_code:
    first = pair[0]                                           # D_1[j] = pair(0, c_j)
  else:
    none_n, none_s, none_q = (jnp.zeros((size,), jnp.float32) for _ in range(3))
    first = cost_between(none_n, none_s, none_q, *at(values), values)  # [0, c_j) all to c_j
  first = jnp.where(jnp.arange(size) > 0, first, jnp.inf)
  _, (later, parents) = jax.lax.scan(add_exponent, first, None, length=k_max - 1)
  best = jnp.concatenate([first[None], later])  # best[t-1, j]: t exponents, the largest c_j
  # parents[t-2, j]: the exponent before c_j in the best t-exponent set ending at c_j.

  def backtrack(n):
    """Positions in `values` of the best n-exponent set, ascending in slots 0..n-1."""
    end = jnp.argmin(best[n - 1] + top).astype(jnp.int32)
    slots = jnp.zeros((k_max,), jnp.int32).at[n - 1].set(end)

    def step(carry, t):  # t = K .. 2
      current, slots = carry
      active = t <= n
      previous = parents[t - 2, current]
      slots = jnp.where(active, slots.at[t - 2].set(previous), slots)
      return (jnp.where(active, previous, current), slots), None

    (_, slots), _ = jax.lax.scan(step, (end, slots), jnp.arange(k_max, 1, -1))
    return slots

  index = jax.vmap(backtrack)(jnp.arange(1, k_max + 1))          # [K, K] positions in values
  chosen = exponents[jnp.maximum(index - 1, 0)]
  live = (jnp.arange(k_max)[None, :] < jnp.arange(1, k_max + 1)[:, None]) & (count > 0)
  # Exponents clipped at the float32 limit can repeat: keep the first of equal neighbours.
  repeated = jnp.concatenate([jnp.zeros((k_max, 1), bool), chosen[:, 1:] == chosen[:, :-1]], 1)
  live = live & ~repeated
  return jnp.where(live, chosen, 0).astype(jnp.int32), live


def _sorted_abs_rows(layers: Sequence[jax.Array]):
  """[L, N] ascending |w| rows padded with +inf, and the valid counts [L] (zeros included:
  they cost nothing with any set, so they change no decision)."""
  length = max(int(np.prod(w.shape)) for w in layers)
  rows = [jnp.pad(jnp.abs(jnp.asarray(w, jnp.float32).reshape(-1)),
                  (0, length - int(np.prod(w.shape))), constant_values=jnp.inf) for w in layers]
  x = jnp.sort(jnp.stack(rows), axis=1)
  counts = jnp.asarray([int(np.prod(w.shape)) for w in layers], jnp.int32)
  nonzero = jnp.sum(jnp.isfinite(x) & (x > 0), axis=1)
  return x, jnp.where(nonzero > 0, counts, 0)


@functools.partial(jax.jit, static_argnames=('k_max', 'span', 'objective', 'max_groups', 'zero'))
def optimal_sets(layers: Sequence[jax.Array], k_max: int = 8, span: int = 24,
                 objective: str = 'l1', max_groups: int = 3, zero: bool = True):
  """(exponents [L, K, K], valid [L, K, K]): per layer, row k-1 is the best set of k exponents
  (zero=False: of the zero-free sets, `targets.quantize`).

  One compiled call for all layers and all k (layers grouped by size, as in `kmeans`).
  """
  if objective not in OBJECTIVES:
    raise ValueError(f'objective={objective!r}: must be one of {", ".join(OBJECTIVES)}')
  layers = list(layers)
  row = functools.partial(_row_optimal_sets, k_max=k_max, span=span, objective=objective,
                          zero_code=zero)
  outputs, order = [], []
  for group in kmeans_lib.length_groups(layers, max_groups):
    x, counts = _sorted_abs_rows([layers[i] for i in group])
    outputs.append(jax.vmap(row)(x, counts))
    order += group
  inverse = np.argsort(np.asarray(order))
  return jax.tree.map(lambda *xs: jnp.concatenate(xs)[inverse], *outputs)


def optimal_table(layers: Mapping[str, jax.Array], k_max: int = 8, span: int = 24,
                  objective: str = 'l1', zero: bool = True) -> kmeans_lib.CandidateTable:
  """The optimal set of every layer for k = 1..k_max, scored like `kmeans.candidate_table` (L1)."""
  names = tuple(layers)
  arrays = [layers[n] for n in names]
  exponents, valid = optimal_sets(arrays, k_max=k_max, span=span, objective=objective, zero=zero)
  return kmeans_lib.score_candidates(names, arrays, exponents, valid, zero)


def optimal_targets(layers: Mapping[str, jax.Array], *, k: int | None = None,
                    tolerance: float | None = None, bits_per_weight: float | None = None,
                    k_max: int = 8, objective: str = 'l1', span: int = 24,
                    zero: bool = True) -> dict:
  """Error-optimal target sets {layer: exponents}: exactly one of k, tolerance, bits_per_weight
  (chosen per layer as in `kmeans.kmeans_targets`); zero=False: zero-free sets."""
  targets_lib.check_layers(layers)
  kmeans_lib.check_choice(k=k, tolerance=tolerance, bits_per_weight=bits_per_weight, k_max=k_max)
  table = optimal_table(layers, k_max=max(k_max, k or 1), span=span, objective=objective,
                        zero=zero)
  return kmeans_lib.select_targets(table, k=k, tolerance=tolerance,
                                   bits_per_weight=bits_per_weight)
