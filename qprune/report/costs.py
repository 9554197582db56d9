"""Per-layer params and MACs of a model before and after pruning (for report.md's table)."""
from typing import List

import numpy as np
from flax import traverse_util

from qprune.models import counting


def layer_costs(model, variables, input_shape) -> dict:
  """{layer: {'params', 'macs'}} of every conv / dense layer (kernel + bias scalars; MACs per
  image, as `qprune.models.counting.layer_macs`). input_shape: (H, W, C)."""
  macs = counting.layer_macs(model, variables, input_shape)
  params = {}
  for path, leaf in traverse_util.flatten_dict(variables['params']).items():
    layer = '/'.join(path[:-1])
    if layer in macs:
      params[layer] = params.get(layer, 0) + int(np.prod(leaf.shape))
  return {name: {'params': params.get(name, 0), 'macs': m} for name, m in macs.items()}


def layer_cost_rows(model_before, variables_before, model_after, variables_after,
                    input_shape) -> List[dict]:
  """[{name, params_before, params, macs_before, macs}] per layer of the unpruned model
  (results' `layer_costs`; a layer missing after pruning gets 0)."""
  before = layer_costs(model_before, variables_before, input_shape)
  after = layer_costs(model_after, variables_after, input_shape)
  return [{'name': name, 'params_before': b['params'],
           'params': after.get(name, {}).get('params', 0), 'macs_before': b['macs'],
           'macs': after.get(name, {}).get('macs', 0)} for name, b in before.items()]
