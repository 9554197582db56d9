"""Multiplication-free reference evaluation of power-of-two layers: shifts, sign flips and adds.

With every weight `w = s·2^e` (s in {-1, 0, +1}), a conv/dense output is

    y = Σ_i s_i · (x_i · 2^e_i) = Σ_{s_i = +1} shift(x_i, e_i) − Σ_{s_i = −1} shift(x_i, e_i)

where `shift(x, e)` adds `e` to the binary exponent field of the float32 `x` (an integer add on
its bit pattern, `bits + (e << 23)`): no multiplication by a weight anywhere; the sign is a
select/negation. For normal floats `shift(x, e)` has exactly the bits of `x * 2^e` (scaling by a
power of two is exact in binary floating point), so each term equals the float product bit for
bit. Where the input or the result is not a normal float (subnormal, overflow) `shift` falls
back to `jnp.ldexp` (which, like every XLA CPU float op, may flush subnormals to zero) — never
the case for CNN activations and weights in practice, and `shift_fallbacks` counts it.

Exactness, stated precisely:
  * against the same sums computed with multiplications (`multiply=True`, identical summation
    order): BIT-EXACT, because every term is identical and the adds are the same ops in the
    same order (functions here run op by op, un-jitted, so XLA cannot reorder one of them);
  * against the model's own conv/dot (`lax.conv_general_dilated`, `jnp.dot`): equal within
    float32 summation-order rounding (a few ulps of the largest partial sums), since XLA's
    kernels accumulate in a different order.

Layouts are the zoo's: x NHWC, conv kernels (kh, kw, in, out), dense kernels (in, out).
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qprune.errors import UserError

_MANTISSA_BITS = 23


class NotPowerOfTwoError(UserError):
  """A weight is neither 0 nor ±2^e: the layer is not (fully) power-of-two quantized."""


def power_of_two_codes(w) -> tuple[np.ndarray, np.ndarray]:
  """(sign int8 in {-1, 0, 1}, exponent int32) with w == sign·2^exponent exactly (0 where w == 0).

  Raises NotPowerOfTwoError if any weight is not 0 or ±2^e.
  """
  w = np.asarray(w, np.float32)
  mantissa, exponent = np.frexp(w)  # w = m·2^x, |m| in [0.5, 1)
  ok = (w == 0) | (np.abs(mantissa) == 0.5)
  if not np.all(ok):
    bad = w[~ok].reshape(-1)[:3]
    raise NotPowerOfTwoError(f'{int(np.sum(~ok))} weights are not 0 or ±2^e (e.g. {bad.tolist()});'
                             f' quantize the layer first (quant.quantize_params / run_inq)')
  sign = np.sign(w).astype(np.int8)
  return sign, np.where(w == 0, 0, exponent - 1).astype(np.int32)


def shift(x: jax.Array, e: jax.Array) -> jax.Array:
  """x·2^e as an integer add on float32 x's exponent field (bits + (e << 23)); broadcasts.

  Bit-identical to `x * 2.0**e` wherever x and the result are normal floats; ±0 stay ±0.
  Subnormal inputs/results and overflow fall back to `jnp.ldexp` (see `shift_fallbacks`).
  """
  x = jnp.asarray(x, jnp.float32)
  e = jnp.asarray(e, jnp.int32)
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  field = (bits >> _MANTISSA_BITS) & 0xFF
  new_field = field + e
  normal = (field > 0) & (field < 255) & (new_field > 0) & (new_field < 255)
  shifted = jax.lax.bitcast_convert_type(bits + (e << _MANTISSA_BITS), jnp.float32)
  return jnp.where(normal, shifted, jnp.where(x == 0, x, jnp.ldexp(x, e)))  # ±0 keep their sign


def shift_fallbacks(x: jax.Array, e: jax.Array) -> int:
  """How many nonzero (x, e) pairs `shift` cannot do as an exponent add (uses jnp.ldexp)."""
  bits = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.int32)
  field = (bits >> _MANTISSA_BITS) & 0xFF
  new_field = field + jnp.asarray(e, jnp.int32)
  normal = (field > 0) & (field < 255) & (new_field > 0) & (new_field < 255)
  return int(jnp.sum(~normal & (jnp.asarray(x) != 0)))


def _signed_terms(x, sign, exponent, multiply: bool):
  """[..., in, out] terms: sign·x·2^e by shift + select (or by a float multiply, for reference)."""
  if multiply:
    weight = jnp.asarray(sign, jnp.float32) * jnp.ldexp(jnp.float32(1), jnp.asarray(exponent))
    return x[..., :, None] * weight
  t = shift(x[..., :, None], exponent)
  return jnp.where(sign > 0, t, jnp.where(sign < 0, -t, jnp.zeros_like(t)))


def shift_dense(x, sign, exponent, bias=None, *, multiply: bool = False) -> jax.Array:
  """x [N, in] · W [in, out] (+ bias) with W = sign·2^exponent, as shifted, signed sums."""
  y = jnp.sum(_signed_terms(jnp.asarray(x, jnp.float32), sign, exponent, multiply), axis=-2)
  return y if bias is None else y + jnp.asarray(bias, jnp.float32)


def _pads(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
  if padding == 'VALID':
    return 0, 0
  if padding != 'SAME':
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def shift_conv(x, sign, exponent, strides: Sequence[int] = (1, 1), padding: str = 'SAME', *,
               multiply: bool = False) -> jax.Array:
  """NHWC conv (no bias) with kernel sign·2^exponent [kh, kw, in, out], as shifted sums.

  Patches are strided slices of the padded input (data movement only); for each tap (dy, dx) the
  signed, shifted inputs are summed over input channels, and the taps are added in row-major
  order.
  """
  x = jnp.asarray(x, jnp.float32)
  sign, exponent = jnp.asarray(sign), jnp.asarray(exponent)
  kh, kw, cin, cout = sign.shape
  n, h, w, c = x.shape
  if c != cin:
    raise ValueError(f'input has {c} channels, kernel expects {cin}')
  (pt, pb), (pl, pr) = _pads(h, kh, strides[0], padding), _pads(w, kw, strides[1], padding)
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho = (h + pt + pb - kh) // strides[0] + 1
  wo = (w + pl + pr - kw) // strides[1] + 1
  out = jnp.zeros((n, ho, wo, cout), jnp.float32)
  for dy in range(kh):
    for dx in range(kw):
      tap = jax.lax.slice(xp, (0, dy, dx, 0),
                          (n, dy + (ho - 1) * strides[0] + 1, dx + (wo - 1) * strides[1] + 1, c),
                          (1, strides[0], strides[1], 1))
      out = out + jnp.sum(_signed_terms(tap, sign[dy, dx], exponent[dy, dx], multiply), axis=-2)
  return out


def shift_apply(model, variables, images, *, multiply: bool = False) -> jax.Array:
  """`model.apply(variables, images, train=False)` with every conv and dense layer evaluated by
  `shift_conv` / `shift_dense` (their kernels must be power-of-two: NotPowerOfTwoError if not).

  Everything else (normalization, BatchNorm, ReLU, pooling) is the model's own code. Works for
  any zoo model; memory grows as batch x in x out per layer, so keep batches small.
  """
  from qprune.models.layers import Conv  # pylint: disable=g-import-not-at-top

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, (Conv, nn.Dense)):
      return next_fun(*args, **kwargs)
    kernel = module.get_variable('params', 'kernel')
    if kernel is None:  # initialization: nothing to replace
      return next_fun(*args, **kwargs)
    sign, exponent = power_of_two_codes(kernel)
    (x,) = args
    if isinstance(module, Conv):
      return shift_conv(x, sign, exponent, tuple(module.strides), module.padding,
                        multiply=multiply)
    y = shift_dense(x, sign, exponent, module.get_variable('params', 'bias'), multiply=multiply)
    return y

  with nn.intercept_methods(interceptor):
    return model.apply(variables, images, train=False)
