"""Max pooling entry point used by the zoo: `flax.linen.max_pool`'s values and gradients.

`max_pool(x, window, strides, padding, impl)` with x: [N, H, W, C]. `impl` is the model's conv
impl (`qprune.ops.conv.resolve_impl`): 'xla' is `nn.max_pool` (lax.reduce_window), 'fast' (the
CPU default) computes non-overlapping VALID pooling (strides == window, H and W divisible by it;
LeNet-5's and VGG's 2x2/2) with `_tiled_max_pool`, a custom VJP; other shapes go to nn.max_pool.

Why: the gradient of reduce_window max is XLA's select-and-scatter, which the CPU backend runs
as a generic scalar loop: on LeNet-5's first pooling (128x24x24x20, one core) it took 15 ms
against 1.8 ms for the elementwise form below, and LeNet-5's two poolings were ~1/4 of its train
step. For non-overlapping windows each input element belongs to one window, so
  forward:  y = max over the window's k*k strided slices of x (elementwise maxima);
  backward: dx at window offset (i, j) = dy where x[i::k, j::k] == y and no earlier offset (in
            row-major window order) matched, else 0.
That is exactly select-and-scatter's rule (the first maximal element of a window gets the whole
gradient, the others none: ties, e.g. all-zero windows after a ReLU, included), so values and
gradients equal nn.max_pool's bit for bit (tests/test_ops_pool.py). NaNs differ: nn.max_pool
routes a NaN window's gradient by its own comparison order; here such a window gets none.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from qprune.ops import conv as conv_ops


def _offsets(k: int, m: int):
  return [(i, j) for i in range(k) for j in range(m)]


def _window_slice(x, i, j, kh, kw):
  """x[:, i::kh, j::kw, :] for x of H, W divisible by the window."""
  n, h, w, c = x.shape
  return lax.slice(x, (0, i, j, 0), (n, h - kh + i + 1, w - kw + j + 1, c), (1, kh, kw, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x, window):
  kh, kw = window
  slices = [_window_slice(x, i, j, kh, kw) for i, j in _offsets(kh, kw)]
  return functools.reduce(jnp.maximum, slices)


def _tiled_fwd(x, window):
  y = _tiled_max_pool(x, window)
  return y, (x, y)


def _tiled_bwd(window, res, dy):
  x, y = res
  kh, kw = window
  n, h, w, c = x.shape
  taken = jnp.zeros(y.shape, bool)
  zero = jnp.zeros((), dy.dtype)
  parts = []
  for i, j in _offsets(kh, kw):  # select-and-scatter's order: the first maximum wins
    hit = (_window_slice(x, i, j, kh, kw) == y) & ~taken
    taken = taken | hit
    parts.append(jnp.where(hit, dy, zero))
  # [N, H/kh, W/kw, kh*kw, C] -> interleave the window offsets back into H and W.
  stacked = jnp.stack(parts, axis=3).reshape(n, h // kh, w // kw, kh, kw, c)
  return (stacked.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c),)


_tiled_max_pool.defvjp(_tiled_fwd, _tiled_bwd)


def tiled(in_hw, window, strides, padding) -> bool:
  """Whether `_tiled_max_pool` computes this pooling: windows that tile the map exactly."""
  pads_zero = padding == 'VALID' or (not isinstance(padding, str)
                                     and not any(any(p) for p in padding))
  return (tuple(window) == tuple(strides) and pads_zero
          and all(n % k == 0 for n, k in zip(in_hw, window)))


def max_pool(x, window, strides, padding='VALID', impl='auto'):
  """`nn.max_pool(x, window, strides, padding)` (NHWC); see the module docstring for 'fast'."""
  window = tuple(int(k) for k in window)
  strides = tuple(int(s) for s in strides)
  if (conv_ops.resolve_impl(impl) == 'fast' and x.ndim == 4
      and tiled(x.shape[1:3], window, strides, padding)):
    return _tiled_max_pool(x, window)
  return nn.max_pool(x, window, strides, padding)
