"""2-D convolution entry point used by every conv layer of the zoo.

`conv2d(x, kernel, strides, padding, impl)` with x: [N, H, W, C_in] and kernel: [kh, kw, C_in, C_out]
returns [N, H', W', C_out]. `impl='xla'` is `lax.conv_general_dilated`; `impl='fast'` is the same
forward conv and input gradient, with a kernel gradient rewritten as matmuls that XLA's CPU backend
runs several times faster than its own conv-backprop-filter (and, for tiny output maps, an im2col
matmul conv, see below); `impl='auto'` picks 'fast' on the CPU backend only (see `resolve_impl`).
Both are meant to be compiled with `qprune.ops.compile.jit` on CPU (multi-threaded XLA kernels).

Why the kernel gradient is slow on XLA CPU, and what replaces it:
  dW[i, j, c, o] = sum_{n, h, w} xpad[n, s*h + i, s*w + j, c] * dy[n, h, w, o]
is a contraction over M = N*H'*W' (~10^5) producing only kh*kw*C_in*C_out (~10^3) numbers. XLA
lowers it to an Eigen spatial convolution with an H'xW' "kernel", which runs at 2-4 GFLOP/s here.
Materializing the full im2col patch matrix does not help either: it is [M, kh*kw*C_in] (tens of MB),
so building it is memory bound, and buffers above glibc's 32 MB mmap threshold are page-faulted in
fresh on every step. The fast path therefore
  1. transposes x once to channel-major, batch-blocked [N/B, C_in, B, Hp, Wp] so that every kernel tap
     (i, j) is a strided slice whose [C_in, B*H'*W'] matrix has the contraction as its minor dim;
  2. scans over the N/B batch blocks (each block's operands stay in cache, a few MB), and per block
     does kh*kw matmuls [C_in, m] @ [m, C_out] (m = B*H'*W') against dy's NHWC block [m, C_out] --
     or, for few input channels, one matmul on the stacked [kh*kw*C_in, m] patches;
  3. accumulates in float32 and casts to the kernel's dtype.

A second CPU pathology: XLA's spatial convolution is very slow when the output map is tiny (a 3x3
SAME conv on a 2x2 map with 512 channels, VGG's last block, runs at ~1.5 GFLOP/s forward and
backward). For such shapes (`fast_route`: at most 4 output positions) 'fast' computes the
conv as one explicit im2col matmul [N*H'*W', kh*kw*C_in] @ [kh*kw*C_in, C_out] and lets autodiff
produce its two gradient matmuls: ~90 / ~35 / ~110 GFLOP/s forward / input-grad / kernel-grad on
that VGG conv at batch 32 (`python -m qprune.benchmarks.conv --shapes=vgg`).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')

# Contraction rows m = B*H'*W' per scan step are chosen so that a block's operands, (C_in + C_out)
# * m floats, take about 2 MB: measured on resnet20/lenet shapes, m = 2**19 / (C_in + C_out) (16384
# rows at 16->16, 4096 at 64->64) beats both 4x smaller and 4x larger blocks by 1.2-3x.
_BLOCK_ELEMENTS = 2**19
# Below this many input channels, per-tap matmuls [C_in, m] @ [m, C_out] are too thin to be
# efficient; stack the taps into one [kh*kw*C_in, m] patch matrix instead.
_MIN_TAP_CHANNELS = 8
_NN = (((1,), (0,)), ((), ()))  # [a, m] @ [m, b]


def xla_conv2d(x, kernel, strides=(1, 1), padding='SAME'):
  return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                  dimension_numbers=_DIMS)


def _pads(in_hw, kernel_hw, strides, padding):
  """Explicit ((lo, hi), (lo, hi)) spatial padding, as lax.conv_general_dilated applies it."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
  return tuple(tuple(p) for p in padding)


def _pad_spatial(x, pads):
  """Zero-pads (or, for negative padding, crops) H and W of NHWC x by ((lo, hi), (lo, hi))."""
  (plo_h, phi_h), (plo_w, phi_w) = pads
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (plo_h, phi_h, 0), (plo_w, phi_w, 0),
                                             (0, 0, 0)))


def _block_size(n: int, rows_per_image: int, channels: int) -> int:
  """Images per scan step: the divisor of n closest below the row target (at least 1)."""
  target = max(1, min(n, _BLOCK_ELEMENTS // (channels * max(1, rows_per_image))))
  return max(d for d in range(1, target + 1) if n % d == 0)


def kernel_grad(x, dy, kernel_hw, strides, padding, out_dtype):
  """Gradient of the NHWC/HWIO conv with respect to its kernel.

  x: [N, H, W, C] (the conv input), dy: [N, H', W', O] (cotangent of the conv output).
  Returns dW: [kh, kw, C, O] in `out_dtype`, with
    dW[i, j, c, o] = sum_{n, h, w} xpad[n, s_h*h + i, s_w*w + j, c] * dy[n, h, w, o]
  computed as a scan over batch blocks of matmuls (see the module docstring), accumulated in f32.
  """
  n, h, w, c = x.shape
  _, ho, wo, o = dy.shape
  kh, kw = kernel_hw
  sh, sw = strides
  xp = _pad_spatial(x, _pads((h, w), kernel_hw, strides, padding))  # every tap slice in range
  hp, wp = xp.shape[1:3]
  b = _block_size(n, ho * wo, c + o)
  nb, m = n // b, b * ho * wo
  # Channel-major blocks: one transpose, so each tap slice is a [C, m] matrix (contraction minor).
  xs = xp.reshape(nb, b, hp, wp, c).transpose(0, 4, 1, 2, 3)  # [nb, C, B, Hp, Wp]
  ds = dy.reshape(nb, m, o)  # NHWC block: rows (b, h, w), a free reshape.
  taps = [(i, j) for i in range(kh) for j in range(kw)]

  def tap(xb, i, j):
    """xb: [C, B, Hp, Wp] -> the rows seen by kernel tap (i, j): [C, m]."""
    win = lax.slice(xb, (0, 0, i, j), (c, b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1),
                    (1, 1, sh, sw))
    return win.reshape(c, m)

  def mm(a, d):
    return lax.dot_general(a, d, _NN, preferred_element_type=jnp.float32)

  def step(acc, block):
    xb, db = block
    if c < _MIN_TAP_CHANNELS:
      patches = jnp.concatenate([tap(xb, i, j) for i, j in taps], axis=0)  # [kh*kw*C, m]
      g = mm(patches, db).reshape(kh * kw, c, o)
    else:
      g = jnp.stack([mm(tap(xb, i, j), db) for i, j in taps])  # [kh*kw, C, O]
    return acc + g, None

  acc0 = jnp.zeros((kh * kw, c, o), jnp.float32)
  if nb == 1:  # no loop for a single block
    acc, _ = step(acc0, (xs[0], ds[0]))
  else:
    acc, _ = lax.scan(step, acc0, (xs, ds))
  return acc.reshape(kh, kw, c, o).astype(out_dtype)


def _out_hw(in_hw, kernel_hw, strides, pads):
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides,
                                                                       pads))


def patch_matmul_conv2d(x, kernel, strides=(1, 1), padding='SAME'):
  """The conv as [N*H'*W', kh*kw*C_in] patches @ [kh*kw*C_in, C_out] (taps major, HWIO order)."""
  n, h, w, c = x.shape
  kh, kw, _, o = kernel.shape
  sh, sw = strides
  pads = _pads((h, w), (kh, kw), strides, padding)
  ho, wo = _out_hw((h, w), (kh, kw), strides, pads)
  xp = _pad_spatial(x, pads)
  taps = [lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(taps, axis=-1).reshape(n * ho * wo, kh * kw * c)
  y = lax.dot_general(patches, kernel.reshape(kh * kw * c, o), _NN,
                      preferred_element_type=jnp.float32)
  return y.astype(x.dtype).reshape(n, ho, wo, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _fast_conv(x, kernel, strides, padding):
  return xla_conv2d(x, kernel, strides, padding)


def _fast_conv_fwd(x, kernel, strides, padding):
  return xla_conv2d(x, kernel, strides, padding), (x, kernel)


def _fast_conv_bwd(strides, padding, res, dy):
  x, kernel = res
  # Input gradient: XLA's transposed conv is already fast on CPU, keep it.
  _, x_vjp = jax.vjp(lambda x_: xla_conv2d(x_, kernel, strides, padding), x)
  (dx,) = x_vjp(dy)
  dw = kernel_grad(x, dy.astype(x.dtype), kernel.shape[:2], strides, padding, kernel.dtype)
  return dx, dw


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def fast_conv2d(x, kernel, strides=(1, 1), padding='SAME'):
  """Same values and gradients as `xla_conv2d`: an im2col matmul for the shapes XLA's CPU conv
  handles badly, XLA's conv for unpadded ones, else XLA's conv with the kernel gradient
  computed by `kernel_grad`."""
  if not isinstance(padding, str):
    padding = tuple(tuple(int(v) for v in p) for p in padding)  # hashable for nondiff_argnums
  strides = tuple(int(s) for s in strides)
  route = fast_route(x.shape[1:3], kernel.shape[:2], strides, padding)
  if route == 'patch':
    return patch_matmul_conv2d(x, kernel, strides, padding)
  if route == 'xla':
    return xla_conv2d(x, kernel, strides, padding)
  return _fast_conv(x, kernel, strides, padding)


def fast_route(in_hw, kernel_hw, strides, padding) -> str:
  """Which formulation 'fast' uses: 'patch' (im2col matmul, tiny output maps), 'xla' (unpadded
  convs, e.g. LeNet-5's VALID 5x5: XLA's own kernel gradient measured 1.1-1.2x faster in the
  train step, `benchmarks.train_step --model=lenet5 --variants=qprune,xla_conv`), else 'vjp'
  (XLA's conv with `kernel_grad`)."""
  pads = _pads(in_hw, kernel_hw, strides, padding)
  ho, wo = _out_hw(in_hw, kernel_hw, strides, pads)
  if ho * wo <= 4 and kernel_hw[0] * kernel_hw[1] > 1:  # see the module docstring
    return 'patch'
  if not any(any(p) for p in pads):
    return 'xla'
  return 'vjp'


IMPLS = {'xla': xla_conv2d, 'fast': fast_conv2d}


def resolve_impl(impl: str) -> str:
  """'auto' -> 'fast' on the CPU backend (where XLA's kernel gradient is slow), else 'xla'."""
  if impl == 'auto':
    return 'fast' if ('fast' in IMPLS and jax.default_backend() == 'cpu') else 'xla'
  if impl not in IMPLS:
    raise ValueError(f'unknown conv impl {impl!r}; choose one of {sorted(IMPLS)} or "auto"')
  return impl


def conv2d(x, kernel, strides=(1, 1), padding='SAME', impl='auto'):
  return IMPLS[resolve_impl(impl)](x, kernel, tuple(strides), padding)
