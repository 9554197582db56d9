"""2-D convolution entry point used by every conv layer of the zoo.

`conv2d(x, kernel, strides, padding, impl)` with x: [N, H, W, C_in] and kernel: [kh, kw, C_in, C_out]
returns [N, H', W', C_out]. `impl='xla'` is `lax.conv_general_dilated`; `impl='auto'` chooses the
fastest implementation for the backend (see `resolve_impl`).
"""
import jax
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def xla_conv2d(x, kernel, strides=(1, 1), padding='SAME'):
  return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                  dimension_numbers=_DIMS)


IMPLS = {'xla': xla_conv2d}


def resolve_impl(impl: str) -> str:
  if impl == 'auto':
    return 'fast' if ('fast' in IMPLS and jax.default_backend() == 'cpu') else 'xla'
  if impl not in IMPLS:
    raise ValueError(f'unknown conv impl {impl!r}; choose one of {sorted(IMPLS)} or "auto"')
  return impl


def conv2d(x, kernel, strides=(1, 1), padding='SAME', impl='auto'):
  return IMPLS[resolve_impl(impl)](x, kernel, tuple(strides), padding)
