"""Shared layers of the model zoo.

`Conv` is a bias-free NHWC convolution (every conv in the zoo is followed by BatchNorm, so a bias
would be redundant). It owns a `kernel` param of shape (kh, kw, in, out), exactly like
`flax.linen.Conv`, so checkpoints and per-layer paths look the same; the convolution itself is
computed by `qprune.ops.conv2d`, which picks a CPU-fast kernel-gradient path when it pays off.
"""
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx

from qprune.ops import batchnorm as bn_ops
from qprune.ops import conv as conv_ops

Dtype = Any


class Conv(nn.Module):
  """NHWC convolution without bias. x: [N, H, W, in] -> [N, H', W', features]."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: str = 'SAME'
  dtype: Dtype = jnp.float32
  impl: str = 'auto'
  kernel_init: Callable = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return conv_ops.conv2d(x, kernel, tuple(self.strides), self.padding, impl=self.impl)


# Layer types that code intercepting layer calls (pruning's tracer and masked evaluation, MAC
# counting) knows, Linen and NNX alike (`qprune.models.interop`).
BATCH_NORM_TYPES = (nn.BatchNorm, bn_ops.FusedBatchNorm, nnx.BatchNorm)
CONV_TYPES = (nn.Conv, Conv, nn.ConvTranspose, nnx.Conv, nnx.ConvTranspose)
TRANSPOSE_CONV_TYPES = (nn.ConvTranspose, nnx.ConvTranspose)
DENSE_TYPES = (nn.Dense, nnx.Linear)
# Norms over the channel axis that couple the channels they normalize (statistics across them).
LAYER_NORM_TYPES = (nn.LayerNorm, nnx.LayerNorm)
RMS_NORM_TYPES = (nn.RMSNorm, nnx.RMSNorm)
GROUP_NORM_TYPES = (nn.GroupNorm, nnx.GroupNorm)
CHANNEL_NORM_TYPES = LAYER_NORM_TYPES + RMS_NORM_TYPES + GROUP_NORM_TYPES


def batch_norm(train: bool, name: str, dtype: Dtype = jnp.float32) -> nn.Module:
  """BatchNorm with the CIFAR-standard momentum 0.9 and eps 1e-5; statistics kept in float32.

  On the CPU backend `FusedBatchNorm` (nn.BatchNorm's drop-in: same params, statistics and
  outputs; one-pass forward, hand-written backward: 1.05-1.4x faster ResNet-20 steps, measured
  on CPU only), elsewhere flax's own (`bn_ops.resolve_impl`). Checkpoints work with either.
  """
  kwargs = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                param_dtype=jnp.float32, name=name)
  if bn_ops.resolve_impl() == 'fused':
    return bn_ops.FusedBatchNorm(**kwargs)
  return nn.BatchNorm(**kwargs)


class ImageRangeWarning(UserWarning):
  """Float images that look scaled to [0, 1]: the zoo models expect uint8 or float in [0, 255]."""


def check_image_range(images) -> None:
  """A warning when concrete float images lie in [0, 1] and are not constant (a [0, 255] model
  reads them as almost black and mostly misclassifies them; a constant batch such as the zeros
  of `model.init` is no image data). Only outside jit, where the values are at hand (inside jit
  nothing is checked: the data pipelines feed uint8)."""
  import warnings  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(images, jax.core.Tracer) or not jnp.issubdtype(images.dtype, jnp.floating):
    return
  values = np.asarray(images)
  if values.size and 0.0 <= float(values.min()) < float(values.max()) <= 1.0:
    warnings.warn('float images in [0, 1] given to a zoo model, which expects uint8 or '
                  'float in [0, 255] (it normalizes with mean/std given as fractions of 255): '
                  'pass images * 255, or the uint8 images', ImageRangeWarning, stacklevel=4)


def normalize_images(images, mean: Sequence[float], std: Sequence[float], dtype: Dtype):
  """uint8 (or float in [0, 255]) NHWC images -> standardized float, per channel. Concrete float
  images in [0, 1] get an `ImageRangeWarning` (`check_image_range`)."""
  check_image_range(images)
  mean_255 = jnp.asarray(mean, jnp.float32) * 255.0
  std_255 = jnp.asarray(std, jnp.float32) * 255.0
  return ((images.astype(jnp.float32) - mean_255) / std_255).astype(dtype)


def scaled(channels: int, width: float) -> int:
  """Channels after a width multiplier; never below 1."""
  return max(1, int(round(channels * width)))
