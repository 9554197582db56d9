"""Multiplication-free reference: exponent-add shifts equal float products bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qprune
from qprune import deploy, quant
from qprune.ops import conv as conv_ops


def _bits(x):
  return np.asarray(x, np.float32).view(np.uint32)


def test_shift_is_the_float_product_bit_for_bit():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(4000).astype(np.float32) * np.float32(10.0) ** rng.integers(-6, 6, 4000)
  x[:50] = 0.0
  x[50:60] = -0.0
  e = rng.integers(-30, 20, 4000).astype(np.int32)
  product = (x * np.ldexp(np.float32(1), e)).astype(np.float32)
  np.testing.assert_array_equal(_bits(deploy.shift(x, e)), _bits(product))
  assert deploy.shift_fallbacks(x, e) == 0
  edge = np.float32([2e-38, 3.0e38])  # result subnormal / overflow: the jnp.ldexp fallback
  np.testing.assert_array_equal(deploy.shift(edge, np.int32([-3, 2])),
                                jnp.ldexp(edge, np.int32([-3, 2])))
  assert deploy.shift_fallbacks(edge, np.int32([-3, 2])) == 2


def test_codes_of_power_of_two_weights():
  w = np.float32([[0.5, -0.125], [0.0, 4.0]])
  sign, exponent = deploy.power_of_two_codes(w)
  np.testing.assert_array_equal(sign, [[1, -1], [0, 1]])
  np.testing.assert_array_equal(exponent, [[-1, -3], [0, 2]])
  with pytest.raises(deploy.NotPowerOfTwoError, match='not 0 or'):
    deploy.power_of_two_codes(np.float32([0.3]))


@pytest.mark.slow
def test_layers_equal_the_multiplied_sums_exactly_and_xla_within_rounding():
  rng = np.random.default_rng(1)
  kernel = rng.standard_normal((3, 3, 4, 5)).astype(np.float32) * 0.3
  kernel = np.asarray(quant.quantize(kernel, np.int32([-4, -3, -2, -1])))
  sign, exponent = deploy.power_of_two_codes(kernel)
  x = rng.standard_normal((2, 7, 7, 4)).astype(np.float32)
  for strides, padding in (((1, 1), 'SAME'), ((2, 2), 'SAME'), ((1, 1), 'VALID')):
    ours = deploy.shift_conv(x, sign, exponent, strides, padding)
    multiplied = deploy.shift_conv(x, sign, exponent, strides, padding, multiply=True)
    np.testing.assert_array_equal(_bits(ours), _bits(multiplied))
    xla = conv_ops.conv2d(jnp.asarray(x), jnp.asarray(kernel), strides, padding, impl='xla')
    np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5)
  dense = np.asarray(quant.quantize(rng.standard_normal((6, 3)).astype(np.float32),
                                    np.int32([-2, 0])))
  s, e = deploy.power_of_two_codes(dense)
  xd = rng.standard_normal((5, 6)).astype(np.float32)
  np.testing.assert_array_equal(_bits(deploy.shift_dense(xd, s, e)),
                                _bits(deploy.shift_dense(xd, s, e, multiply=True)))
  np.testing.assert_allclose(deploy.shift_dense(xd, s, e), xd @ dense, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_kmeans_quantized_lenet5_without_weight_multiplications():
  model = qprune.create_model('lenet5', 10)
  variables = qprune.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  targets = quant.kmeans_targets(quant.quantizable_layers(variables['params']), k=3)
  quantized = {**variables, 'params': quant.quantize_params(variables['params'], targets)}
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
  ours = deploy.shift_apply(model, quantized, images)
  multiplied = deploy.shift_apply(model, quantized, images, multiply=True)
  np.testing.assert_array_equal(_bits(ours), _bits(multiplied))
  reference = model.apply(quantized, images, train=False)
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
  with pytest.raises(deploy.NotPowerOfTwoError):
    deploy.shift_apply(model, variables, images)  # unquantized weights are refused
