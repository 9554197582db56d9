"""Smoke tests: the benchmarks run on tiny inputs and emit their keys (no timing asserted)."""
import importlib.util
import itertools

import numpy as np
import pytest

from reproduce.benchmarks import kmeans as kmeans_bench
from reproduce.benchmarks import train_step


@pytest.mark.parametrize('variant', sorted(train_step.VARIANTS))
def test_train_step_worker_runs(variant):
  result = train_step._worker('lenet5', 8, 2, variant, 'float32')
  assert len(result['times']) == 2 and all(t > 0 for t in result['times'])
  assert result['macs'] == 2_293_000


def test_train_step_variants_run_in_their_own_dtype_or_the_flags():
  assert train_step.variant_dtype('qprune', 'float32') == 'float32'
  assert train_step.variant_dtype('qprune', 'bfloat16') == 'bfloat16'
  assert train_step.variant_dtype('qprune_bf16', 'float32') == 'bfloat16'
  assert all(dtype in (None, *train_step.DTYPES) for *_, dtype in train_step.VARIANTS.values())


def test_kmeans_benchmark_runs_on_tiny_layers_and_emits_its_keys():
  rng = np.random.default_rng(0)
  layers = {'a': rng.normal(0, 0.1, (3, 3, 2, 4)).astype(np.float32),
            'b': rng.normal(0, 0.3, (16, 5)).astype(np.float32)}
  use_sklearn = (importlib.util.find_spec('sklearn') is not None
                 and importlib.util.find_spec('threadpoolctl') is not None)
  result = kmeans_bench.run(layers, k_max=3, repeats=1, sklearn_repeats=1,
                            use_sklearn=use_sklearn)
  assert {'layers', 'weights', 'qprune_s', 'exact_solver', 'equal_to_exact', 'per_k'} <= set(result)
  assert [r['k'] for r in result['per_k']] == [1, 2, 3]
  for r in result['per_k']:
    assert r['layers_checked'] == 2 and 0.0 <= r['equal_to_exact'] <= 1.0
    assert r['sse_gap_mean'] >= -1e-6 and r['l1_over_optimal_mean'] >= 1.0 - 1e-6
  if use_sklearn:
    for name in ('same_init', 'default'):
      assert result[f'sklearn_{name}_s'] > 0 and result[f'speedup_{name}'] > 0


def test_kmeans_benchmark_small_exact_program_matches_brute_force():
  x = np.array([-6.0, -5.8, -5.5, -3.0, -2.9, -1.0, -0.9, -0.8, -7.5])
  for k in (1, 2, 3, 4):
    best = min(sum(((r - r.mean()) ** 2).sum() for r in np.split(np.sort(x), cuts))
               for cuts in itertools.combinations(range(1, len(x)), k - 1))
    np.testing.assert_allclose(kmeans_bench.sse(x, kmeans_bench.exact_kmeans_small(x, k)), best,
                               rtol=1e-12)
