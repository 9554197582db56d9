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
from typing import Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune.models.layers import BATCH_NORM_TYPES
from qprune.prune.groups import Groups, Slot

Masks = Dict[str, jax.Array]


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
  out: Dict[tuple, list] = {}
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


def apply_masks(variables, groups: Groups, masks: Mapping[str, jax.Array]):
  """Variables with masked channels zeroed (see module docstring). Pure; jit/vmap friendly.

  variables: {'params', 'batch_stats'}; masks: {group: bool[C]} (float masks also work: they
  scale). BN running statistics are left as they are: they do not matter once scale = bias = 0.
  """
  flat = {'params': traverse_util.flatten_dict(variables['params'], sep='/')}
  params = flat['params']
  for (_, key, axis), entries in axis_slots(groups, flat, stats=False).items():
    x = params[key]
    dtype = jnp.result_type(*[jnp.asarray(masks[n]).dtype for n, _ in entries], x.dtype)
    _scale(params, key, _axis_factor(x.shape[axis], entries, masks, dtype), axis)
  out = dict(variables)
  out['params'] = traverse_util.unflatten_dict(params, sep='/')
  return out


def gate_points(groups: Groups) -> Dict[str, tuple]:
  """{module path: ((group name, slot), ...)} of every gated activation."""
  points: Dict[str, tuple] = {}
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


def apply_with_gates(model: nn.Module, variables, images, groups: Groups,
                     gates: Optional[Mapping[str, jax.Array]] = None, *, train: bool = False,
                     bn_stats: Optional[dict] = None, activations: Optional[dict] = None):
  """Logits of `model` with group activations multiplied by `gates` ({group: f32[C]}).

  images: uint8 [N, H, W, C_img]. Returns float32 logits [N, classes].
  train=True normalizes with batch statistics (running statistics are not updated).
  bn_stats: if a dict, filled with {bn path: (mean[C], var[C])} of every BatchNorm's *input*
    (float32, over all axes but the last) — used to re-estimate statistics after masking.
  activations: if a dict, filled with {gated module path: output before gating}.
  The dicts are filled at trace time with traced values: use them inside the same function.
  """
  points = gate_points(groups) if gates is not None else {}

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != '__call__':
      return out
    module = context.module
    path = '/'.join(module.path)
    if bn_stats is not None and isinstance(module, BATCH_NORM_TYPES):
      x = args[0].astype(jnp.float32)
      axes = _reduce_axes(x)
      bn_stats[path] = (x.mean(axes), x.var(axes))
    if path in points:
      if activations is not None:
        activations[path] = out
      out = out * _gate_vector(points[path], gates, out.shape[-1], out.dtype)
    return out

  with nn.intercept_methods(intercept):
    if train:
      logits, _ = model.apply(variables, images, train=True, mutable=['batch_stats'])
    else:
      logits = model.apply(variables, images, train=False)
  return logits


def kept_indices(mask, length: Optional[int] = None) -> np.ndarray:
  """Host-side sorted indices of kept channels in mask[:length]."""
  mask = np.asarray(mask, bool)
  return np.flatnonzero(mask if length is None else mask[:length])


def kept_counts(groups: Groups, masks) -> Dict[str, int]:
  return {g.name: int(np.asarray(masks[g.name], bool).sum()) for g in groups}


def stack_masks(mask_list) -> Masks:
  """[masks_1, ..., masks_K] -> {group: bool[K, C]} for vmapped evaluation."""
  return jax.tree_util.tree_map(lambda *m: jnp.stack(m), *mask_list)


