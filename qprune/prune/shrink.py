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
import dataclasses
from typing import Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune.models import count_macs, count_params
from qprune.models.base import ZooModel, channel_overrides
from qprune.prune.groups import Groups
from qprune.prune.masks import axis_slots, kept_indices


def shrunk_widths(groups: Groups, masks) -> Dict[str, int]:
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


@dataclasses.dataclass(frozen=True)
class ShrunkModel:
  """A Flax model run with some layers' widths overridden: the shrunk form of any model.

  Contract: every pruned producer is a layer whose `features` field sets its output width
  (`nn.Conv`, `nn.Dense`, `nn.ConvTranspose`, qprune's `layers.Conv`); a depthwise conv also
  gets `feature_group_count = features`. Every other layer must infer its width from its input
  (BatchNorm does). `apply`/`init` run `model` with those fields replaced at call time (an
  `nn.intercept_methods` interceptor on the layers named in `overrides`), so the variable tree,
  layer paths and call signature stay the model's own.

  overrides: ((layer path, ((field, value), ...)), ...). To save a shrunk user model, store
  `dict(small.overrides_dict())` as JSON beside its variables; rebuild it with
  `ShrunkModel.from_dict(YourModel(...), saved)`.
  """
  model: object
  overrides: Tuple[Tuple[str, Tuple[Tuple[str, int], ...]], ...]

  def _intercept(self, next_fun, args, kwargs, context):
    fields = self._table().get('/'.join(context.module.path))
    if fields:
      for field, value in fields:
        if getattr(context.module, field) != value:
          object.__setattr__(context.module, field, value)
    return next_fun(*args, **kwargs)

  def _table(self):
    return dict(self.overrides)

  def apply(self, variables, *args, **kwargs):
    with nn.intercept_methods(self._intercept):
      return self.model.apply(variables, *args, **kwargs)

  def init(self, rngs, *args, **kwargs):
    with nn.intercept_methods(self._intercept):
      return self.model.init(rngs, *args, **kwargs)

  def overrides_dict(self) -> Dict[str, Dict[str, int]]:
    """JSON-able {layer path: {field: value}}."""
    return {path: dict(fields) for path, fields in self.overrides}

  @classmethod
  def from_dict(cls, model, overrides: Mapping[str, Mapping[str, int]]) -> 'ShrunkModel':
    return cls(model, _freeze(overrides))


def _freeze(overrides) -> tuple:
  return tuple(sorted((str(p), tuple(sorted((str(f), int(v)) for f, v in fields.items())))
                      for p, fields in overrides.items()))


def width_overrides(variables, groups: Groups, masks) -> Dict[str, Dict[str, int]]:
  """{producer path: {'features': kept width}} (+ feature_group_count for depthwise convs)."""
  params = traverse_util.flatten_dict(variables['params'], sep='/')
  out: Dict[str, Dict[str, int]] = {}
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
  if isinstance(model, ShrunkModel):
    merged = model.overrides_dict()
    for path, fields in overrides.items():
      merged.setdefault(path, {}).update(fields)
    return ShrunkModel(model.model, _freeze(merged))
  return ShrunkModel(model, _freeze(overrides))


def shrink(model, variables, groups: Groups, masks) -> Tuple[nn.Module, dict]:
  """(smaller model, its variables); `small.apply(v, x)` == masked full model's output."""
  return (shrunk_model(model, groups, masks, variables),
          slice_variables(variables, groups, masks))


def model_cost(model, variables, input_shape) -> Dict[str, int]:
  """{'params', 'macs'} of a model: params counted on `variables['params']`, MACs traced."""
  return {'params': count_params(variables['params']),
          'macs': count_macs(model, variables, input_shape)}


def mask_cost(model, variables, groups: Groups, masks, input_shape) -> Dict[str, int]:
  """{'params', 'macs'} of the shrunk model, from shapes only (no arrays are sliced).

  input_shape: (H, W, C) of a uint8 image, or an example input with a batch axis."""
  small = shrunk_model(model, groups, masks, variables)
  shapes = jax.eval_shape(lambda v: slice_variables(v, groups, masks), variables)
  return model_cost(small, shapes, input_shape)


def shrink_report(model, variables, groups: Groups, masks, input_shape) -> Dict[str, float]:
  """params/MACs before and after (counts), and the kept fractions."""
  before = model_cost(model, variables, input_shape)
  after = mask_cost(model, variables, groups, masks, input_shape)
  return {'params_before': before['params'], 'macs_before': before['macs'],
          'params_after': after['params'], 'macs_after': after['macs'],
          'params_kept': after['params'] / before['params'],
          'macs_kept': after['macs'] / before['macs']}
