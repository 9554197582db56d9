"""Exactly optimal target sets: equal to brute force over every subset of candidate exponents."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune import quant
from qprune.quant import optimal


def _error(w, exponents, objective, zero=True):
  """Error of quantizing w with `exponents`, in float64 on host (independent of the DP)."""
  q = np.asarray(quant.quantize(jnp.asarray(w), jnp.asarray(exponents, jnp.int32), zero=zero),
                 np.float64)
  d = np.abs(np.asarray(w, np.float64) - q)
  return float(np.sum(d if objective == 'l1' else d * d))


def _brute_force(w, k, span, objective, zero=True):
  e_hi = int(np.ceil(np.log2(np.max(np.abs(w)))))
  candidates = range(e_hi - span + 1, e_hi + 1)
  return min(_error(w, s, objective, zero) for n in range(1, k + 1)
             for s in itertools.combinations(candidates, n))


@pytest.mark.slow
@pytest.mark.parametrize('zero', [True, False], ids=['zero_code', 'zero_free'])
@pytest.mark.parametrize('objective', optimal.OBJECTIVES)
@pytest.mark.parametrize('jit', [True, False])
def test_equals_brute_force(objective, jit, zero, rng):
  layers = {'a': rng.normal(0, 0.1, (3, 3, 4, 5)).astype(np.float32),
            'b': (rng.laplace(0, 0.02, (40, 7)) * rng.random((40, 7))).astype(np.float32),
            'c': np.float32([0.75, -0.5, 0.3, 0.0, 2.0e-3, -1.0])}
  span, k_max = 8, 4
  arrays = list(layers.values()) if jit else list(layers.values())[1:]  # un-jitted is slow
  if jit:
    exponents, valid = optimal.optimal_sets(arrays, k_max=k_max, span=span, objective=objective,
                                            zero=zero)
  else:
    with jax.disable_jit():
      exponents, valid = optimal.optimal_sets(arrays, k_max=k_max, span=span,
                                              objective=objective, zero=zero)
  sets = quant.exponent_sets(exponents, valid)
  for ln, w in enumerate(arrays):
    for k in range(1, k_max + 1):
      chosen = sets[ln][k - 1]
      assert 1 <= len(chosen) <= k and list(chosen) == sorted(set(chosen))
      best = _brute_force(w, k, span, objective, zero)
      assert _error(w, chosen, objective, zero) <= best * (1 + 1e-5) + 1e-9, (ln, k, chosen)


def test_hand_computed_example():
  # |w| = 1, 1, 1, 0.25: with one exponent, 2^0 costs 0.25 (0.25 -> 0); with two, {-2, 0} is exact.
  w = np.float32([1.0, -1.0, 1.0, 0.25])
  table = optimal.optimal_table({'w': w}, k_max=2, span=4)
  assert table.sets[0] == ((0,), (-2, 0))
  np.testing.assert_allclose(table.errors[0], [0.25, 0.0], atol=1e-7)


def test_zero_free_hand_computed_example():
  """|w| = 0, 0.25, 0.25, 1, 1 without a zero code: one exponent, 2^-2 costs 0.25 + 2 · 0.75 =
  1.75 (2^-1: 2.0, 2^0: 2.5, 2^-3: 2.125); two, {-2, 0} costs only the exact zero's 0.25
  ({-3, 0}: 0.375). The zero-free sets take one bit less at k=1 and k=2."""
  w = np.float32([0.0, 0.25, -0.25, -1.0, 1.0])
  table = optimal.optimal_table({'w': w}, k_max=2, span=4, zero=False)
  assert table.sets[0] == ((-2,), (-2, 0))
  np.testing.assert_allclose(table.errors[0], [1.75, 0.25], atol=1e-6)
  np.testing.assert_array_equal(table.bits[0], [1, 2])
  np.testing.assert_array_equal(optimal.optimal_table({'w': w}, k_max=2, span=4).bits[0], [2, 3])


@pytest.mark.parametrize('jit', [True, False])
def test_zero_free_quantizer(jit):
  """No zero code: every weight, an exact 0 included, lands on ±2^e (0 -> +2^e_1); thresholds
  halfway between the magnitudes as with the zero code."""
  fn = functools.partial(quant.quantize, zero=False)
  fn = jax.jit(fn) if jit else fn
  w = jnp.float32([0.0, -0.01, 0.2, -0.3, 0.5625, 0.55, 1.0, -2.0])
  np.testing.assert_array_equal(fn(w, jnp.int32([-3, 0])),
                                [0.125, -0.125, 0.125, -0.125, 1.0, 0.125, 1.0, -1.0])
  assert bool(jnp.all(quant.in_target_set(fn(w, jnp.int32([-3, 0])), (-3, 0), zero=False)))
  assert not bool(quant.in_target_set(jnp.float32([0.0]), (-3, 0), zero=False)[0])
  assert [quant.bits_per_weight(n, zero=False) for n in range(6)] == [0, 1, 2, 3, 3, 4]
  np.testing.assert_array_equal(quant.targets.bits_per_weight_array(jnp.arange(9), zero=False),
                                [quant.bits_per_weight(n, zero=False) for n in range(9)])
  with pytest.raises(ValueError, match='at least one exponent'):
    quant.quantize(w, jnp.int32([]), zero=False)


def test_zero_free_only_for_the_optimal_rule():
  layers = {'w': np.float32([0.5, -0.25, 0.26]), 'empty': np.zeros(3, np.float32)}
  for method in ('kmeans', 'inq'):
    with pytest.raises(ValueError, match="needs method 'optimal'"):
      quant.choose_targets(layers, method, zero=False)
  with pytest.raises(ValueError, match='all zero: empty'):
    quant.choose_targets(layers, 'optimal', k=2, zero=False)
  assert quant.choose_targets({'w': layers['w']}, 'optimal', k=2, zero=False)['w'] == (-2, -1)


def test_never_worse_than_kmeans_or_inq_rule(rng):
  layers = {f'l{i}': rng.standard_t(3, (200 + 50 * i,)).astype(np.float32) * 0.05
            for i in range(4)}
  opt = optimal.optimal_table(layers, k_max=5)
  km = quant.candidate_table(layers, k_max=5)
  assert np.all(opt.errors <= km.errors * (1 + 1e-5) + 1e-7)
  inq = quant.inq_targets(layers, bits=4)  # 4 exponents
  for ln, (name, w) in enumerate(layers.items()):
    assert opt.errors[ln, 3] <= _error(w, inq[name], 'l1') * (1 + 1e-5)


def test_all_zero_layer_and_adaptive_k():
  layers = {'zero': np.zeros((4, 4), np.float32),
            'w': np.float32([0.5, 0.25, 0.125, 1.0, -0.0625])}
  assert optimal.optimal_targets(layers, k=3)['zero'] == ()
  exact = optimal.optimal_targets(layers, tolerance=1e-6)
  assert exact['w'] == (-4, -3, -2, -1, 0)
  budget = optimal.optimal_targets({'w': layers['w']}, bits_per_weight=2.0)
  assert len(budget['w']) == 1


def test_bad_objective():
  with pytest.raises(ValueError, match='objective'):
    optimal.optimal_sets([np.ones(3, np.float32)], objective='l3')


def test_quantize_mode_targets_respect_exclude():
  """quant.exclude keeps named layers in float32 (no target set); an unknown name is one error."""
  from qprune import configs  # pylint: disable=g-import-not-at-top
  from qprune.modes import common, quantize  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = {name: {'kernel': rng.normal(0, 0.1, (3, 3, 2, 4)).astype(np.float32)}
            for name in ('conv1', 'conv2', 'fc')}
  qconfig = configs.quant_config()
  qconfig.method, qconfig.k, qconfig.exclude = 'optimal', 2, ('conv1', 'fc')
  targets = quantize.choose_targets(qconfig, params)
  assert set(targets) == {'conv2'}
  # The float layers count at 32 bits: conv2's 72 weights at 3 bits (k=2), 144 at 32.
  assert quantize.float_weights(params, qconfig.exclude) == 144
  rows = quant.layer_report(params, targets)
  assert quant.average_bits(rows) == 3
  assert quant.average_bits(rows, float_weights=144) == pytest.approx((72 * 3 + 144 * 32) / 216)
  qconfig.exclude = ('conv9',)
  with pytest.raises(common.RunError, match="conv9.*quantizable layers are conv1, conv2, fc"):
    quantize.choose_targets(qconfig, params)


def test_target_error_table(rng):
  """report.target_errors: per layer and k, optimal <= k-means and <= INQ's rule where b fits."""
  from reproduce import target_errors  # pylint: disable=g-import-not-at-top
  params = {'a': {'kernel': rng.normal(0, 0.1, (3, 3, 4, 8)).astype(np.float32)},
            'b': {'kernel': rng.laplace(0, 0.05, (64, 10)).astype(np.float32)}}
  rows = target_errors.layer_errors(params, ks=(1, 2, 3))
  assert [(r['layer'], r['k']) for r in rows] == [('a', 1), ('b', 1), ('a', 2), ('b', 2),
                                                  ('a', 3), ('b', 3)]
  for r in rows:
    assert r['optimal'] <= r['kmeans'] * (1 + 1e-5)
    assert (r['inq'] is None) == (r['k'] == 3)
    assert r['inq'] is None or r['optimal'] <= r['inq'] * (1 + 1e-5)
    # Zero-free at the same bits: 2 exponents in k=1's 2 bits, 4 in the 3 bits of k=2 and 3; a
    # tiny exponent stands in for zero, so it is never worse.
    assert (r['bits'], r['zero_free_k']) == {1: (2, 2), 2: (3, 4), 3: (3, 4)}[r['k']]
    assert r['zero_free'] < r['optimal']
  assert '| total | 928 | 1 |' in target_errors.markdown(rows)  # 3·3·4·8 + 64·10 weights


def test_choose_targets_dispatches_by_rule(rng):
  """quant.choose_targets: the registry the config's quant.method is checked against."""
  from qprune import quant  # pylint: disable=g-import-not-at-top
  layers = {'a': rng.normal(0, 0.1, (64, 8)).astype(np.float32)}
  assert quant.choose_targets(layers, 'optimal', k=2) == quant.optimal_targets(layers, k=2)
  assert quant.choose_targets(layers, 'kmeans', k=2) == quant.kmeans_targets(layers, k=2)
  assert quant.choose_targets(layers, 'inq', bits=3) == quant.inq_targets(layers, 3)
  budget = quant.choose_targets(layers, 'optimal', bits_budget=2.5, k=7)  # the budget wins
  assert budget == quant.optimal_targets(layers, bits_per_weight=2.5)
  with pytest.raises(ValueError, match="unknown target rule 'median'; choose one of kmeans"):
    quant.choose_targets(layers, 'median')
