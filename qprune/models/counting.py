"""Parameter and MAC counts, read off the model itself (so they stay right for shrunk models)."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qprune.models import layers


def count_params(params) -> int:
  """Number of scalars in a param pytree (pass `variables['params']`; BN statistics excluded)."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def layer_macs(model: nn.Module, variables, input_shape: Sequence[int]) -> dict:
  """Inference multiply-accumulates per image of every conv and dense layer.

  Returns {layer_path: macs}, path joined with '/', e.g. 'stage1_block1/conv1'. Conv:
  H_out * W_out * kh * kw * C_in * C_out; dense: in * out. Traced abstractly (no FLOPs spent).
  """
  macs = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and isinstance(module, (layers.Conv, nn.Dense)):
      x = args[0]
      path = '/'.join(module.path)
      if isinstance(module, layers.Conv):
        kh, kw = module.kernel_size
        macs[path] = int(np.prod(out.shape[1:]) * kh * kw * x.shape[-1])
      else:
        macs[path] = int(x.shape[-1] * out.shape[-1])
    return out

  images = jax.ShapeDtypeStruct((1, *input_shape), jnp.uint8)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  return macs


def count_macs(model: nn.Module, variables, input_shape: Sequence[int]) -> int:
  """Total inference MACs per image (conv + dense). input_shape is (H, W, C)."""
  return int(sum(layer_macs(model, variables, input_shape).values()))
