"""Physical shrink: variables + masks -> a genuinely smaller model and its sliced variables.

For every group the kept channel indices (sorted) slice the producers' output axis (kernel, dense
bias), the BatchNorms' params and statistics, and the consumers' input axis (rows after a flatten:
for spatial position p the rows p * C + kept, in the same (h, w, c) order the smaller model's
flatten produces; after a concatenation each input's slice at its offset). A leaf axis indexed by
several groups is sliced once, with every group's removed positions.

The smaller model: for the zoo, `model.clone(channels=...)` with the kept widths, i.e.
`create_model(name, ..., channels=shrunk_widths(...))` (the JSON spec path of `load_model`); for
the residual group the stage-s width is the number of kept channels in mask[:C_s] (see
`qprune.prune.groups`). For any other Flax model, a `ShrunkModel`: the same module run with the
producers' `features` overridden (see its docstring for the contract and how to save it).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune.models import count_macs, count_params, interop
from qprune.models.base import ZooModel, channel_overrides
from qprune.models.shrunk import ShrunkModel
from qprune.models.shrunk import freeze_overrides as _freeze
from qprune.prune.group_types import Groups
from qprune.prune.masks import axis_slots, check_groups, check_masks, kept_indices


def shrunk_widths(groups: Groups, masks) -> dict[str, int]:
  """{channels-override key: kept width}, e.g. {'conv1': 12, 'stage2': 24}."""
  return {key: int(len(kept_indices(masks[g.name], length)))
          for g in groups for key, length in g.widths}


def _kept_positions(size: int, entries, masks) -> np.ndarray:
  """Sorted indices kept on one leaf axis: every position but the masked-out slot positions."""
  removed = []
  for name, slot in entries:
    keep = np.tile(np.asarray(masks[name], bool)[:slot.length], slot.repeat)
    removed.append(slot.positions()[~keep])
  return np.setdiff1d(np.arange(size), np.concatenate(removed) if removed else [])


def slice_variables(variables, groups: Groups, masks):
  """Variables with masked channels removed (shapes shrink). masks are read on the host."""
  flat = {col: traverse_util.flatten_dict(tree, sep='/') for col, tree in variables.items()}
  for (col, key, axis), entries in axis_slots(groups, flat).items():
    x = flat[col][key]
    idx = _kept_positions(x.shape[axis], entries, masks)
    flat[col][key] = jnp.take(x, idx, axis=x.ndim + axis)
  return {col: traverse_util.unflatten_dict(tree, sep='/') for col, tree in flat.items()}


def width_overrides(variables, groups: Groups, masks) -> dict[str, dict[str, int]]:
  """{producer path: {'features': kept width}} (+ feature_group_count for depthwise convs;
  {'num_groups': kept groups} for a GroupNorm sized by its number of groups)."""
  params = traverse_util.flatten_dict(variables['params'], sep='/')
  out: dict[str, dict[str, int]] = {}
  kept_width: dict[str, int] = {}
  for g in groups:
    for path, kind, _, width in g.channel_norms:
      if kind == 'group':
        slot = next(s for s in g.norms if s.path == path)
        kept_width[path] = kept_width.get(path, width) - int(
            slot.length - np.asarray(masks[g.name], bool)[:slot.length].sum())
  for g in groups:
    for path, kind, block, _ in g.channel_norms:
      if kind == 'group':
        out[path] = {'num_groups': kept_width[path] // block, 'group_size': block}
  for g in groups:
    for slot in g.producers:
      if slot.path in out:
        continue
      entries = axis_slots(groups, {'params': params}).get(('params', f'{slot.path}/kernel', -1))
      size = params[f'{slot.path}/kernel'].shape[-1]
      width = int(len(_kept_positions(size, entries, masks)))
      out[slot.path] = {'features': width}
      if slot.path in g.depthwise:
        out[slot.path]['feature_group_count'] = width
  return out


def _zoo_path(model, groups: Groups) -> bool:
  return isinstance(model, ZooModel) and all(g.widths for g in groups)


def shrunk_model(model, groups: Groups, masks, variables=None):
  """The smaller module.

  Zoo models (groups carrying `widths`): `model.clone(channels=...)` with the kept widths, so the
  JSON spec path (`create_model(..., channels=...)`, `load_model`) rebuilds it. Any other model:
  a `ShrunkModel` with the producers' `features` overridden (needs `variables` for the widths).
  """
  if _zoo_path(model, groups):
    channels = dict(model.channels)
    channels.update(shrunk_widths(groups, masks))
    return model.clone(channels=channel_overrides(channels))
  if variables is None:
    raise ValueError('shrunk_model of a non-zoo model needs variables= (its layer widths)')
  overrides = width_overrides(variables, groups, masks)
  if isinstance(model, interop.NnxModel):
    return model.with_widths(overrides)
  if isinstance(model, ShrunkModel):
    merged = model.overrides_dict()
    for path, fields in overrides.items():
      merged.setdefault(path, {}).update(fields)
    return ShrunkModel(model.model, _freeze(merged))
  return ShrunkModel(model, _freeze(overrides))


def check_shrinkable(variables, groups: Groups | None, masks) -> None:
  """MaskError (a UserError naming the argument) unless groups and masks fit these variables."""
  check_groups(groups, variables)
  assert groups is not None  # check_groups raised MaskError otherwise
  check_masks(groups, masks, boolean=True)


def shrink(model, variables, groups: Groups | None = None, masks=None):
  """(smaller model, its variables); `small.apply(v, x)` == the masked full model's output.

  An nnx.Module in place of (model, variables), `shrink(module, groups, masks)`, gives a new,
  smaller nnx.Module (the module passed is not changed). masks: {group: bool[C]}, True = keep.
  Raises MaskError for masks or groups that do not fit the model (module docstring of masks).
  """
  if interop.is_nnx(model):
    groups, masks = variables, groups
    adapter, plain = interop.split(model)
    check_shrinkable(plain, groups, masks)
    small = slice_variables(plain, groups, masks)
    return interop.set_widths(interop.merge(adapter, small),
                              width_overrides(plain, groups, masks))
  variables = interop.as_variables(variables, 'variables')
  check_shrinkable(variables, groups, masks)
  assert groups is not None  # check_shrinkable raised MaskError otherwise
  return (shrunk_model(model, groups, masks, variables),
          slice_variables(variables, groups, masks))


@interop.accepts_module
def model_cost(model, variables, input_shape) -> dict[str, int]:
  """{'params', 'macs'} of a model: params counted on `variables['params']`, MACs traced."""
  return {'params': count_params(variables['params']),
          'macs': count_macs(model, variables, input_shape)}


@interop.accepts_module
def mask_cost(model, variables, groups: Groups, masks, input_shape) -> dict[str, int]:
  """{'params', 'macs'} of the shrunk model, from shapes only (no arrays are sliced).

  input_shape: (H, W, C) of a uint8 image, or an example input with a batch axis."""
  small = shrunk_model(model, groups, masks, variables)
  shapes = jax.eval_shape(lambda v: slice_variables(v, groups, masks), variables)
  return model_cost(small, shapes, input_shape)


@interop.accepts_module
def shrink_report(model, variables, groups: Groups, masks, input_shape) -> dict[str, float]:
  """params/MACs before and after (counts), and the kept fractions."""
  before = model_cost(model, variables, input_shape)
  after = mask_cost(model, variables, groups, masks, input_shape)
  return {'params_before': before['params'], 'macs_before': before['macs'],
          'params_after': after['params'], 'macs_after': after['macs'],
          'params_kept': after['params'] / before['params'],
          'macs_kept': after['macs'] / before['macs']}
