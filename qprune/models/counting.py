"""Parameter and MAC counts, read off the model itself (so they stay right for shrunk models).

MACs are counted for every call of a conv or dense layer of any Flax model, traced abstractly
(`jax.eval_shape`, no FLOPs spent) with `nn.intercept_methods`:
* `nn.Conv` and qprune's `layers.Conv` (any stride, padding, dilation, feature_group_count):
  output positions x kernel size, i.e. H_out * W_out * kh * kw * (C_in / groups) * C_out;
  positions in the padding count (the usual convention; XLA's cost analysis skips them, so the
  two agree exactly for VALID padding);
* `nn.ConvTranspose`: input positions x kernel size (each input pixel meets every weight once);
* `nn.Dense`: positions x in x out (positions = 1 for a [N, in] input).
A layer called twice counts twice. Other layers (attention einsums, custom matmuls) are not
counted.
"""
import inspect
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qprune.models import interop, layers

COUNTED_TYPES = layers.CONV_TYPES + layers.DENSE_TYPES


def count_params(params) -> int:
  """Number of scalars in a param pytree (pass `variables['params']`; BN statistics excluded),
  or of an nnx.Module's nnx.Param variables."""
  params = interop.params_of(params)
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))


def example_struct(example_input) -> jax.ShapeDtypeStruct:
  """An input with a batch axis (array or ShapeDtypeStruct) -> its ShapeDtypeStruct."""
  if not hasattr(example_input, 'shape') or not hasattr(example_input, 'dtype'):
    raise ValueError(f'example_input must be an array or jax.ShapeDtypeStruct with a batch axis, '
                     f'got {type(example_input).__name__}')
  return jax.ShapeDtypeStruct(tuple(example_input.shape), example_input.dtype)


def _takes_train(model) -> bool:
  inner = model
  while not isinstance(inner, nn.Module) and hasattr(inner, 'model'):  # prune.ShrunkModel
    inner = inner.model
  try:
    params = inspect.signature(type(inner).__call__).parameters
  except (TypeError, ValueError):
    return True
  return 'train' in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def call_model(model, variables, x):
  """model.apply(variables, x, train=False) (how qprune runs every model in eval mode); plain
  `model.apply(variables, x)` for a module whose __call__ has no `train` argument (nn.Dense)."""
  if _takes_train(model):
    return model.apply(variables, x, train=False)
  return model.apply(variables, x)


def _per_example_input(input_shape, example_input):
  if example_input is None and input_shape is not None and hasattr(input_shape, 'dtype'):
    input_shape, example_input = None, input_shape
  if example_input is not None:
    x = example_struct(example_input)
    return jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
  if input_shape is None:
    raise ValueError('give input_shape (H, W, C) or example_input (with a batch axis)')
  return jax.ShapeDtypeStruct((1, *input_shape), jnp.uint8)


def _kernel_size(module) -> int:
  if interop.is_nnx(module):
    return int(np.prod(np.shape(module.kernel.get_value())))
  kernel = module.variables['params']['kernel']
  return int(np.prod(kernel.shape))


def layer_macs(model: Any, variables=None,
               input_shape: Sequence[int] | jax.ShapeDtypeStruct | None = None, *,
               example_input=None) -> dict:
  """Inference multiply-accumulates per example of every conv and dense layer.

  Returns {layer_path: macs}, path joined with '/', e.g. 'stage1_block1/conv1' (see the module
  docstring for the formulas). input_shape: (H, W, C) of a uint8 image; or example_input, an
  array / ShapeDtypeStruct with a batch axis (counted for one example). A positional array or
  ShapeDtypeStruct in place of input_shape is taken as example_input.
  """
  macs = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and isinstance(module, COUNTED_TYPES):
      x = args[0]
      path = interop.layer_path(context)
      if isinstance(module, layers.DENSE_TYPES):
        count = int(np.prod(out.shape[1:])) * int(x.shape[-1])
      elif isinstance(module, layers.TRANSPOSE_CONV_TYPES):
        count = int(np.prod(x.shape[1:-1])) * _kernel_size(module)
      else:
        count = int(np.prod(out.shape[1:-1])) * _kernel_size(module)
      macs[path] = macs.get(path, 0) + count
    return out

  if interop.is_nnx(model):  # layer_macs(module, example_input)
    if variables is not None and input_shape is None and example_input is None:
      variables, example_input = None, variables
    model, variables = interop.split(model)
  x = _per_example_input(input_shape, example_input)
  with interop.intercept_layers(interceptor):
    jax.eval_shape(lambda v, x: call_model(model, v, x), variables, x)
  return macs


def count_macs(model: Any, variables=None,
               input_shape: Sequence[int] | jax.ShapeDtypeStruct | None = None, *,
               example_input=None) -> int:
  """Total inference MACs per example (conv + dense). input_shape is (H, W, C) of a uint8 image,
  or pass example_input (array / ShapeDtypeStruct with a batch axis); see `layer_macs`.
  An nnx.Module takes the place of (model, variables): `count_macs(module, example_input)`."""
  return int(sum(layer_macs(model, variables, input_shape, example_input=example_input).values()))


def layer_costs(model: nn.Module, variables, input_shape: Sequence[int]) -> dict:
  """{layer: {'params', 'macs'}} of every conv / dense layer: its kernel and bias scalars, and
  its MACs per image (`layer_macs`). input_shape: (H, W, C)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  macs = layer_macs(model, variables, input_shape)
  params = {}
  for path, leaf in traverse_util.flatten_dict(variables['params']).items():
    layer = '/'.join(path[:-1])
    if layer in macs:
      params[layer] = params.get(layer, 0) + int(np.prod(leaf.shape))
  return {name: {'params': params.get(name, 0), 'macs': m} for name, m in macs.items()}


def layer_cost_rows(model_before: nn.Module, variables_before, model_after: nn.Module,
                    variables_after, input_shape: Sequence[int]) -> list:
  """[{name, params_before, params, macs_before, macs}] per conv / dense layer of the model
  before pruning (a layer gone after pruning gets 0)."""
  before = layer_costs(model_before, variables_before, input_shape)
  after = layer_costs(model_after, variables_after, input_shape)
  return [{'name': name, 'params_before': b['params'],
           'params': after.get(name, {}).get('params', 0), 'macs_before': b['macs'],
           'macs': after.get(name, {}).get('macs', 0)} for name, b in before.items()]
