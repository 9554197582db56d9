"""Channel masks: compact pytrees {group_name: bool[C]} and the two ways to apply them.

* `apply_masks` zeroes weights: the producers' filters (and dense biases), the BatchNorm scale and
  bias, and the consumers' input slices. A masked channel's BN output is then 0 * x_hat + 0 = 0
  whatever its statistics, so the full-size masked model computes exactly what the shrunk model
  does (`qprune.prune.shrink`).
* `apply_with_gates` runs the model with each group's activation (the output of its BN, or of its
  dense producer) multiplied by a per-channel gate. Gates = masks gives the same function as
  `apply_masks` but keeps the weights unbatched, which is what makes a vmap over K candidate masks
  cheap (XLA folds K into the batch dimension instead of running grouped convolutions). Gates = 1
  with gradients gives the first-order Taylor score; the recorded activations feed `attention`.
"""
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune.errors import UserError
from qprune.models import interop
from qprune.models.counting import call_model
from qprune.models.layers import BATCH_NORM_TYPES
from qprune.prune.group_types import ChannelGroup, Groups, Slot

Masks = dict[str, jax.Array]


def full_masks(groups: Groups) -> Masks:
  """All-kept masks."""
  return {g.name: jnp.ones((g.size,), bool) for g in groups}


def _slot_mask(mask, slot: Slot):
  """Group mask -> the vector for this slot: the prefix mask[:length], tiled `repeat` times."""
  return jnp.tile(mask[:slot.length], slot.repeat)


# (collection, leaf name, axis) of every tensor axis a member's slot indexes.
PRODUCER_AXES = (('params', 'kernel', -1), ('params', 'bias', -1))
NORM_AXES = (('params', 'scale', -1), ('params', 'bias', -1), ('batch_stats', 'mean', -1),
             ('batch_stats', 'var', -1))
CONSUMER_AXES = (('params', 'kernel', -2),)


def axis_slots(groups: Groups, flat, *, stats: bool = True):
  """{(collection, leaf key, axis): [(group name, slot), ...]} for the leaves present in `flat`.

  flat: {collection: {'a/b/kernel': leaf}}. A leaf axis may be indexed by several slots (a
  consumer after a concatenation reads several groups at different offsets).
  """
  out: dict[tuple, list] = {}
  for g in groups:
    for slots, axes in ((g.producers, PRODUCER_AXES), (g.norms, NORM_AXES),
                        (g.consumers, CONSUMER_AXES)):
      for slot in slots:
        for col, leaf, axis in axes:
          if not stats and col == 'batch_stats':
            continue
          key = f'{slot.path}/{leaf}'
          if key in flat.get(col, {}):
            out.setdefault((col, key, axis), []).append((g.name, slot))
  return out


def _axis_factor(size, entries, masks, dtype):
  """Per-position multiplier of one leaf axis: 1 where no group slot lies, else the slot mask."""
  factor = jnp.ones((size,), dtype)
  for name, slot in entries:
    values = _slot_mask(jnp.asarray(masks[name]), slot).astype(dtype)
    factor = factor.at[slot.positions()].set(values)
  return factor


def _scale(flat, key, factor, axis):
  """flat[key] *= factor broadcast along `axis` (negative)."""
  x = flat[key]
  shape = [1] * x.ndim
  shape[axis] = factor.shape[0]
  flat[key] = x * factor.reshape(shape).astype(x.dtype)


class MaskError(UserError):
  """Masks or groups that do not fit the model (another model's, too short, all-False, scores)."""


def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_groups(groups: Groups | None, variables, argname: str = 'groups') -> None:
  """MaskError unless every group member is a layer of `variables` with room for its slot
  (catches another model's groups before anything is sliced)."""
  if not isinstance(groups, (tuple, list)) or not all(isinstance(g, ChannelGroup)
                                                      for g in groups):
    raise MaskError(f'{argname}: expected the tuple of ChannelGroup from prune.derive_groups, got '
                    f'{type(groups).__name__}')
  params = traverse_util.flatten_dict(variables['params'], sep='/')
  for g in groups:
    for what, slots, leaf, axis in (('producer', g.producers, 'kernel', -1),
                                    ('consumer', g.consumers, 'kernel', -2)):
      for slot in slots:
        kernel = params.get(f'{slot.path}/{leaf}')
        if kernel is None:
          raise MaskError(f'{argname}: group {g.name!r} has {what} {slot.path!r}, which these '
                          'variables lack (groups of another model? derive them from this one)')
        need = int(slot.positions().max()) + 1 if slot.length else 0
        if np.shape(kernel)[axis] < need:
          raise MaskError(f'{argname}: group {g.name!r} needs {need} channels on {slot.path!r}, '
                          f'which has {np.shape(kernel)[axis]} (groups of another model, or of '
                          'this model before it was shrunk?)')


def check_masks(groups: Groups, masks, argname: str = 'masks', *, boolean: bool = False) -> None:
  """MaskError naming the first mask that does not fit `groups`: missing or extra groups, a
  wrong length, float scores where bool masks are needed (boolean=True), a prefix that keeps no
  channel, a GroupNorm group kept in part. Values are checked only outside jit."""
  if not isinstance(masks, Mapping):
    raise MaskError(f'{argname}: expected {{group name: bool[C]}}, got {type(masks).__name__}')
  names = [g.name for g in groups]
  missing = [n for n in names if n not in masks]
  extra = sorted(set(masks) - set(names))
  if extra:
    raise MaskError(f'{argname} has groups {extra[:3]} that these groups lack (masks of another '
                    f'model?); groups are {names[:6]}')
  if missing:
    raise MaskError(f'{argname} lacks groups {missing[:3]} (masks of another model?)')
  for g in groups:
    m = masks[g.name]
    shape = tuple(np.shape(m))
    if shape != (g.size,):
      raise MaskError(f'{argname}[{g.name!r}] has shape {shape}; the group has {g.size} channels')
    dtype = jnp.result_type(m)
    if boolean and dtype != jnp.bool_:
      raise MaskError(f'{argname}[{g.name!r}] is {dtype}, not bool: pass masks (True = keep), '
                      'e.g. from prune.make_masks; turn scores into masks with prune.select')
    if not _concrete(m):
      continue
    keep = np.asarray(m) != 0
    for length in g.prefix_lengths:
      if not keep[:length].any():
        raise MaskError(f'{argname}[{g.name!r}] keeps no channel' +
                        (f' of its first {length}' if length < g.size else '') +
                        ': every group must keep at least one')
    if g.block > 1 and (keep.reshape(-1, g.block) != keep.reshape(-1, g.block)[:, :1]).any():
      raise MaskError(f'{argname}[{g.name!r}] keeps part of a GroupNorm group: its channels go in '
                      f'groups of {g.block} (prune.make_masks keeps whole groups)')


def apply_masks(variables, groups: Groups, masks: Mapping[str, jax.Array]):
  """Variables with masked channels zeroed (see module docstring). Pure; jit/vmap friendly.

  variables: {'params', 'batch_stats'}; masks: {group: bool[C]} (float masks also work: they
  scale). BN running statistics are left as they are: they do not matter once scale = bias = 0.
  An nnx.Module in place of variables gives a new module with masked weights (the module passed
  is not changed). For groups with a LayerNorm / RMSNorm the masked function (== the shrunk
  model) is `apply_with_gates(model, variables, x, groups, masks)`: such a norm must leave the
  masked channels out of its statistics, which zeroed weights alone cannot do.
  """
  if interop.is_nnx(variables):
    model, plain = interop.split(variables)
    return interop.merge(model, apply_masks(plain, groups, masks))
  variables = interop.as_variables(variables, 'variables')
  check_masks(groups, masks)
  flat = {'params': traverse_util.flatten_dict(variables['params'], sep='/')}
  params = flat['params']
  for (_, key, axis), entries in axis_slots(groups, flat, stats=False).items():
    x = params[key]
    dtype = jnp.result_type(*[jnp.asarray(masks[n]).dtype for n, _ in entries], x.dtype)
    _scale(params, key, _axis_factor(x.shape[axis], entries, masks, dtype), axis)
  out = dict(variables)
  out['params'] = traverse_util.unflatten_dict(params, sep='/')
  return out


def gate_points(groups: Groups) -> dict[str, tuple]:
  """{module path: ((group name, slot), ...)} of every gated activation."""
  points: dict[str, tuple] = {}
  for g in groups:
    for slot in g.gates:
      points[slot.path] = points.get(slot.path, ()) + ((g.name, slot),)
  return points


def _gate_vector(entries, gates, size, dtype):
  if len(entries) == 1 and entries[0][1].offset == 0 and entries[0][1].length == size:
    name, slot = entries[0]
    return gates[name][:slot.length].astype(dtype)
  factor = jnp.ones((size,), dtype)
  for name, slot in entries:
    factor = factor.at[slot.offset:slot.offset + slot.length].set(
        gates[name][:slot.length].astype(dtype))
  return factor


def _reduce_axes(x):
  return tuple(range(x.ndim - 1))


def coupled_points(groups: Groups):
  """({channel-norm path: (kind, ((group name, slot), ...))}, {consumer path: ((group, slot),
  ...)}): the LayerNorm / RMSNorm / GroupNorm layers get masked statistics, and every consumer
  reads gated inputs in masked evaluation. The consumer gates matter where a group's activation
  is not gated everywhere: a producer without a norm added to a normalized stream, a stream only
  normalized by LayerNorms (they are stop-gradient, so Taylor scores stay the gate gradients)."""
  norms: dict[str, tuple] = {}
  consumers: dict[str, tuple] = {}
  for g in groups:
    for slot in g.consumers:
      consumers[slot.path] = consumers.get(slot.path, ()) + ((g.name, slot),)
    kinds = {n[0]: n[1] for n in g.channel_norms}
    for slot in g.norms:
      if slot.path in kinds:
        kind, entries = norms.get(slot.path, (kinds[slot.path], ()))
        norms[slot.path] = (kind, entries + ((g.name, slot),))
  return norms, consumers


def _norm_leaves(module):
  """(scale or None, bias or None) of a Linen or NNX norm layer, inside its call."""
  if interop.is_nnx(module):
    get = lambda name: (None if getattr(module, name, None) is None
                        else getattr(module, name).get_value())
    return get('scale'), get('bias')
  params = module.variables.get('params', {})
  return params.get('scale'), params.get('bias')


def masked_norm(module, kind: str, x, keep):
  """LayerNorm (kind 'layer') or RMSNorm ('rms') of x over its last axis, with statistics over
  the channels where keep != 0 only: what the shrunk layer computes on the kept channels."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  keep = keep.astype(jnp.float32)
  count = jnp.maximum(keep.sum(), 1.0)
  eps = getattr(module, 'epsilon', 1e-6)
  if kind == 'rms':
    y = x * jax.lax.rsqrt((jnp.square(x) * keep).sum(-1, keepdims=True) / count + eps)
  else:
    mean = (x * keep).sum(-1, keepdims=True) / count
    var = (jnp.square(x - mean) * keep).sum(-1, keepdims=True) / count
    y = (x - mean) * jax.lax.rsqrt(var + eps)
  scale, bias = _norm_leaves(module)
  if scale is not None:
    y = y * scale.astype(jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  out_dtype = getattr(module, 'dtype', None) or dtype
  return y.astype(out_dtype)


def _positions_factor(entries, gates, size, dtype):
  """Per-position 0/1 factor of a consumer's input axis (offsets, flatten tiles): 0 where a gate
  is 0. Binary and stop-gradient, so that gates other than 0 act once, at the gate point (the
  Taylor score stays the gate gradient, a fractional gate is not applied twice)."""
  factor = jnp.ones((size,), dtype)
  for name, slot in entries:
    kept = jax.lax.stop_gradient(gates[name][:slot.length]) != 0  # which channels, not how much
    values = jnp.tile(kept, slot.repeat)
    factor = factor.at[slot.positions()].set(values.astype(dtype))
  return factor


def apply_with_gates(model: Any, variables, images, groups: Any,
                     gates: Any = None, *, train: bool = False,
                     bn_stats: dict | None = None, activations: dict | None = None):
  """Logits of `model` with group activations multiplied by `gates` ({group: f32[C]}).

  images: uint8 [N, H, W, C_img]. Returns float32 logits [N, classes].
  train=True normalizes with batch statistics (running statistics are not updated).
  bn_stats: if a dict, filled with {bn path: (mean[C], var[C])} of every BatchNorm's *input*
    (float32, over all axes but the last) — used to re-estimate statistics after masking.
  activations: if a dict, filled with {gated module path: output before gating}.
  The dicts are filled at trace time with traced values: use them inside the same function.
  Groups with a LayerNorm / RMSNorm normalize over the gated-in channels only, and their
  consumers read gated inputs, so gates = masks computes exactly what the shrunk model does.
  An nnx.Module takes the place of (model, variables): apply_with_gates(module, images, ...).
  """
  if interop.is_nnx(model):  # apply_with_gates(module, images, groups, gates)
    adapter, plain = interop.split(model)
    return apply_with_gates(adapter, plain, variables, images, groups, train=train,
                            bn_stats=bn_stats, activations=activations)
  points = gate_points(groups) if gates is not None else {}
  norms, consumers = coupled_points(groups) if gates is not None else ({}, {})

  def intercept(next_fun, args, kwargs, context):
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    module = context.module
    path = interop.layer_path(context)
    if path in consumers and args and hasattr(args[0], 'shape'):
      x = args[0]
      x = x * _positions_factor(consumers[path], gates, x.shape[-1], x.dtype)
      args = (x,) + tuple(args[1:])
    if path in norms and norms[path][0] in ('layer', 'rms'):
      x = args[0]
      keep = jax.lax.stop_gradient(
          _gate_vector(norms[path][1], gates, x.shape[-1], jnp.float32)) != 0
      out = masked_norm(module, norms[path][0], x, keep)
    else:
      out = next_fun(*args, **kwargs)
    if bn_stats is not None and isinstance(module, BATCH_NORM_TYPES):
      x = args[0].astype(jnp.float32)
      axes = _reduce_axes(x)
      bn_stats[path] = (x.mean(axes), x.var(axes))
    if path in points:
      if activations is not None:
        activations[path] = out
      out = out * _gate_vector(points[path], gates, out.shape[-1], out.dtype)
    return out

  with interop.intercept_layers(intercept):
    if train:
      logits, _ = model.apply(variables, images, train=True, mutable=['batch_stats'])
    else:
      logits = call_model(model, variables, images)
  return logits


def kept_indices(mask, length: int | None = None) -> np.ndarray:
  """Host-side sorted indices of kept channels in mask[:length]."""
  mask = np.asarray(mask, bool)
  return np.flatnonzero(mask if length is None else mask[:length])


def kept_counts(groups: Groups, masks) -> dict[str, int]:
  return {g.name: int(np.asarray(masks[g.name], bool).sum()) for g in groups}


def stack_masks(mask_list) -> Masks:
  """[masks_1, ..., masks_K] -> {group: bool[K, C]} for vmapped evaluation."""
  return jax.tree_util.tree_map(lambda *m: jnp.stack(m), *mask_list)


