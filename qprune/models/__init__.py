"""Model zoo: a registry of CIFAR/MNIST CNNs built from `qprune.models.layers`.

`create_model(name, num_classes, ...)` returns a Flax module; `init_variables` its variables.
"""
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qprune.errors import UserError
from qprune.models.alexnet import AlexNet
from qprune.models.base import ZooModel, channel_overrides
from qprune.models.counting import (
  count_macs,
  count_params,
  layer_cost_rows,
  layer_costs,
  layer_macs,
)
from qprune.models.lenet import LeNet5
from qprune.models.resnet import ResNetCifar
from qprune.models.vgg import VGG


class ModelArgumentError(UserError):
  """A bad argument to create_model (the message names it)."""


MODELS: dict[str, Callable[..., ZooModel]] = {
    'lenet5': LeNet5,
    'alexnet': AlexNet,
    'vgg11': functools.partial(VGG, depth=11),
    'vgg16': functools.partial(VGG, depth=16),
    'vgg19': functools.partial(VGG, depth=19),
    'resnet20': functools.partial(ResNetCifar, depth=20),
    'resnet32': functools.partial(ResNetCifar, depth=32),
    'resnet56': functools.partial(ResNetCifar, depth=56),
    'resnet110': functools.partial(ResNetCifar, depth=110),
}


def create_model(name: str, num_classes: int, *, width: float = 1.0, dtype: Any = jnp.float32,
                 mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,),
                 conv_impl: str = 'auto', channels=()) -> ZooModel:
  """Builds a zoo model. `channels` maps layer names to widths (see ZooModel).

  ModelArgumentError (a UserError naming the argument) for an unknown name, num_classes < 1, a
  width <= 0, mean/std of different lengths or std <= 0, a channel width < 1."""
  if name not in MODELS:
    raise ModelArgumentError(f'unknown model {name!r}; choose one of {sorted(MODELS)}')
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or \
      num_classes < 1:
    raise ModelArgumentError(f'num_classes must be an integer >= 1, got {num_classes!r}')
  if not isinstance(width, (int, float)) or not 0 < width < float('inf'):
    raise ModelArgumentError(f'width is a multiplier of every layer width, > 0; got {width!r}')
  if len(tuple(mean)) != len(tuple(std)) or not tuple(mean) or any(s <= 0 for s in std):
    raise ModelArgumentError(f'mean and std are per-channel fractions of 255 of the same length, '
                             f'std > 0; got mean={tuple(mean)}, std={tuple(std)}')
  if isinstance(channels, dict):
    channels = channel_overrides(channels)
  bad = [(k, v) for k, v in channels if not isinstance(v, (int, np.integer)) or v < 1]
  if bad:
    raise ModelArgumentError(f'channels[{bad[0][0]!r}] = {bad[0][1]!r}: layer widths are integers '
                             '>= 1')
  return MODELS[name](num_classes=num_classes, width=width, dtype=dtype, mean=tuple(mean),
                      std=tuple(std), conv_impl=conv_impl, channels=tuple(channels))


def init_variables(model: ZooModel, rng: jax.Array, input_shape: Sequence[int]):
  """{'params', 'batch_stats'} for NHWC input of shape (H, W, C).

  Shapes come from an abstract trace (no compile); values are drawn with NumPy from a seed taken
  from `rng`: conv kernels He-normal, std sqrt(2 / (kh*kw*C_in)) (He et al. 2015, as the CIFAR
  ResNet paper uses); dense kernels LeCun-normal, std sqrt(1 / fan_in); biases and BN shifts 0,
  BN scales 1, running means 0 and variances 1. Compiling XLA's threefry initializers for every
  leaf cost tens of seconds per model on CPU; this costs milliseconds and is just as
  deterministic.
  """
  images = jax.ShapeDtypeStruct((1, *input_shape), jnp.uint8)
  abstract = jax.eval_shape(lambda r, x: model.init(r, x, train=False), rng, images)
  seed = np.asarray(jax.random.key_data(rng)).astype(np.uint64).tolist()
  np_rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      gain = 2.0 if len(leaf.shape) == 4 else 1.0
      value = np_rng.standard_normal(leaf.shape) * np.sqrt(gain / fan_in)
    elif name in ('scale', 'var'):
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)
