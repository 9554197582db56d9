"""INQ rule, eq. 3.1 quantizer thresholds, eq. 3.2 error, bits per weight, leaf selection."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune.models import create_model
from qprune.quant import targets


def random_params(name, input_shape, seed=0):
  """Random params of a zoo model from its shapes only (eval_shape: no slow compiled init)."""
  model = create_model(name, 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape),
                                                                            jnp.uint8)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes['params'])


@pytest.mark.parametrize('max_abs, bits, expected', [
    # 4·0.75/3 = 1 -> n1 = 0; 5 bits: 2^4/2 = 8 exponents, n2 = -7.
    (0.75, 5, tuple(range(-7, 1))),
    # 4·0.7/3 = 0.933 -> n1 = -1; 3 bits: 2 exponents.
    (0.7, 3, (-2, -1)),
    # 4·0.3/3 = 0.4 -> n1 = -2; 2 bits: one exponent.
    (0.3, 2, (-2,)),
    # 4·1.5/3 = 2 -> n1 = 1; 4 bits: 4 exponents.
    (1.5, 4, (-2, -1, 0, 1)),
    (0.0, 4, ()),
])
def test_inq_exponents_hand_cases(max_abs, bits, expected):
  assert targets.inq_exponents(max_abs, bits) == expected


def test_inq_rule_bits_match_bit_width():
  for b in range(2, 9):
    assert targets.bits_per_weight(len(targets.inq_exponents(0.37, b))) == b


def test_inq_rule_needs_two_bits():
  with pytest.raises(ValueError):
    targets.inq_exponents(1.0, 1)


def test_bits_per_weight():
  # codes = 2n + 1: n=0 -> 1 code, 0 bits; 1 -> 3 codes, 2 bits; 2 -> 5, 3; 4 -> 9, 4; 8 -> 17, 5.
  expected = {0: 0, 1: 2, 2: 3, 3: 3, 4: 4, 7: 4, 8: 5, 15: 5, 16: 6}
  for n, b in expected.items():
    assert targets.bits_per_weight(n) == b
  np.testing.assert_array_equal(targets.bits_per_weight_array(jnp.array(list(expected))),
                                list(expected.values()))


class QuantizerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_thresholds(self):
    # Set {0, ±1/4, ±1, ±2}: thresholds 1/8, 5/8, 3/2; ties go up; above the largest clip to 2.
    w = jnp.array([0.0, 0.1249, 0.125, 0.3, 0.6249, 0.625, 1.0, 1.4999, 1.5, 2.9, 3.0, 100.0])
    expected = jnp.array([0.0, 0.0, 0.25, 0.25, 0.25, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    quantize = self.variant(targets.quantize)
    chex.assert_trees_all_equal(quantize(w, jnp.array([-2, 0, 1])), expected)
    chex.assert_trees_all_equal(quantize(-w, jnp.array([-2, 0, 1])), -expected)

  @chex.variants(with_jit=True, without_jit=True)
  def test_padding_and_duplicates_do_not_change_result(self):
    w = jax.random.normal(jax.random.PRNGKey(0), (50,))
    quantize = self.variant(targets.quantize)
    plain = quantize(w, jnp.array([-3, -1]))
    padded = quantize(w, jnp.array([-1, 7, -3, -3]), jnp.array([True, False, True, True]))
    chex.assert_trees_all_equal(plain, padded)

  def test_values_in_set_are_fixed_points(self):
    values = jnp.ldexp(1.0, jnp.arange(-20, 5)).astype(jnp.float32)
    w = jnp.concatenate([values, -values, jnp.zeros(1)])
    chex.assert_trees_all_equal(targets.quantize(w, jnp.arange(-20, 5)), w)

  def test_empty_set_maps_everything_to_zero(self):
    chex.assert_trees_all_equal(
        targets.quantize(jnp.array([1.0, -3.0]), jnp.zeros((0,), jnp.int32)), jnp.zeros(2))


def test_l1_error_hand_case():
  w = jnp.array([0.3, -0.9, 0.05])
  w_hat = targets.quantize(w, [-2, 0])  # -> 0.25, -1, 0
  np.testing.assert_allclose(targets.l1_error(w, w_hat), 0.05 + 0.1 + 0.05, rtol=1e-6)
  np.testing.assert_allclose(targets.relative_l1_error(w, w_hat), 0.2 / 1.25, rtol=1e-6)
  assert float(targets.relative_l1_error(jnp.zeros(3), jnp.zeros(3))) == 0.0


def test_quantizable_layers_selects_kernels_only():
  params = random_params('resnet20', (32, 32, 3))
  layers = targets.quantizable_layers(params)
  assert 'stem_conv' in layers and 'stage1_block1/conv1' in layers and 'fc' in layers
  assert len(layers) == 19 + 1  # 19 convs + fc
  assert all(w.ndim in (2, 4) for w in layers.values())


def test_quantize_params_puts_every_weight_in_its_set_and_leaves_floats():
  params = random_params('lenet5', (28, 28, 1))
  layers = targets.quantizable_layers(params)
  sets = targets.inq_targets(layers, bits=4)
  quantized = targets.quantize_params(params, sets)
  for name, w in targets.quantizable_layers(quantized).items():
    assert bool(jnp.all(targets.in_target_set(w, sets[name]))), name
  chex.assert_trees_all_equal(quantized['fc1']['bias'], params['fc1']['bias'])
  chex.assert_trees_all_equal(quantized['bn1'], params['bn1'])
