"""What every model of the zoo shares: input normalization, dtype, width multiplier, channel
overrides."""
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from qprune.models import layers
from qprune.ops import pool as pool_ops


class ZooModel(nn.Module):
  """Base of the zoo models.

  Inputs are uint8 (or float in [0, 255]) NHWC images; the model normalizes them with `mean`/`std`
  (fractions of 255), so `model.apply(variables, images, train=False)` works on raw dataset images.

  `channels` overrides the output width of named layers, as a tuple of (layer_name, width) pairs
  (hashable, so the model stays a valid Flax dataclass). Pruning builds the physically shrunk model
  this way; `width` scales every default width.
  """
  num_classes: int = 10
  width: float = 1.0
  dtype: Any = jnp.float32
  mean: Sequence[float] = (0.5,)
  std: Sequence[float] = (0.5,)
  conv_impl: str = 'auto'
  channels: tuple[tuple[str, int], ...] = ()

  def ch(self, name: str, default: int) -> int:
    """Output width of layer `name`: the override if any, else `default` scaled by `width`."""
    overrides = dict(self.channels)
    return overrides[name] if name in overrides else layers.scaled(default, self.width)

  def conv(self, name, features, kernel_size=(3, 3), strides=(1, 1), padding='SAME'):
    return layers.Conv(features, kernel_size, strides, padding, dtype=self.dtype,
                       impl=self.conv_impl, name=name)

  def bn(self, name, train):
    return layers.batch_norm(train, name, self.dtype)

  def max_pool(self, x, window, strides=None, padding='VALID'):
    """nn.max_pool (strides default to the window); a custom-VJP form where conv_impl picks the
    CPU-fast ops (`qprune.ops.pool`)."""
    strides = window if strides is None else strides
    return pool_ops.max_pool(x, window, strides, padding, impl=self.conv_impl)

  def dense(self, name, features):
    return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32, name=name)

  def normalize(self, images):
    return layers.normalize_images(images, self.mean, self.std, self.dtype)

  def logits(self, x):
    """Final classifier output, always float32 (stable loss under bf16 compute)."""
    return x.astype(jnp.float32)


def channel_overrides(mapping: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
  return tuple(sorted((str(k), int(v)) for k, v in mapping.items()))
