"""Which leaves are quantized, their power-of-two target sets, and the nearest-target quantizer.

A *target set* of a layer is a sorted tuple of integer exponents `(e_1 < ... < e_n)`; the values a
weight may take are `P = {0} ∪ {±2^e_i}` (INQ's notation `P_l`, Zhou et al. 2017). Target sets
are plain Python data, `Targets = {layer_path: (e_1, ..., e_n)}`, keyed like `quantizable_layers`.

Quantizer (INQ's rule, our exact reading). Let `0 = m_0 < m_1 < ... < m_n` be the sorted
target magnitudes (zero included). A weight maps to `sgn(w)·m_j` where `j` is the largest index
with `(m_{j-1} + m_j)/2 <= |w|` (j = 0 if none): every threshold lies halfway between adjacent
magnitudes, ties go to the larger magnitude, the smallest nonzero target `m_1` has lower
threshold `m_1/2` (its neighbour is the zero target), and anything at or above the last threshold
maps to the largest target — including `|w| >= 3·m_n/2`, which INQ's rule leaves out (with INQ's
bound `max|W| < 3·2^n1/2`, so this clipping only matters for clustered sets). In short: nearest
target, ties upward, clipped at the largest.

Error (L1): `E = Σ |W − Ŵ|` over a layer (or summed over layers).
Bits per weight: `ceil(log2(2n + 1))`: n exponents, two signs, one zero code.

Zero-free sets (`zero=False`, beyond INQ): the values are `{±2^e_i}` only, `m_1 = 2^e_1` is the
smallest magnitude and every |w| below its threshold maps to it (an exact 0 to +m_1). They need
`ceil(log2(2n))` bits, so they fill the codes INQ's sets leave unused: at 2 bits four values
`{±2^a, ±2^b}` instead of three `{0, ±2^a}`, at 3 bits four exponents instead of three (at 1 bit,
`{±2^a}`). A very small `e_1` plays the part of zero where the layer has many tiny weights.
"""
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune.errors import UserError
from qprune.models import interop

Targets = Mapping[str, tuple[int, ...]]


class TargetsError(UserError):
  """Bad target sets or layers: empty, non-integer exponents, layers the model lacks."""
PathFilter = Callable[[tuple[str, ...], jax.Array], bool]

# float32 normal range: exponents outside it are not representable exactly (or at all).
MIN_EXPONENT, MAX_EXPONENT = -126, 127
_KERNEL = 'kernel'


def default_path_filter(path: tuple[str, ...], leaf) -> bool:
  """Every conv kernel (kh, kw, in, out) and dense kernel (in, out); biases and BatchNorm stay
  float."""
  return path[-1] == _KERNEL and np.ndim(leaf) >= 2


def layer_name(path: tuple[str, ...]) -> str:
  """'/'-joined module path of a leaf; a trailing 'kernel' is dropped ('stage1_block1/conv1')."""
  return '/'.join(path[:-1] if path[-1] == _KERNEL and len(path) > 1 else path)


def quantizable_layers(params, path_filter: PathFilter = default_path_filter) -> dict:
  """{layer_name: leaf} of the leaves of a Flax `params` pytree selected by `path_filter`.

  params: variables['params'] (whole variables and an nnx.Module's or nnx.State's params are
  taken too)."""
  flat = traverse_util.flatten_dict(interop.params_of(params))
  return {layer_name(tuple(str(p) for p in path)): leaf for path, leaf in flat.items()
          if path_filter(path, leaf)}


def _is_integer(e) -> bool:
  if isinstance(e, bool):
    return False
  if isinstance(e, (int, np.integer)):
    return True
  return isinstance(e, (float, np.floating)) and float(e).is_integer()


def check_targets(targets, layers=None, argname: str = 'targets') -> None:
  """TargetsError naming the first bad entry: not a {layer: exponents} mapping, an exponent that
  is not an integer in float32's normal range, or (given `layers`, the model's quantizable
  layers) layers the model lacks — which would quantize nothing without a word."""
  if not isinstance(targets, Mapping):
    raise TargetsError(f'{argname}: expected {{layer: exponents}}, got {type(targets).__name__}')
  for name, exponents in targets.items():
    try:
      values = list(np.asarray(exponents).reshape(-1)) if hasattr(exponents, 'shape') else list(
          exponents)
    except TypeError:
      raise TargetsError(f'{argname}[{name!r}] = {exponents!r:.60}: expected a sequence of '
                         'integer exponents') from None
    for e in values:
      if not _is_integer(e) or not MIN_EXPONENT <= int(e) <= MAX_EXPONENT:
        raise TargetsError(f'{argname}[{name!r}] has exponent {e!r}: exponents are integers in '
                           f'[{MIN_EXPONENT}, {MAX_EXPONENT}] (the values are 0 and +-2^e)')
  if layers is not None:
    unknown = sorted(set(targets) - set(layers))
    if unknown:
      raise TargetsError(f'{argname} names layers the model lacks: {unknown[:3]}; its quantizable '
                         f'layers are {sorted(layers)[:6]}' + (' ...' if len(layers) > 6 else ''))


def check_layers(layers, argname: str = 'layers') -> None:
  """TargetsError unless `layers` is a non-empty {name: weights} mapping."""
  if not isinstance(layers, Mapping):
    raise TargetsError(f'{argname}: expected {{layer: weights}} '
                       f'(quant.quantizable_layers(params)), got {type(layers).__name__}')
  if not layers:
    raise TargetsError(f'{argname} is empty: pass quant.quantizable_layers(params), the layers to '
                       'quantize')
  for name, w in layers.items():
    if not hasattr(w, 'shape') or int(np.prod(np.shape(w))) == 0:
      raise TargetsError(f'{argname}[{name!r}] is not a non-empty weight array')


def replace_layers(params, layers: Mapping[str, jax.Array],
                   path_filter: PathFilter = default_path_filter):
  """A copy of `params` where each selected leaf whose layer is in `layers` is replaced."""
  flat = traverse_util.flatten_dict(params)
  out = {path: layers.get(layer_name(path), leaf) if path_filter(path, leaf) else leaf
         for path, leaf in flat.items()}
  return traverse_util.unflatten_dict(out)


# ---------------------------------------------------------------------------------------------
# Target sets.

def inq_exponents(max_abs: float, bits: int) -> tuple[int, ...]:
  """INQ's rule: n1 = floor(log2(4·max|W|/3)), n2 = n1 + 1 − 2^(b−1)/2, exponents n2..n1.

  b bits give 2^(b−2) exponents, i.e. 2^(b−1) + 1 codes, which fit exactly in b bits (b >= 2).
  An all-zero layer gets no exponent (only the zero code).
  """
  if bits < 2:
    raise ValueError(f'INQ needs bits >= 2 (one bit is the zero code), got {bits}')
  if not max_abs > 0:
    return ()
  n1 = math.floor(math.log2(4.0 * float(max_abs) / 3.0))
  n2 = n1 + 1 - 2 ** (bits - 1) // 2
  return tuple(e for e in range(n2, n1 + 1) if MIN_EXPONENT <= e <= MAX_EXPONENT)


def inq_targets(layers: Mapping[str, jax.Array], bits: int) -> dict:
  """INQ target set of every layer from its max |w| (see `inq_exponents`)."""
  max_abs = jax.device_get({name: jnp.max(jnp.abs(w)) for name, w in layers.items()})
  return {name: inq_exponents(float(m), bits) for name, m in max_abs.items()}


def num_codes(num_exponents: int, zero: bool = True) -> int:
  """Codes of a set with n exponents: ±2^e for each e, plus the zero code unless zero=False."""
  return 2 * int(num_exponents) + int(zero)


def bits_per_weight(num_exponents: int, zero: bool = True) -> int:
  """ceil(log2(2n + 1)) (zero-free: ceil(log2(2n))); 0 for a layer with only the zero code."""
  codes = num_codes(num_exponents, zero)
  return int(math.ceil(math.log2(codes))) if codes > 1 else 0


def bits_per_weight_array(num_exponents: jax.Array, zero: bool = True) -> jax.Array:
  """Elementwise, jittable `bits_per_weight` (int32), exact on integers (no float rounding)."""
  n = jnp.asarray(num_exponents, jnp.int32)
  # With zero: ceil(log2(2n+1)) == bit length of 2n for n >= 1. Zero-free: ceil(log2(2n)) ==
  # bit length of 2n - 1.
  codes_below = 2 * n if zero else 2 * n - 1
  return jnp.where(n > 0, 32 - jax.lax.clz(codes_below), 0).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Quantizer and L1 error.

def target_magnitudes(exponents: jax.Array, valid: jax.Array | None = None,
                      zero: bool = True) -> jax.Array:
  """Sorted magnitudes [n + 1]: 0 then 2^e. Invalid (padding) entries become extra zeros.

  zero=False: [n], the 2^e only; padding entries repeat the smallest valid magnitude.
  Duplicate magnitudes (repeated exponents, padding) are harmless for `quantize`: the
  threshold between two equal magnitudes equals them, so either copy gives the same value.
  """
  exponents = jnp.clip(jnp.asarray(exponents, jnp.int32), MIN_EXPONENT, MAX_EXPONENT)
  powers = jnp.ldexp(jnp.ones(exponents.shape, jnp.float32), exponents)  # exact, unlike exp2
  if not zero:
    if valid is not None:
      smallest = jnp.min(jnp.where(valid, powers, jnp.inf))
      powers = jnp.where(valid, powers, smallest)
    return jnp.sort(powers)
  if valid is not None:
    powers = jnp.where(valid, powers, 0.0)
  return jnp.sort(jnp.concatenate([jnp.zeros((1,), jnp.float32), powers]))


def nearest_magnitude(abs_w: jax.Array, magnitudes: jax.Array) -> jax.Array:
  """The quantizer on magnitudes: the largest m_j whose lower threshold (m_{j-1}+m_j)/2 <= |w|."""
  thresholds = 0.5 * (magnitudes[:-1] + magnitudes[1:])
  # Target tables are tiny (<= ~20 entries): comparing against all of them vectorizes best.
  index = jnp.searchsorted(thresholds, abs_w, side='right', method='compare_all')
  return magnitudes[index]


def quantize(w: jax.Array, exponents, valid: jax.Array | None = None,
             zero: bool = True) -> jax.Array:
  """Ŵ = sgn(W)·nearest target magnitude, same shape and dtype float32 as `w`.

  `exponents`: [n] ints (optionally padded, with a bool `valid` mask of the same shape).
  zero=False: the zero-free set {±2^e}; an exact 0 becomes +2^e_1.
  Values already in the set are returned unchanged, bit for bit.
  """
  w = jnp.asarray(w, jnp.float32)
  exponents = jnp.asarray(exponents, jnp.int32).reshape(-1)
  if not zero and exponents.shape[0] == 0:
    raise ValueError('a zero-free target set needs at least one exponent')
  magnitudes = target_magnitudes(exponents,
                                 None if valid is None else jnp.asarray(valid).reshape(-1), zero)
  sign = jnp.sign(w) if zero else jnp.where(w < 0, -1.0, 1.0).astype(jnp.float32)
  return sign * nearest_magnitude(jnp.abs(w), magnitudes)


def quantize_layers(layers: Mapping[str, jax.Array], targets: Targets, zero: bool = True) -> dict:
  """`quantize` every layer that has a target set; others are returned unchanged."""
  return {name: quantize(w, _as_exponent_array(targets[name]), zero=zero) if name in targets
          else w for name, w in layers.items()}


def quantize_params(params, targets: Targets, path_filter: PathFilter = default_path_filter,
                    zero: bool = True):
  """A copy of `params` with every targeted layer quantized (all weights, fraction 1.0).

  An nnx.Module gives a new module with its params quantized (the module passed is unchanged).
  TargetsError for targets naming layers the params lack or non-integer exponents."""
  if interop.is_nnx(params):
    model, variables = interop.split(params)
    return interop.merge(model, {**variables, 'params': quantize_params(
        variables['params'], targets, path_filter, zero)})
  layers = quantizable_layers(params, path_filter)
  check_targets(targets, layers)
  return replace_layers(params, quantize_layers(layers, targets, zero), path_filter)


def l1_error(w: jax.Array, w_hat: jax.Array) -> jax.Array:
  """The L1 error of one layer: Σ |W − Ŵ| (float32 scalar)."""
  return jnp.sum(jnp.abs(jnp.asarray(w, jnp.float32) - jnp.asarray(w_hat, jnp.float32)))


def relative_l1_error(w: jax.Array, w_hat: jax.Array) -> jax.Array:
  """Σ|W − Ŵ| / Σ|W| (0 for an all-zero layer): the scale-free error adaptive k uses."""
  total = jnp.sum(jnp.abs(jnp.asarray(w, jnp.float32)))
  return jnp.where(total > 0, l1_error(w, w_hat) / jnp.where(total > 0, total, 1.0), 0.0)


def in_target_set(w: jax.Array, exponents: Sequence[int], zero: bool = True) -> jax.Array:
  """Bool array: each element is exactly 0 (unless zero=False) or ±2^e with e in `exponents`."""
  values = target_magnitudes(_as_exponent_array(exponents), zero=zero)
  return jnp.any(jnp.abs(jnp.asarray(w, jnp.float32))[..., None] == values, axis=-1)


def _as_exponent_array(exponents: Sequence[int]) -> jax.Array:
  return jnp.asarray(np.asarray(tuple(exponents), np.int32).reshape(-1))
