"""CIFAR ResNet-20/32/56/110 (He et al. 2016, section 4.2): depth = 6n + 2.

stem_conv 3x3x16 -> stage1 (n blocks, 16 ch) -> stage2 (n blocks, 32 ch, stride 2) -> stage3 (n
blocks, 64 ch, stride 2) -> global average pool -> fc. Each block `stage{s}_block{b}` is
conv1-bn1-relu-conv2-bn2 + shortcut, then relu. Shortcuts are option A (parameter-free): identity,
or at a stage change stride-2 subsampling with zero-padded extra channels, which gives ResNet-20
its 0.27M params and 41M MACs.

Channel overrides: `stage{s}_block{b}/conv1` sets a block's internal width; `stage{s}` the width of
stage s's residual stream (stem_conv, every conv2 of the stage).
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from qprune.models import layers
from qprune.models.base import ZooModel

STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
  inner: int
  out: int
  stride: int
  dtype: Any = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train):
    conv = functools.partial(layers.Conv, dtype=self.dtype, impl=self.conv_impl)
    y = conv(self.inner, strides=(self.stride, self.stride), name='conv1')(x)
    y = nn.relu(layers.batch_norm(train, 'bn1', self.dtype)(y))
    y = conv(self.out, name='conv2')(y)
    y = layers.batch_norm(train, 'bn2', self.dtype)(y)
    shortcut = x[:, ::self.stride, ::self.stride, :] if self.stride > 1 else x
    extra = self.out - x.shape[-1]
    if extra > 0:
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, extra)))
    elif extra < 0:
      shortcut = shortcut[..., :self.out]
    return nn.relu(y + shortcut)


class ResNetCifar(ZooModel):
  depth: int = 20

  @nn.compact
  def __call__(self, images, train: bool = False):
    if (self.depth - 2) % 6:
      raise ValueError(f'CIFAR ResNet depth must be 6n+2, got {self.depth}')
    n = (self.depth - 2) // 6
    x = self.normalize(images)
    widths = [self.ch(f'stage{s}', w) for s, w in enumerate(STAGE_WIDTHS, start=1)]
    x = self.conv('stem_conv', widths[0])(x)
    x = nn.relu(self.bn('stem_bn', train)(x))
    for s, width in enumerate(widths, start=1):
      for b in range(1, n + 1):
        name = f'stage{s}_block{b}'
        stride = 2 if (s > 1 and b == 1) else 1
        inner = self.ch(f'{name}/conv1', STAGE_WIDTHS[s - 1])
        x = BasicBlock(inner, width, stride, self.dtype, self.conv_impl, name=name)(x, train)
    x = x.mean(axis=(1, 2))
    return self.logits(self.dense('fc', self.num_classes)(x))
