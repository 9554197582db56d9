"""2-D convolution entry point used by every conv layer of the zoo.

`conv2d(x, kernel, strides, padding, impl)` with x: [N, H, W, C_in] and kernel: [kh, kw, C_in,
C_out] returns [N, H', W', C_out]. `impl='xla'` is `lax.conv_general_dilated`; `impl='fast'` is the
same forward conv and input gradient, with a kernel gradient rewritten as matmuls that XLA's CPU
backend runs several times faster than its own conv-backprop-filter (and, for tiny output maps, an
im2col matmul conv, see below); `impl='auto'` picks 'fast' on the CPU backend only (see
`resolve_impl`). Both are meant to be compiled with `qprune.ops.compile.jit` on CPU (multi-threaded
XLA kernels).

Why the kernel gradient is slow on XLA CPU, and what replaces it:
  dW[i, j, c, o] = sum_{n, h, w} xpad[n, s*h + i, s*w + j, c] * dy[n, h, w, o]
is a contraction over M = N*H'*W' (~10^5) producing only kh*kw*C_in*C_out (~10^3) numbers. XLA
lowers it to an Eigen spatial convolution with an H'xW' "kernel", which runs at 2-4 GFLOP/s here.
Materializing the full im2col patch matrix does not help either: it is [M, kh*kw*C_in] (tens of MB),
so building it is memory bound, and buffers above glibc's 32 MB mmap threshold are page-faulted in
fresh on every step. The fast path therefore
  1. transposes x once to channel-major, batch-blocked [N/B, C_in, B, Hp, Wp] so that every kernel
     tap (i, j) is a strided slice whose [C_in, B*H'*W'] matrix has the contraction as its minor
     dim;
  2. scans over the N/B batch blocks (each block's operands stay in cache, a few MB), and per block
     does kh*kw matmuls [C_in, m] @ [m, C_out] (m = B*H'*W') against dy's NHWC block [m, C_out] --
     or, for few input channels, one matmul on the stacked [kh*kw*C_in, m] patches;
  3. accumulates in float32 and casts to the kernel's dtype.

A second CPU pathology: XLA's spatial convolution is very slow when the output map is tiny (a 3x3
SAME conv on a 2x2 map with 512 channels, VGG's last block, runs at ~1.5 GFLOP/s forward and
backward). For such shapes (`fast_route`: at most 4 output positions) 'fast' computes the
conv as one explicit im2col matmul [N*H'*W', kh*kw*C_in] @ [kh*kw*C_in, C_out] and lets autodiff
produce its two gradient matmuls: ~90 / ~35 / ~110 GFLOP/s forward / input-grad / kernel-grad on
that VGG conv at batch 32 (`python -m reproduce.benchmarks.conv --shapes=vgg`).

A third: unpadded convs (LeNet-5's 5x5 VALID, 1x1s). XLA's own kernel gradient is fine there, but
its input gradient, a transposed conv, is not: on LeNet-5's conv2 (20->50, 12x12 -> 8x8, batch
128) it ran at ~10-17 GFLOP/s, twice the forward conv's time and the largest op of the train step.
`input_grad` computes it as one matmul dy @ W^T ([N*H'*W', C_out] @ [C_out, kh*kw*C_in], the
conv's own MACs) and a col2im that adds each tap's slice of the product into place (route
'col2im', with XLA's forward conv and kernel gradient).
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


def _col2im(g, hp, wp, strides):
  """g: [B, H', W', kh, kw, C] (one row of taps per output position) -> [B, Hp, Wp, C], the sum
  of every tap (i, j) placed at rows i + s_h*h, columns j + s_w*w (zero elsewhere)."""
  _, ho, wo, kh, kw, _ = g.shape
  sh, sw = strides
  zero = jnp.zeros((), g.dtype)
  span_h, span_w = (ho - 1) * sh + 1, (wo - 1) * sw + 1
  dx = None
  for i in range(kh):
    row = None
    for j in range(kw):  # tap (i, j) into columns j, j + s_w, ... of a padded-width row
      part = lax.pad(g[:, :, :, i, j, :], zero,
                     ((0, 0, 0), (0, 0, 0), (j, wp - j - span_w, sw - 1), (0, 0, 0)))
      row = part if row is None else row + part
    part = lax.pad(row, zero, ((0, 0, 0), (i, hp - i - span_h, sh - 1), (0, 0, 0), (0, 0, 0)))
    dx = part if dx is None else dx + part
  return dx


def input_grad(dy, kernel, in_hw, strides, padding):
  """Gradient of the NHWC/HWIO conv with respect to its input, as one matmul plus a col2im.

  dy: [N, H', W', O], kernel: [kh, kw, C, O]; returns dx: [N, H, W, C] in dy's dtype, with
    dx[n, s_h*h + i - lo_h, s_w*w + j - lo_w, c] += sum_o dy[n, h, w, o] * kernel[i, j, c, o]:
  g = dy @ kernel^T ([N*H'*W', O] @ [O, kh*kw*C], the conv's own MACs, accumulated in f32),
  then `_col2im` pads each tap of g into place and sums the taps (a row of taps first, then the
  rows). XLA splits that sum into one fusion per kernel row, each reading all of g (16 MB on
  LeNet-5), so the col2im is scanned over batch blocks whose g stays in cache (~1 MB): on
  LeNet-5's conv2 that col2im took ~6.5 ms a step against ~10.5 ms unblocked (an unrolled loop
  of blocks, ~8.5 ms, and blocking the matmul too, whose small blocks ran 4x slower, did worse).
  The whole dx: ~7-8 ms against ~22-25 ms for XLA's transposed conv (one core, batch 128).
  """
  n, ho, wo, o = dy.shape
  kh, kw, c, _ = kernel.shape
  (plo_h, phi_h), (plo_w, phi_w) = pads = _pads(in_hw, (kh, kw), strides, padding)
  hp, wp = in_hw[0] + plo_h + phi_h, in_hw[1] + plo_w + phi_w
  g = lax.dot_general(dy.reshape(n * ho * wo, o), kernel.reshape(kh * kw * c, o),
                      (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  g = g.reshape(n, ho, wo, kh, kw, c)  # f32: the taps are summed before the cast
  b = _block_size(n, ho * wo, 2 * kh * kw * c)  # a block of g: ~2**18 floats
  if b == n:
    dx = _col2im(g, hp, wp, strides)
  else:
    _, dx = lax.scan(lambda _, gb: (None, _col2im(gb, hp, wp, strides)), None,
                     g.reshape(n // b, b, *g.shape[1:]))
    dx = dx.reshape(n, hp, wp, c)
  # Back from the padded frame to x's (negative padding crops).
  return _pad_spatial(dx, tuple((-lo, -hi) for lo, hi in pads)).astype(dy.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _routed_conv(x, kernel, strides, padding, route):
  """XLA's conv whose backward pass hand-computes one of the two gradients: the input gradient
  (`input_grad`) on route 'col2im', the kernel gradient (`kernel_grad`) on route 'vjp'; the
  other one is XLA's, which measured faster there."""
  del route
  return xla_conv2d(x, kernel, strides, padding)


def _routed_conv_fwd(x, kernel, strides, padding, route):
  del route
  return xla_conv2d(x, kernel, strides, padding), (x, kernel)


def _routed_conv_bwd(strides, padding, route, res, dy):
  x, kernel = res
  if route == 'col2im':
    _, w_vjp = jax.vjp(lambda k_: xla_conv2d(x, k_, strides, padding), kernel)
    (dw,) = w_vjp(dy)
    return input_grad(dy.astype(x.dtype), kernel.astype(x.dtype), x.shape[1:3], strides,
                      padding), dw
  _, x_vjp = jax.vjp(lambda x_: xla_conv2d(x_, kernel, strides, padding), x)
  (dx,) = x_vjp(dy)
  return dx, kernel_grad(x, dy.astype(x.dtype), kernel.shape[:2], strides, padding,
                         kernel.dtype)


_routed_conv.defvjp(_routed_conv_fwd, _routed_conv_bwd)


def fast_conv2d(x, kernel, strides=(1, 1), padding='SAME'):
  """Same values and gradients as `xla_conv2d`: an im2col matmul for the shapes XLA's CPU conv
  handles badly, XLA's conv with the input gradient of `input_grad` for unpadded ones, else
  XLA's conv with the kernel gradient computed by `kernel_grad` (float32; in 16-bit floats XLA's
  conv as it is). `fast_route` says which."""
  if not isinstance(padding, str):
    padding = tuple(tuple(int(v) for v in p) for p in padding)  # hashable for nondiff_argnums
  strides = tuple(int(s) for s in strides)
  route = fast_route(x.shape[1:3], kernel.shape[:2], strides, padding, x.dtype)
  if route == 'patch':
    return patch_matmul_conv2d(x, kernel, strides, padding)
  if route == 'xla':
    return xla_conv2d(x, kernel, strides, padding)
  return _routed_conv(x, kernel, strides, padding, route)


def fast_route(in_hw, kernel_hw, strides, padding, dtype=jnp.float32) -> str:
  """Which formulation 'fast' uses: 'patch' (im2col matmul, tiny output maps), 'col2im'
  (unpadded convs, e.g. LeNet-5's VALID 5x5: XLA's forward and kernel gradient, which measured
  1.1-1.2x faster than `kernel_grad` in the LeNet-5 train step, with `input_grad`'s input
  gradient), else 'vjp' (XLA's conv with `kernel_grad`) in float32 and plain 'xla' in 16-bit
  floats: there `kernel_grad` is the slower one. The ResNet-20 train step (batch 256, bfloat16,
  2-core Intel Xeon with AVX-512 BF16, huge-page malloc on both sides) ran at 201.5 img/s with
  it and 332.5 img/s without (`python -m reproduce.benchmarks.train_step --dtype=bfloat16
  --variants=qprune,xla_conv_huge`, before this rule), while LeNet-5's 'col2im' route stays
  faster than XLA's conv in bfloat16: 3,626 against 2,974 img/s (the same command with
  `--model=lenet5 --batch_size=128`)."""
  pads = _pads(in_hw, kernel_hw, strides, padding)
  ho, wo = _out_hw(in_hw, kernel_hw, strides, pads)
  if ho * wo <= 4 and kernel_hw[0] * kernel_hw[1] > 1:  # see the module docstring
    return 'patch'
  if not any(any(p) for p in pads):
    return 'col2im'
  return 'vjp' if jnp.dtype(dtype).itemsize >= 4 else 'xla'


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
