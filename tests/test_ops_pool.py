"""qprune.ops.pool.max_pool == flax.linen.max_pool: values and gradients, jitted, ties included."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune.ops import pool

CASES = [
    # (shape, window, strides, padding, tiled): whether the custom-VJP form computes it.
    ((3, 8, 6, 5), (2, 2), (2, 2), 'VALID', True),
    ((2, 24, 24, 20), (2, 2), (2, 2), 'VALID', True),   # LeNet-5's first pooling
    ((2, 9, 9, 4), (3, 3), (3, 3), 'VALID', True),
    ((2, 6, 8, 3), (2, 4), (2, 4), 'VALID', True),      # non-square window
    ((2, 7, 8, 3), (2, 2), (2, 2), 'VALID', False),     # odd height: XLA's reduce_window
    ((2, 8, 8, 3), (3, 3), (2, 2), 'SAME', False),      # overlapping (AlexNet)
    ((2, 8, 8, 3), (2, 2), (1, 1), 'VALID', False),
]


def _input(shape, ties: bool):
  x = jax.random.normal(jax.random.key(sum(shape)), shape)
  if ties:  # ReLU'd and rounded: many windows with repeated maxima, all-zero windows too
    x = jnp.round(jnp.maximum(x, 0) * 2) / 2
  return x


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('shape,window,strides,padding,tiled', CASES)
def test_max_pool_matches_flax(shape, window, strides, padding, tiled, ties):
  assert pool.tiled(shape[1:3], window, strides, padding) == tiled
  x = _input(shape, ties)
  ref = lambda x: nn.max_pool(x, window, strides, padding)
  fast = lambda x: pool.max_pool(x, window, strides, padding, impl='fast')
  y_ref = ref(x)
  t = jax.random.normal(jax.random.key(7), y_ref.shape)
  np.testing.assert_array_equal(jax.jit(fast)(x), y_ref)
  g_ref = jax.jit(jax.grad(lambda x: jnp.sum(ref(x) * t)))(x)
  g = jax.jit(jax.grad(lambda x: jnp.sum(fast(x) * t)))(x)
  # Exactly equal: the same element of each window gets the whole gradient.
  np.testing.assert_array_equal(g, g_ref)


def test_xla_impl_is_flax():
  x = _input((2, 8, 8, 3), True)
  jaxpr = str(jax.make_jaxpr(lambda x: pool.max_pool(x, (2, 2), (2, 2), impl='xla'))(x))
  assert 'reduce_window_max' in jaxpr and 'custom_vjp' not in jaxpr


def test_bf16():
  x = _input((2, 8, 8, 4), True).astype(jnp.bfloat16)
  f = lambda impl: jax.grad(lambda x: jnp.sum(pool.max_pool(x, (2, 2), (2, 2), impl=impl)
                                              .astype(jnp.float32)))(x)
  g, g_ref = f('fast'), f('xla')
  assert g.dtype == jnp.bfloat16
  np.testing.assert_array_equal(g.astype(np.float32), g_ref.astype(np.float32))
