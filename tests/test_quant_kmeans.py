"""Jitted 1-D k-means on log2|w|: brute-force optimum, edge cases, compile-once, adaptive k."""
import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune.quant import kmeans, targets


def weights_with_log2(values, seed=0):
  """Weights whose log2 magnitudes are exactly `values`, with random signs."""
  signs = np.random.default_rng(seed).choice([-1.0, 1.0], len(values))
  return jnp.asarray(signs * np.exp2(np.asarray(values, np.float64)), jnp.float32)


def brute_force_kmeans(x, k):
  """Optimal 1-D k-means SSE by enumerating every split of the sorted values into k runs."""
  x = np.sort(np.asarray(x, np.float64))
  best = np.inf
  for cuts in itertools.combinations(range(1, len(x)), k - 1):
    runs = np.split(x, cuts)
    best = min(best, sum(((r - r.mean()) ** 2).sum() for r in runs))
  return best


def sse(x, centers):
  x = np.asarray(x, np.float64)[:, None]
  return float(np.min((x - np.asarray(centers, np.float64)[None]) ** 2, axis=1).sum())


CASES = [
    [-6.0, -5.8, -5.5, -3.0, -2.9, -1.0, -0.9, -0.8],
    [-10.0, -4.0, -4.1, -4.2, -4.3, -3.9, -1.5],
    [-2.0, -2.0, -2.0, -7.0, -7.5, -3.3, -3.1, -12.0, -11.5],
]


@pytest.mark.parametrize('values', CASES)
def test_matches_brute_force_on_separated_data(values):
  clusters = kmeans.cluster_all([weights_with_log2(values)], k_max=4)
  for k in range(1, 5):
    centers = np.asarray(clusters.centers[0, k - 1, :k])
    np.testing.assert_allclose(sse(values, centers), brute_force_kmeans(values, k), rtol=1e-5,
                               atol=1e-6, err_msg=f'k={k}')


def test_never_beats_brute_force_and_is_a_lloyd_fixed_point_on_random_data():
  rng = np.random.default_rng(0)
  layers = [weights_with_log2(rng.normal(-4, 2, size=9), seed=i) for i in range(6)]
  clusters = kmeans.cluster_all(layers, k_max=4)
  optimal = 0
  for ln, w in enumerate(layers):
    x = np.log2(np.abs(np.asarray(w, np.float64)))
    for k in range(1, 5):
      centers = np.asarray(clusters.centers[ln, k - 1, :k], np.float64)
      best = brute_force_kmeans(x, k)
      assert sse(x, centers) >= best - 1e-5
      optimal += np.isclose(sse(x, centers), best, rtol=1e-5)
      # Fixed point: each non-empty center is the mean of the points nearest to it.
      owner = np.argmin(np.abs(x[:, None] - centers[None]), axis=1)
      for c in np.unique(owner):
        np.testing.assert_allclose(centers[c], x[owner == c].mean(), atol=1e-5)
  assert optimal == 6 * 4  # the DP initialisation finds the global optimum here


def test_exponents_are_rounded_unique_sorted_centers():
  values = [-6.0, -5.8, -5.5, -3.0, -2.9, -1.0, -0.9, -0.8]
  clusters = kmeans.cluster_all([weights_with_log2(values)], k_max=3)
  sets = kmeans.exponent_sets(clusters.exponents, clusters.valid)[0]
  # k=2: {-6, -5.8, -5.5} -> mean -5.77 -> -6;  {-3 .. -0.8} -> mean -1.72 -> -2.
  assert sets == [(-3,), (-6, -2), (-6, -3, -1)]


def test_zeros_tiny_weights_and_few_distinct_values():
  # Only two distinct magnitudes (plus zeros, a denormal and a negligible weight).
  w = jnp.array([0.25, -0.25, 0.25, 2.0, -2.0, 0.0, 0.0, 1e-42, 2.0 ** -40], jnp.float32)
  clusters = kmeans.cluster_all([w], k_max=5)
  sets = kmeans.exponent_sets(clusters.exponents, clusters.valid)[0]
  assert sets[0] == (-1,)  # k=1: mean of log2 values (-2, -2, -2, 1, 1) = -0.8 -> -1
  assert all(s == (-2, 1) for s in sets[1:])  # k > distinct values: no spurious exponents
  assert int(clusters.sizes[0, 4].sum()) == 5  # zeros and negligible weights excluded


def test_all_zero_layer_gets_empty_set():
  clusters = kmeans.cluster_all([jnp.zeros((4, 4)), jnp.ones((3,))], k_max=3)
  sets = kmeans.exponent_sets(clusters.exponents, clusters.valid)
  assert sets[0] == [(), (), ()]
  assert sets[1] == [(0,), (0,), (0,)]


def test_jit_compiles_once_for_all_layers_and_k(caplog):
  rng = np.random.default_rng(1)
  shapes = [(3, 3, 2, 5), (3, 3, 5, 5), (17, 3), (11,)]
  make = lambda: [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  with caplog.at_level(logging.WARNING), jax.log_compiles():
    kmeans.cluster_all(make(), k_max=6)
    kmeans.cluster_all(make(), k_max=6)  # new values, same shapes: no recompile
  compiles = [r for r in caplog.records if 'Compiling jit(cluster_all)' in r.getMessage()]
  assert len(compiles) == 1


def test_candidate_errors_match_direct_quantization():
  rng = np.random.default_rng(2)
  layers = {'a': jnp.asarray(rng.normal(0, 0.1, (6, 7)), jnp.float32),
            'b': jnp.asarray(rng.normal(0, 0.5, (20,)), jnp.float32)}
  table = kmeans.candidate_table(layers, k_max=3)
  for ln, name in enumerate(table.names):
    for k in range(1, 4):
      direct = targets.l1_error(layers[name], targets.quantize(layers[name], table.sets[ln][k - 1]))
      np.testing.assert_allclose(table.errors[ln, k - 1], direct, rtol=1e-6)
      assert table.bits[ln, k - 1] == targets.bits_per_weight(len(table.sets[ln][k - 1]))


def make_table(errors, bits, num_weights):
  errors, bits = np.asarray(errors, float), np.asarray(bits)
  sets = tuple(tuple(tuple(range(b)) for b in row) for row in bits)  # placeholder sets
  return kmeans.CandidateTable(names=tuple(f'l{i}' for i in range(len(bits))), sets=sets,
                               bits=bits, errors=errors, l1_norms=np.full(len(bits), 10.0),
                               num_weights=np.asarray(num_weights))


def test_select_fixed_k_and_tolerance():
  table = make_table(errors=[[5.0, 2.0, 0.5], [1.0, 0.9, 0.8]], bits=[[2, 3, 3], [2, 3, 3]],
                     num_weights=[10, 10])
  assert kmeans.select_fixed_k(table, 2) == {'l0': table.sets[0][1], 'l1': table.sets[1][1]}
  # relative errors: l0 .5 .2 .05; l1 .1 .09 .08
  chosen = kmeans.select_by_tolerance(table, 0.1)
  assert chosen == {'l0': table.sets[0][2], 'l1': table.sets[1][0]}
  chosen = kmeans.select_by_tolerance(table, 0.01)  # none within: largest k
  assert chosen == {'l0': table.sets[0][2], 'l1': table.sets[1][2]}


def test_select_by_bit_budget_greedy():
  # l0 (100 weights): 2 bits err 10, 3 bits err 2, 4 bits err 1.9
  # l1 (100 weights): 2 bits err 4,  3 bits err 3.5, 4 bits err 3.4
  table = make_table(errors=[[10.0, 2.0, 1.9], [4.0, 3.5, 3.4]], bits=[[2, 3, 4], [2, 3, 4]],
                     num_weights=[100, 100])
  assert kmeans.select_by_bit_budget(table, 2.0) == {'l0': table.sets[0][0], 'l1': table.sets[1][0]}
  # 2.5 bits average = 500 bits: one upgrade of one layer by one bit: l0 gains most.
  assert kmeans.select_by_bit_budget(table, 2.5) == {'l0': table.sets[0][1], 'l1': table.sets[1][0]}
  # 3 bits: l0 -> 3 bits (gain 8/100), then l1 -> 3 (0.5/100) beats l0 -> 4 (0.1/100).
  assert kmeans.select_by_bit_budget(table, 3.0) == {'l0': table.sets[0][1], 'l1': table.sets[1][1]}


def test_kmeans_targets_end_to_end():
  rng = np.random.default_rng(3)
  layers = {'conv': jnp.asarray(rng.normal(0, 0.1, (3, 3, 4, 8)), jnp.float32),
            'fc': jnp.asarray(rng.normal(0, 0.05, (32, 10)), jnp.float32)}
  fixed = kmeans.kmeans_targets(layers, k=2)
  assert all(1 <= len(s) <= 2 for s in fixed.values())
  tight = kmeans.kmeans_targets(layers, tolerance=0.0)
  loose = kmeans.kmeans_targets(layers, tolerance=10.0)
  assert all(len(loose[n]) == 1 and len(tight[n]) >= len(loose[n]) for n in layers)
  budget = kmeans.kmeans_targets(layers, bits_per_weight=3.0)
  n = {k: v.size for k, v in layers.items()}
  spent = sum(targets.bits_per_weight(len(budget[k])) * n[k] for k in layers)
  assert spent <= 3.0 * sum(n.values())
  with pytest.raises(ValueError):
    kmeans.kmeans_targets(layers, k=2, tolerance=0.1)


def reference_layers():
  """Seeded layers of varied sizes and shapes (normal, Laplace, two scales, sparse, heavy tails)."""
  rng = np.random.default_rng(16)
  w = [rng.normal(0, 0.1, (3, 3, 3, 16)),
       rng.laplace(0, 0.02, (3, 3, 16, 32)),
       np.concatenate([rng.normal(0, 0.3, 500), rng.normal(0, 0.003, 1500)]),
       rng.normal(0, 0.05, (64, 10)) * (rng.random((64, 10)) > 0.4),
       rng.standard_t(2, (7,)),
       rng.normal(0, 0.02, (3, 3, 32, 64))]
  return [jnp.asarray(a, jnp.float32) for a in w]


# The sets the implementation before the speed-up (XLA sort, per-row argmin DP; commit f6a7078)
# chose for reference_layers(), k = 1..8: committed results depend on them not changing.
REFERENCE_SETS = [
    [(-4,), (-6, -3), (-8, -5, -3), (-9, -6, -4, -3), (-9, -6, -5, -4, -3),
     (-9, -7, -5, -4, -3, -2), (-13, -9, -6, -5, -4, -3, -2),
     (-13, -9, -7, -6, -5, -4, -3, -2)],
    [(-6,), (-9, -6), (-10, -7, -5), (-11, -8, -6, -5), (-12, -9, -7, -6, -4),
     (-13, -10, -8, -7, -6, -4), (-13, -10, -9, -7, -6, -5, -4),
     (-14, -11, -9, -8, -7, -6, -5, -4)],
    [(-8,), (-9, -3), (-11, -9, -2), (-13, -10, -8, -2), (-13, -10, -8, -4, -2),
     (-15, -12, -10, -8, -4, -2), (-15, -12, -10, -9, -8, -4, -2),
     (-15, -12, -10, -9, -8, -5, -3, -1)],
    [(-5,), (-7, -4), (-8, -6, -4), (-9, -7, -5, -4), (-11, -8, -6, -5, -4),
     (-12, -9, -7, -6, -4), (-12, -9, -7, -6, -5, -4, -3), (-12, -9, -7, -6, -5, -4, -3)],
    [(-2,), (-8, -1), (-8, -3, 0), (-8, -3, -1, 1), (-8, -3, -1, 0, 1), (-8, -3, -2, -1, 0, 1),
     (-8, -3, -2, -1, 0, 1), (-8, -3, -2, -1, 0, 1)],
    [(-7,), (-9, -6), (-10, -7, -5), (-11, -8, -7, -5), (-12, -9, -7, -6, -5),
     (-13, -10, -8, -7, -6, -5), (-13, -11, -9, -8, -7, -6, -5), (-14, -11, -9, -8, -7, -6, -5)],
]


def test_same_sets_as_before_the_speed_up():
  clusters = kmeans.cluster_all(reference_layers(), k_max=8)
  assert kmeans.exponent_sets(clusters.exponents, clusters.valid) == REFERENCE_SETS


def reference_best_starts(costs, k_max):
  """The DP as it was: vmapped over layers, full table, jnp.argmin."""
  def one(c):
    def add_cluster(best, _):
      total = best[:, None] + c
      return jnp.min(total, axis=0), jnp.argmin(total, axis=0).astype(jnp.int32)
    _, starts = jax.lax.scan(add_cluster, c[0], None, length=k_max - 1)
    return jnp.concatenate([jnp.zeros((1, c.shape[0]), jnp.int32), starts])
  return jax.vmap(one)(costs)


@pytest.mark.parametrize('layers,bins', [(3, 8), (17, 9), (30, 16)])
def test_best_starts_match_plain_argmin_dp_with_ties(layers, bins):
  # Coarse values make many exact ties (empty bins repeat positions, so ties are the rule).
  rng = np.random.default_rng(layers)
  costs = np.round(rng.exponential(1.0, (layers, bins + 1, bins + 1)) * 2) / 2
  m, i = np.indices(costs.shape[1:])
  costs = jnp.asarray(np.where(m < i, costs, np.inf), jnp.float32)
  for k_max in (1, 2, 5):
    new, old = kmeans._best_starts(costs, k_max), reference_best_starts(costs, k_max)
    np.testing.assert_array_equal(new[:, :-1], old[:, :-1])
    # Cluster K's row is only read at its last entry (the top cluster of the K split).
    np.testing.assert_array_equal(new[:, -1, -1], old[:, -1, -1])
