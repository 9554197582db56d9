"""On-device data: uint8 splits held in device memory, per-epoch shuffling, batching, augmentation.

Nothing here runs per example in Python: a batch is gathered from the device-resident split by
index inside the jitted train step, and augmentation is a jitted function of a PRNG key.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from qprune.data import sources


@dataclasses.dataclass
class Split:
  images: jax.Array  # uint8 [N, H, W, C], on device
  labels: jax.Array  # int32 [N]

  @property
  def size(self) -> int:
    return int(self.labels.shape[0])


@dataclasses.dataclass
class Data:
  info: sources.DatasetInfo
  train: Split
  test: Split


def take_prefix(images: np.ndarray, labels: np.ndarray, n: int | None):
  """The first n examples (n = None or 0: all)."""
  if n is not None and n < 0:
    raise ValueError(f'subset size must be >= 0, got {n}')
  return (images[:n], labels[:n]) if n else (images, labels)


def load_data(name: str, data_dir: str | None = None, *, train_subset: int | None = None,
              eval_subset: int | None = None, cache_dir: str | None = None, sharding=None,
              allow_download: bool = True) -> Data:
  """Loads both splits onto the device(s) (replicated under `sharding` if given)."""
  arrays = sources.load_arrays(name, data_dir, cache_dir, allow_download)
  put = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jax.device_put
  splits = {}
  for split, n in (('train', train_subset), ('test', eval_subset)):
    images, labels = take_prefix(*arrays[split], n)
    splits[split] = Split(put(images), put(labels.astype(np.int32)))
  return Data(sources.dataset_info(name), splits['train'], splits['test'])


def epoch_permutation(seed_key: jax.Array, epoch: int, n: int) -> jax.Array:
  """The example order of `epoch`: a pure function of (key, epoch), so resumed runs match."""
  return jax.random.permutation(jax.random.fold_in(seed_key, epoch), n)


def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """CIFAR augmentation: zero-pad by `pad`, random HxW crop, random horizontal flip.

  images: uint8 [B, H, W, C] -> uint8 [B, H, W, C]. Per-example offsets come from `key`.
  """
  b, h, w, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, cropped[:, :, ::-1, :], cropped)


AUGMENTATIONS = {
    'none': lambda key, images: images,
    'crop_flip': random_crop_flip,
}
