"""Where dataset arrays come from: a uint8 cache, an image-folder copy, its tarball, or TFDS.

Every source yields `{'train': (images uint8 [N, H, W, C], labels int32 [N]), 'test': ...}`.
Offline copies follow the `tfds.ImageFolder` layout `<data_dir>/<name>/<split>/<label>/<file>`
(or `<data_dir>/<name>.tar.gz` holding it). They are decoded once with Pillow (no TensorFlow
needed) and cached as .npy, so a second run starts in seconds.

Example order: files are sorted by (numeric file stem, label index). For MNIST the stem is the
image's index in the original split, so this is the original order; for per-class numbering
(the CIFAR copy) it interleaves the classes, so `train_subset=N` takes a class-balanced prefix.
"""
import concurrent.futures
import dataclasses
import hashlib
import io
import os
import re
import tarfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from qprune.errors import UserError

SPLITS = ('train', 'test')
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  shape: Tuple[int, int, int]
  mean: Tuple[float, ...]  # per channel, fraction of 255
  std: Tuple[float, ...]


DATASETS = {
    'mnist': DatasetInfo('mnist', 10, (28, 28, 1), (0.1307,), (0.3081,)),
    'cifar10': DatasetInfo('cifar10', 10, (32, 32, 3), (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616)),
    'cifar100': DatasetInfo('cifar100', 100, (32, 32, 3), (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762)),
}


class DataNotFoundError(UserError):
  """No source could provide the dataset; the message lists what was tried."""


def dataset_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; choose one of {sorted(DATASETS)}')
  return DATASETS[name]


def default_cache_dir() -> str:
  return os.environ.get('QPRUNE_CACHE_DIR',
                        os.path.join(os.path.expanduser('~'), '.cache', 'qprune'))


Arrays = Dict[str, Tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------- decoding

def _sort_key(path: str, label_index: int):
  stem = os.path.splitext(os.path.basename(path))[0]
  digits = re.sub(r'\D', '', stem)
  return (int(digits) if digits else 0, label_index, stem)


def _decode(data: bytes, shape) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.open(io.BytesIO(data))
  image = image.convert('L' if shape[-1] == 1 else 'RGB')
  array = np.asarray(image, np.uint8).reshape(image.size[1], image.size[0], -1)
  if array.shape != tuple(shape):
    raise ValueError(f'image of shape {array.shape}, expected {tuple(shape)}')
  return array


def _decode_all(entries: List[Tuple[str, int, bytes]], shape, what: str):
  """entries: (path, label_index, encoded bytes) -> sorted uint8 images, int32 labels."""
  if not entries:
    raise DataNotFoundError(f'no images found in {what}')
  entries.sort(key=lambda e: _sort_key(e[0], e[1]))
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    images = list(pool.map(lambda e: _decode(e[2], shape), entries, chunksize=512))
  labels = np.asarray([e[1] for e in entries], np.int32)
  return np.stack(images), labels


def _label_names(names) -> List[str]:
  # Same label order as tfds.ImageFolder: sorted folder names.
  return sorted(names)


def read_image_folder(root: str, info: DatasetInfo) -> Arrays:
  """Decodes `<root>/<split>/<label>/<file>` for both splits."""
  out = {}
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    labels = _label_names(d for d in os.listdir(split_dir)
                          if os.path.isdir(os.path.join(split_dir, d)))
    entries = []
    for index, label in enumerate(labels):
      label_dir = os.path.join(split_dir, label)
      for file in os.listdir(label_dir):
        if file.lower().endswith(_IMAGE_SUFFIXES):
          with open(os.path.join(label_dir, file), 'rb') as f:
            entries.append((file, index, f.read()))
    out[split] = _decode_all(entries, info.shape, split_dir)
  _check_classes(out, info, root)
  return out


def read_tarball(path: str, info: DatasetInfo) -> Arrays:
  """Decodes an image-folder tarball in memory (no extraction to disk)."""
  raw = {split: [] for split in SPLITS}
  with tarfile.open(path, 'r:*') as tar:
    for member in tar:
      if not member.isfile() or not member.name.lower().endswith(_IMAGE_SUFFIXES):
        continue
      parts = member.name.strip('/').split('/')
      if len(parts) < 3 or parts[-3] not in raw:
        continue
      raw[parts[-3]].append((parts[-1], parts[-2], tar.extractfile(member).read()))
  out = {}
  for split, items in raw.items():
    labels = {name: i for i, name in enumerate(_label_names({item[1] for item in items}))}
    entries = [(file, labels[label], data) for file, label, data in items]
    out[split] = _decode_all(entries, info.shape, f'{path} ({split} split)')
  _check_classes(out, info, path)
  return out


def _check_classes(arrays: Arrays, info: DatasetInfo, where: str):
  for split, (_, labels) in arrays.items():
    found = int(labels.max()) + 1 if labels.size else 0
    if found != info.num_classes:
      raise ValueError(f'{where}: {split} split has {found} label folders, '
                       f'{info.name} has {info.num_classes}')


def read_tfds(name: str, data_dir: Optional[str], download: bool) -> Arrays:
  """tfds.load: downloads on a machine with internet, or reads a TFDS-prepared data_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = {}
  for split in SPLITS:
    images, labels = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir,
                                             batch_size=-1, as_supervised=True,
                                             download=download))
    out[split] = (np.asarray(images, np.uint8), np.asarray(labels, np.int32))
  return out


def tfds_prepared(name: str, data_dir: str) -> bool:
  """Whether data_dir holds a dataset prepared by TFDS (`<name>/<version>/dataset_info.json`)."""
  root = os.path.join(data_dir, name)
  return os.path.isdir(root) and any(
      os.path.isfile(os.path.join(root, v, 'dataset_info.json')) for v in os.listdir(root))


# ---------------------------------------------------------------- cache

def _cache_path(cache_dir: str, name: str, source: str) -> str:
  stat = os.stat(source)
  tag = hashlib.sha1(f'{os.path.abspath(source)}|{stat.st_mtime_ns}|{stat.st_size}'.encode())
  return os.path.join(cache_dir, f'{name}-{tag.hexdigest()[:12]}')


def _load_cache(path: str) -> Optional[Arrays]:
  try:
    return {split: (np.load(os.path.join(path, f'{split}_images.npy')),
                    np.load(os.path.join(path, f'{split}_labels.npy'))) for split in SPLITS}
  except (OSError, ValueError):
    return None


def _save_cache(path: str, arrays: Arrays):
  """Writes into a temp folder, then renames it: a reader never sees a half-written cache."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    os.makedirs(tmp, exist_ok=True)
    for split, (images, labels) in arrays.items():
      np.save(os.path.join(tmp, f'{split}_images.npy'), images)
      np.save(os.path.join(tmp, f'{split}_labels.npy'), labels)
    os.replace(tmp, path)
  except OSError:
    pass  # A read-only or full cache dir only costs speed next time.


# ---------------------------------------------------------------- entry point

def local_candidates(name: str, data_dir: str) -> List[str]:
  return [os.path.join(data_dir, name), os.path.join(data_dir, f'{name}.tar.gz')]


def load_arrays(name: str, data_dir: Optional[str] = None,
                cache_dir: Optional[str] = None, allow_download: bool = True) -> Arrays:
  """Both splits of `name` as uint8 NHWC images and int32 labels.

  With `data_dir`: `<data_dir>/<name>/` (image folders), `<data_dir>/<name>.tar.gz`, or a
  TFDS-prepared copy there (no download). Without: `tfds.load(name)`, downloading if needed.
  Image folders and tarballs are decoded once and cached under `cache_dir` (default
  $QPRUNE_CACHE_DIR or ~/.cache/qprune).
  """
  info = dataset_info(name)
  cache_dir = cache_dir or default_cache_dir()
  tried = []
  for candidate in (local_candidates(name, data_dir) if data_dir else []):
    tried.append(candidate)
    if os.path.isdir(os.path.join(candidate, 'train')) or os.path.isfile(candidate):
      cache = _cache_path(cache_dir, name, candidate)
      arrays = _load_cache(cache)
      if arrays is None:
        reader = read_tarball if os.path.isfile(candidate) else read_image_folder
        arrays = reader(candidate, info)
        _save_cache(cache, arrays)
      return arrays
  reason = 'downloads disabled'
  if data_dir and tfds_prepared(name, data_dir):
    return read_tfds(name, data_dir, download=False)
  if data_dir:
    tried.append(f'a TFDS-prepared {name} in {data_dir}')
    reason = 'an explicit data_dir is never downloaded into'
  elif allow_download:
    tried.append(f'tfds.load({name!r}) with download')
    try:
      return read_tfds(name, None, download=True)
    except Exception as e:  # pylint: disable=broad-except
      reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
  raise DataNotFoundError(
      f'dataset {name!r} not found. Tried: {", ".join(tried)} ({reason}). Fix: pass '
      f'--config.data_dir=DIR where DIR holds {name}/{{train,test}}/<label>/<images> or '
      f'{name}.tar.gz (python -m qprune.data.make_folders writes one), or run on a machine '
      f"with internet so tensorflow-datasets can download it (needs TensorFlow: pip install "
      f"'qprune[tfds]').")
