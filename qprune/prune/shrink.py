"""Physical shrink: variables + masks -> a genuinely smaller zoo model and its sliced variables.

For every group the kept channel indices (sorted) slice the producers' output axis (kernel, dense
bias), the BatchNorms' params and statistics, and the consumers' input axis (rows after a flatten:
for spatial position p the rows p * C + kept, in the same (h, w, c) order the smaller model's
flatten produces). The smaller model is `model.clone(channels=...)` with the kept widths, i.e.
`create_model(name, ..., channels=shrunk_widths(...))`. For the residual group the stage-s width
is the number of kept channels in mask[:C_s] (see `qprune.prune.groups`).
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune.models import count_macs, count_params
from qprune.models.base import channel_overrides
from qprune.prune.groups import Groups, Slot
from qprune.prune.masks import kept_indices


def shrunk_widths(groups: Groups, masks) -> Dict[str, int]:
  """{channels-override key: kept width}, e.g. {'conv1': 12, 'stage2': 24}."""
  return {key: int(len(kept_indices(masks[g.name], length)))
          for g in groups for key, length in g.widths}


def _slot_indices(mask, slot: Slot) -> np.ndarray:
  kept = kept_indices(mask, slot.length)
  return (np.arange(slot.repeat)[:, None] * slot.length + kept[None, :]).ravel()


def _take(flat, key, idx, axis):
  if key in flat:
    flat[key] = jnp.take(flat[key], idx, axis=flat[key].ndim + axis)


def slice_variables(variables, groups: Groups, masks):
  """Variables with masked channels removed (shapes shrink). masks are read on the host."""
  flat = {col: traverse_util.flatten_dict(tree, sep='/') for col, tree in variables.items()}
  params = flat['params']
  stats = flat.get('batch_stats', {})
  for g in groups:
    mask = np.asarray(masks[g.name], bool)
    for slot in g.producers:
      idx = _slot_indices(mask, slot)
      _take(params, f'{slot.path}/kernel', idx, -1)
      _take(params, f'{slot.path}/bias', idx, -1)
    for slot in g.norms:
      idx = _slot_indices(mask, slot)
      for key in ('scale', 'bias'):
        _take(params, f'{slot.path}/{key}', idx, -1)
      for key in ('mean', 'var'):
        _take(stats, f'{slot.path}/{key}', idx, -1)
    for slot in g.consumers:
      _take(params, f'{slot.path}/kernel', _slot_indices(mask, slot), -2)
  return {col: traverse_util.unflatten_dict(tree, sep='/') for col, tree in flat.items()}


def shrunk_model(model, groups: Groups, masks):
  """The smaller module: existing channel overrides updated with the kept widths."""
  channels = dict(model.channels)
  channels.update(shrunk_widths(groups, masks))
  return model.clone(channels=channel_overrides(channels))


def shrink(model, variables, groups: Groups, masks) -> Tuple[object, dict]:
  """(smaller model, its variables); `small.apply(v, x)` == masked full model's output."""
  return shrunk_model(model, groups, masks), slice_variables(variables, groups, masks)


def model_cost(model, variables, input_shape) -> Dict[str, int]:
  """{'params', 'macs'} of a model: params counted on `variables['params']`, MACs traced."""
  return {'params': count_params(variables['params']),
          'macs': count_macs(model, variables, input_shape)}


def mask_cost(model, variables, groups: Groups, masks, input_shape) -> Dict[str, int]:
  """{'params', 'macs'} of the shrunk model, from shapes only (no arrays are sliced)."""
  small = shrunk_model(model, groups, masks)
  shapes = jax.eval_shape(lambda v: slice_variables(v, groups, masks), variables)
  return model_cost(small, shapes, input_shape)


def shrink_report(model, variables, groups: Groups, masks, input_shape) -> Dict[str, int]:
  """params/MACs before and after, and the kept fractions."""
  before = model_cost(model, variables, input_shape)
  after = mask_cost(model, variables, groups, masks, input_shape)
  return {'params_before': before['params'], 'macs_before': before['macs'],
          'params_after': after['params'], 'macs_after': after['macs'],
          'params_kept': after['params'] / before['params'],
          'macs_kept': after['macs'] / before['macs']}
