"""The 'fast' conv (custom kernel gradient) matches lax.conv_general_dilated and its autodiff."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune.ops import conv as conv_ops

CASES = [
    # (N, H, W, C_in, C_out, k, stride, padding, route): the formulation conv2d(impl='fast') picks;
    # 'vjp' is XLA's conv with the custom kernel gradient, 'patch' the im2col matmul (tiny output
    # map), 'col2im' XLA's conv with the matmul + col2im input gradient (unpadded). Every
    # formulation is checked on every case anyway.
    (2, 8, 8, 16, 16, 3, 1, 'SAME', 'vjp'),
    (3, 9, 7, 5, 7, 3, 1, 'SAME', 'vjp'),       # odd spatial, odd channels, C_in < 8
    (3, 9, 7, 9, 5, 3, 2, 'SAME', 'vjp'),       # stride 2, odd sizes -> asymmetric SAME padding
    (2, 11, 11, 3, 6, 3, 2, 'VALID', 'col2im'),
    (2, 7, 9, 10, 3, 1, 1, 'SAME', 'col2im'),      # 1x1
    (2, 9, 9, 12, 5, 1, 2, 'VALID', 'col2im'),     # 1x1 stride 2
    (2, 13, 13, 1, 4, 5, 1, 'VALID', 'col2im'),    # lenet-like 5x5, one input channel
    (2, 12, 10, 9, 4, 5, 2, 'SAME', 'vjp'),     # 5x5 stride 2
    (5, 6, 6, 8, 8, 3, 1, 'VALID', 'col2im'),
    (2, 2, 2, 8, 4, 1, 1, 'SAME', 'col2im'),       # 1x1 on a 2x2 map: no window to unroll
    (2, 2, 2, 16, 8, 3, 1, 'SAME', 'patch'),    # 2x2 map (VGG's last block)
    (2, 3, 3, 12, 6, 3, 2, 'SAME', 'patch'),    # 2x2 output, stride 2
    (2, 4, 4, 256, 8, 3, 1, 'SAME', 'vjp'),     # 4x4 map, wide contraction
    (2, 10, 11, 4, 6, 3, 1, ((2, 0), (-1, 1)), 'vjp'),  # explicit, asymmetric and negative pads
]

FORMULATIONS = {
    'routed': lambda x, w, s, pad: conv_ops.conv2d(x, w, s, pad, impl='fast'),
    'vjp': lambda x, w, s, pad: conv_ops._routed_conv(x, w, s, pad, 'vjp'),
    'patch': conv_ops.patch_matmul_conv2d,
    'col2im': lambda x, w, s, pad: conv_ops._routed_conv(x, w, s, pad, 'col2im'),
}


def _loss(conv, x, w, t):
  return jnp.sum(conv(x, w) * t)


@pytest.mark.parametrize('formulation', sorted(FORMULATIONS))
@pytest.mark.parametrize('n,h,w,cin,cout,k,s,pad,route', CASES)
def test_fast_matches_xla(n, h, w, cin, cout, k, s, pad, route, formulation):
  assert conv_ops.fast_route((h, w), (k, k), (s, s), pad) == route
  kx, kw, kt = jax.random.split(jax.random.key(n * 100 + h * 10 + k), 3)
  x = jax.random.normal(kx, (n, h, w, cin))
  ker = jax.random.normal(kw, (k, k, cin, cout))
  ref_conv = lambda x, w: conv_ops.xla_conv2d(x, w, (s, s), pad)
  fast_conv = lambda x, w: FORMULATIONS[formulation](x, w, (s, s), pad)
  y_ref = ref_conv(x, ker)
  t = jax.random.normal(kt, y_ref.shape)
  y = jax.jit(fast_conv)(x, ker)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
  g_ref = jax.jit(jax.grad(lambda x, w: _loss(ref_conv, x, w, t), (0, 1)))(x, ker)
  g = jax.jit(jax.grad(lambda x, w: _loss(fast_conv, x, w, t), (0, 1)))(x, ker)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * float(jnp.max(jnp.abs(b))))


def test_multi_block_scan():
  """Batch large enough for several scan blocks (incl. a batch with no convenient divisor)."""
  for n in (40, 37):
    x = jax.random.normal(jax.random.key(n), (n, 32, 32, 8))
    dy = jax.random.normal(jax.random.key(1), (n, 32, 32, 8))
    ref = jax.vjp(lambda w, x=x: conv_ops.xla_conv2d(x, w), jnp.zeros((3, 3, 8, 8)))[1](dy)[0]
    got = jax.jit(lambda x, dy: conv_ops.kernel_grad(x, dy, (3, 3), (1, 1), 'SAME',
                                                    jnp.float32))(x, dy)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('n', [40, 37])
def test_input_grad_blocks(n):
  """LeNet-5's conv2 at a batch whose col2im is scanned in blocks (40: 5 blocks of 8; 37: 37 of
  1), and the route's jitted gradients in the train step's form."""
  x = jax.random.normal(jax.random.key(n), (n, 12, 12, 20))
  ker = jax.random.normal(jax.random.key(1), (5, 5, 20, 50))
  dy = jax.random.normal(jax.random.key(2), (n, 8, 8, 50))
  assert conv_ops._block_size(n, 64, 2 * 25 * 20) < n
  _, vjp = jax.vjp(lambda x, w: conv_ops.xla_conv2d(x, w, (1, 1), 'VALID'), x, ker)
  got = jax.jit(jax.vjp(lambda x, w: conv_ops.conv2d(x, w, (1, 1), 'VALID', impl='fast'), x,
                        ker)[1])(dy)
  for a, b in zip(got, vjp(dy)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_bf16_inputs():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (3, 3, 8, 4), jnp.bfloat16)
  f = lambda impl: jax.grad(lambda x, w: conv_ops.conv2d(x, w, impl=impl).astype(jnp.float32).sum(),
                            (0, 1))(x, w)
  (dx, dw), (dx_ref, dw_ref) = f('fast'), f('xla')
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(dw.astype(np.float32), dw_ref.astype(np.float32), rtol=3e-2, atol=0.5)
  np.testing.assert_allclose(dx.astype(np.float32), dx_ref.astype(np.float32), rtol=3e-2, atol=0.5)
  # An unpadded conv (the 'col2im' route) in bfloat16.
  f = lambda impl: jax.grad(lambda x, w: conv_ops.conv2d(x, w, padding='VALID', impl=impl)
                            .astype(jnp.float32).sum(), (0, 1))(x, w)
  for a, b in zip(f('fast'), f('xla')):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=3e-2, atol=0.5)


@pytest.mark.parametrize('n,h,w,cin,cout,k,s,pad,route', CASES)
def test_16_bit_floats_take_xla_conv_where_float32_takes_kernel_grad(n, h, w, cin, cout, k, s,
                                                                    pad, route):
  """bf16/f16: the 'vjp' route (kernel_grad) becomes XLA's conv; the other routes stay."""
  for dtype in (jnp.bfloat16, jnp.float16):
    expected = 'xla' if route == 'vjp' else route
    assert conv_ops.fast_route((h, w), (k, k), (s, s), pad, dtype) == expected


def test_resolve_impl():
  assert conv_ops.resolve_impl('xla') == 'xla'
  assert conv_ops.resolve_impl('auto') == ('fast' if jax.default_backend() == 'cpu' else 'xla')
  with pytest.raises(ValueError):
    conv_ops.resolve_impl('nope')


@pytest.mark.slow
def test_resnet20_gradients_match():
  from qprune.models import create_model, init_variables
  images = jax.random.randint(jax.random.key(3), (4, 32, 32, 3), 0, 256).astype(jnp.uint8)
  labels = jnp.arange(4) % 10

  def grads(impl):
    model = create_model('resnet20', 10, width=0.25, conv_impl=impl)
    variables = init_variables(model, jax.random.key(0), (32, 32, 3))

    def loss(params):
      logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, images,
                              train=True, mutable=['batch_stats'])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return jax.jit(jax.value_and_grad(loss))(variables['params'])

  (l_fast, g_fast), (l_xla, g_xla) = grads('fast'), grads('xla')
  np.testing.assert_allclose(l_fast, l_xla, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + float(jnp.max(jnp.abs(b)))))


@pytest.mark.parametrize('train', [True, False])
def test_fused_batch_norm_matches_flax(train):
  """qprune.ops.batchnorm.FusedBatchNorm == nn.BatchNorm: outputs, running stats, all gradients."""
  import flax.linen as nn

  from qprune.ops import batchnorm
  x = jax.random.normal(jax.random.key(0), (6, 5, 7, 4)) * 3 + 1
  t = jax.random.normal(jax.random.key(1), x.shape)
  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, param_dtype=jnp.float32)
  ref_mod, mod = nn.BatchNorm(**kw), batchnorm.FusedBatchNorm(**kw)
  variables = ref_mod.init(jax.random.key(2), x)
  assert jax.tree.structure(mod.init(jax.random.key(2), x)) == jax.tree.structure(variables)
  keys = iter(jax.random.split(jax.random.key(3), 8))
  variables = jax.tree.map(lambda a: a + 0.3 * jnp.abs(jax.random.normal(next(keys), a.shape)),
                           variables)

  def run(m):
    def f(params, x):
      y, upd = m.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y) * t), (y, upd)
    return jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))(variables['params'], x)

  ((_, (y_ref, s_ref)), g_ref), ((_, (y, s)), g) = run(ref_mod), run(mod)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves((s, g)), jax.tree.leaves((s_ref, g_ref))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
