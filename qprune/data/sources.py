"""Where dataset arrays come from: a uint8 cache, an image-folder copy, its tarball, or TFDS.

Every source yields `{'train': (images uint8 [N, H, W, C], labels int32 [N]), 'test': ...}`.
Offline copies follow the `tfds.ImageFolder` layout `<data_dir>/<name>/<split>/<label>/<file>`
(or `<data_dir>/<name>.tar.gz` holding it). They are decoded once with Pillow (no TensorFlow
needed) and cached as .npy, so a second run starts in seconds.

Example order: files are sorted by (numeric file stem, label index). For MNIST the stem is the
image's index in the original split, so this is the original order; for per-class numbering
(the CIFAR copy) it interleaves the classes, so `train_subset=N` takes a class-balanced prefix.

Damaged input is a `DataError` naming the file: an unreadable archive or image, a missing split
folder, label folders that differ between splits (labels are numbered by sorted folder name, so
they must match). The cache carries a manifest (shapes, dtypes, CRC32 of every array) and is
checked on load (also label range and image shape); a damaged or partial cache is rebuilt with
one warning.
"""
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import zipfile
import zlib

import numpy as np

from qprune import errors
from qprune.errors import UserError

SPLITS = ('train', 'test')
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  shape: tuple[int, int, int]
  mean: tuple[float, ...]  # per channel, fraction of 255
  std: tuple[float, ...]


DATASETS = {
    'mnist': DatasetInfo('mnist', 10, (28, 28, 1), (0.1307,), (0.3081,)),
    'cifar10': DatasetInfo('cifar10', 10, (32, 32, 3), (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616)),
    'cifar100': DatasetInfo('cifar100', 100, (32, 32, 3), (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762)),
}


class DataError(UserError):
  """The dataset's files are damaged or laid out wrongly; the message names the file."""


class DataNotFoundError(DataError):
  """No source could provide the dataset; the message lists what was tried."""


def dataset_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; choose one of {sorted(DATASETS)}')
  return DATASETS[name]


def default_cache_dir() -> str:
  return os.environ.get('QPRUNE_CACHE_DIR',
                        os.path.join(os.path.expanduser('~'), '.cache', 'qprune'))


Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------- decoding

def _sort_key(path: str, label_index: int):
  stem = os.path.splitext(os.path.basename(path))[0]
  digits = re.sub(r'\D', '', stem)
  return (int(digits) if digits else 0, label_index, stem)


def _decode(data: bytes, shape, name: str = 'image') -> np.ndarray:
  """uint8 [H, W, C] of one encoded image; DataError naming `name` if it is damaged."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    image: Image.Image = Image.open(io.BytesIO(data))
    mode = 'L' if shape[-1] == 1 else 'RGB'
    if image.mode != mode:  # convert() copies even when the mode already matches
      image = image.convert(mode)
    array = np.asarray(image, np.uint8).reshape(image.size[1], image.size[0], -1)
  except Exception as e:  # pylint: disable=broad-except  (any decoder failure: a bad file)
    reason = re.sub(r'\s*<_io\.BytesIO object at 0x[0-9a-f]+>', '', str(e))  # not the file
    raise DataError(f'{name}: not a readable image ({type(e).__name__}: {reason[:200]}); '
                    f'replace or delete the file') from None
  if array.shape != tuple(shape):
    raise DataError(f'{name}: image of shape {array.shape}, this dataset\'s images are '
                    f'{tuple(shape)}; replace or delete the file')
  return array


def _decode_all(entries: list[tuple[str, int, bytes]], shape, what: str):
  """entries: (path, label_index, encoded bytes) -> sorted uint8 images, int32 labels."""
  if not entries:
    raise DataNotFoundError(f'no images found in {what}')
  entries.sort(key=lambda e: _sort_key(e[0], e[1]))
  # One task per chunk: a future per image costs more than decoding a 28x28 PNG (ThreadPool's
  # map ignores chunksize), and the per-image futures made MNIST's first decode ~3x slower.
  chunk = 1024
  decode_chunk = lambda start: [_decode(e[2], shape, e[0]) for e in entries[start:start + chunk]]
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    images = [image for part in pool.map(decode_chunk, range(0, len(entries), chunk))
              for image in part]
  labels = np.asarray([e[1] for e in entries], np.int32)
  return np.stack(images), labels


def _label_names(names) -> list[str]:
  # Same label order as tfds.ImageFolder: sorted folder names.
  return sorted(names)


def check_label_folders(labels: dict[str, list[str]], where: str) -> list[str]:
  """The label names shared by every split; DataError if the splits' label folders differ
  (labels are numbered by sorted folder name, so a renamed folder would shift every label)."""
  train = labels[SPLITS[0]]
  for split in SPLITS[1:]:
    if labels[split] != train:
      only_train = sorted(set(train) - set(labels[split]))
      only_other = sorted(set(labels[split]) - set(train))
      raise DataError(
          f'{where}: the label folders of {split} differ from those of {SPLITS[0]} (only in '
          f'{SPLITS[0]}: {", ".join(only_train) or "-"}; only in {split}: '
          f'{", ".join(only_other) or "-"}); every split needs the same label folder names')
  return train


def read_image_folder(root: str, info: DatasetInfo) -> Arrays:
  """Decodes `<root>/<split>/<label>/<file>` for both splits."""
  labels = {}
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise DataError(f'{root}: no {split} split folder ({split_dir} missing); the layout is '
                      f'{root}/{{{",".join(SPLITS)}}}/<label>/<images>')
    try:
      names = os.listdir(split_dir)
    except OSError as e:
      raise DataError(f'cannot read {split_dir}: {e.strerror}') from None
    labels[split] = _label_names(d for d in names if os.path.isdir(os.path.join(split_dir, d)))
  check_label_folders(labels, root)
  out = {}
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    entries = []
    for index, label in enumerate(labels[split]):
      label_dir = os.path.join(split_dir, label)
      for file in os.listdir(label_dir):
        if file.lower().endswith(_IMAGE_SUFFIXES):
          path = os.path.join(label_dir, file)
          try:
            with open(path, 'rb') as f:
              entries.append((path, index, f.read()))
          except OSError as e:
            raise DataError(f'cannot read {path}: {e.strerror}; fix its permissions or delete '
                            f'it') from None
    out[split] = _decode_all(entries, info.shape, split_dir)
  _check_classes(out, info, root)
  return out


def read_tarball(path: str, info: DatasetInfo) -> Arrays:
  """Decodes an image-folder tarball in memory (no extraction to disk)."""
  raw = {split: [] for split in SPLITS}
  try:
    with tarfile.open(path, 'r:*') as tar:
      for member in tar:
        if not member.isfile() or not member.name.lower().endswith(_IMAGE_SUFFIXES):
          continue
        parts = member.name.strip('/').split('/')
        if len(parts) < 3 or parts[-3] not in raw:
          continue
        member_file = tar.extractfile(member)
        assert member_file is not None, 'a regular file (isfile above) has data'
        raw[parts[-3]].append((f'{path}:{member.name}', parts[-2], member_file.read()))
      # Read to the end of the stream: gzip checks its CRC only there, and tarfile stops at the
      # archive's end marker, so damage that still inflates would otherwise pass unnoticed.
      while tar.fileobj.read(1 << 20):
        pass
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or 'truncated'
    reason = reason.splitlines()[0].rstrip(':') if reason.strip() else 'truncated'
    raise DataError(f'{path} is damaged or not a tar archive ({type(e).__name__}: {reason}); '
                    f'replace it with a good copy') from None
  for split, items in raw.items():
    if not items:
      raise DataError(f'{path}: no {split} images (expected members <name>/{split}/<label>/'
                      f'<image>); replace it with a good copy')
  names = check_label_folders(
      {split: _label_names({item[1] for item in items}) for split, items in raw.items()}, path)
  labels = {name: i for i, name in enumerate(names)}
  out = {}
  for split, items in raw.items():
    entries = [(file, labels[label], data) for file, label, data in items]
    out[split] = _decode_all(entries, info.shape, f'{path} ({split} split)')
  _check_classes(out, info, path)
  return out


def _check_classes(arrays: Arrays, info: DatasetInfo, where: str):
  for split, (_, labels) in arrays.items():
    found = int(labels.max()) + 1 if labels.size else 0
    if found != info.num_classes:
      raise DataError(f'{where}: {split} split has {found} label folders, '
                       f'{info.name} has {info.num_classes}')


def read_tfds(name: str, data_dir: str | None, download: bool) -> Arrays:
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


_MANIFEST = 'manifest.json'
_CACHE_FORMAT = 1


def _crc32(array: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(array).tobytes())


def check_arrays(arrays: Arrays, info: DatasetInfo) -> str | None:
  """Why `arrays` cannot be this dataset (shapes, dtypes, label range), or None if they can."""
  for split in SPLITS:
    if split not in arrays:
      return f'no {split} split'
    images, labels = arrays[split]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != tuple(info.shape):
      return f'{split} images are {images.dtype} {images.shape}, expected uint8 [N, {info.shape}]'
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
      return f'{split}: {labels.shape} labels for {images.shape[0]} images'
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
      return f'{split} labels outside 0..{info.num_classes - 1}'
  return None


def _load_cache(path: str, info: DatasetInfo) -> tuple[Arrays | None, str | None]:
  """(arrays, None) from a good cache; (None, None) when there is none; (None, why) if damaged."""
  if not os.path.exists(path):
    return None, None
  if not os.path.exists(os.path.join(path, _MANIFEST)):
    return None, 'no manifest: a cache of an older qprune, or a partial one'
  try:
    with open(os.path.join(path, _MANIFEST)) as f:
      manifest = json.load(f)
    arrays = {}
    for split in SPLITS:
      loaded = []
      for kind in ('images', 'labels'):
        name = f'{split}_{kind}'
        array = np.load(os.path.join(path, f'{name}.npy'), allow_pickle=False)
        meta = manifest['arrays'][name]
        if (list(array.shape) != meta['shape'] or str(array.dtype) != meta['dtype'] or
            _crc32(array) != meta['crc32']):
          return None, f'{name}.npy does not match its checksum'
        loaded.append(array)
      arrays[split] = tuple(loaded)
    if manifest.get('format') != _CACHE_FORMAT:
      return None, f'cache format {manifest.get("format")}, this qprune writes {_CACHE_FORMAT}'
  except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
    return None, f'{type(e).__name__}: {str(e)[:120]}'
  problem = check_arrays(arrays, info)
  return (None, problem) if problem else (arrays, None)


def _save_cache(path: str, arrays: Arrays):
  """Writes into a temp folder, then renames it over `path` (replacing a damaged cache there): a
  reader never sees a half-written cache."""
  tmp = f'{path}.tmp-{os.getpid()}'
  old = f'{path}.old-{os.getpid()}'
  try:
    os.makedirs(tmp, exist_ok=True)
    manifest: dict = {'format': _CACHE_FORMAT, 'arrays': {}}
    for split, (images, labels) in arrays.items():
      for kind, array in (('images', images), ('labels', labels)):
        name = f'{split}_{kind}'
        np.save(os.path.join(tmp, f'{name}.npy'), array)
        manifest['arrays'][name] = {'shape': list(array.shape), 'dtype': str(array.dtype),
                                    'crc32': _crc32(array)}
    with open(os.path.join(tmp, _MANIFEST), 'w') as f:
      json.dump(manifest, f)
    if os.path.lexists(path):
      os.replace(path, old)
    os.replace(tmp, path)
  except OSError:
    pass  # A read-only or full cache dir only costs speed next time.
  finally:
    for leftover in (tmp, old):
      if os.path.isdir(leftover):
        shutil.rmtree(leftover, ignore_errors=True)
      elif os.path.lexists(leftover):
        try:
          os.unlink(leftover)
        except OSError:
          pass


# ---------------------------------------------------------------- entry point

def local_candidates(name: str, data_dir: str) -> list[str]:
  return [os.path.join(data_dir, name), os.path.join(data_dir, f'{name}.tar.gz')]


# The bundled MNIST sample (tools/make_mnist_sample.py builds it from the full MNIST copy).
SAMPLE_FILES = {'mnist': os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      'mnist_sample.npz')}


def bundled_sample(name: str) -> Arrays | None:
  """The small real sample of `name` shipped inside the package (MNIST only), or None."""
  path = SAMPLE_FILES.get(name)
  if path is None or not os.path.isfile(path):
    return None
  problem: str | None
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {split: (f[f'{split}_images'], f[f'{split}_labels']) for split in SPLITS}
  except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as e:
    problem = f'{type(e).__name__}: {str(e)[:120]}'  # never empty: raised below
  else:
    problem = check_arrays(arrays, dataset_info(name))
  if problem:
    raise DataError(f'{path} (the bundled {name} sample) is damaged ({problem}); reinstall '
                    f'qprune, or pass --config.data_dir=DIR with the full data set')
  return arrays


def _tfds_available(name: str) -> tuple[bool, str]:
  """(whether tfds.load can provide `name` without a data_dir, why not): it needs TensorFlow,
  and a prepared copy in TFDS's folder or a reachable download server (probed for 3 s, so a
  machine without network does not wait minutes for TFDS's retries)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('tensorflow') is None:
    return False, 'TensorFlow is not installed (the tfds extra)'
  tfds_dir = os.environ.get('TFDS_DATA_DIR') or os.path.join(os.path.expanduser('~'),
                                                             'tensorflow_datasets')
  if os.path.isdir(tfds_dir) and tfds_prepared(name, tfds_dir):
    return True, ''
  import socket  # pylint: disable=g-import-not-at-top
  try:
    socket.create_connection(('storage.googleapis.com', 443), timeout=3).close()
  except OSError as e:
    return False, f'no network to download it ({e.strerror or type(e).__name__})'
  return True, ''


def load_arrays(name: str, data_dir: str | None = None,
                cache_dir: str | None = None, allow_download: bool = True) -> Arrays:
  """Both splits of `name` as uint8 NHWC images and int32 labels.

  With `data_dir`: `<data_dir>/<name>/` (image folders), `<data_dir>/<name>.tar.gz`, or a
  TFDS-prepared copy there (no download; nothing else is tried). Without: `tfds.load(name)`
  (a copy TFDS prepared earlier, or a download) where TensorFlow and the network allow it, else,
  for MNIST, the small sample bundled with qprune (said so in one warning line). Image folders
  and tarballs are decoded once and cached under `cache_dir` (default $QPRUNE_CACHE_DIR or
  ~/.cache/qprune). docs/data.md describes the order.
  """
  info = dataset_info(name)
  cache_dir = cache_dir or default_cache_dir()
  tried = []
  for candidate in (local_candidates(name, data_dir) if data_dir else []):
    tried.append(candidate)
    if os.path.isdir(os.path.join(candidate, 'train')) or os.path.isfile(candidate):
      cache = _cache_path(cache_dir, name, candidate)
      arrays, damage = _load_cache(cache, info)
      if arrays is None:
        if damage:
          errors.warn(f'dataset cache {cache} is damaged or outdated ({damage}); '
                      f'rebuilding it from {candidate}')
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
  else:
    if allow_download:
      tried.append(f'tfds.load({name!r})')
      available, reason = _tfds_available(name)
      if available:
        try:
          return read_tfds(name, None, download=True)
        except Exception as e:  # pylint: disable=broad-except
          reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    sample = bundled_sample(name)
    if sample is not None:
      (train, _), (test, _) = sample['train'], sample['test']
      errors.warn(f'data: using the bundled {info.name.upper()} sample ({len(train):,} train / '
                  f'{len(test):,} test); pass --config.data_dir for the full set')
      return sample
  raise DataNotFoundError(
      f'dataset {name!r} not found. Tried: {", ".join(tried)} ({reason}). Fix: pass '
      f'--config.data_dir=DIR where DIR holds {name}/{{train,test}}/<label>/<images> or '
      f'{name}.tar.gz (python -m qprune.data.make_folders writes one), or run on a machine '
      f'with internet and TensorFlow so tensorflow-datasets can download it (the tfds extra: '
      f"pip install -e '.[tfds]' in the checkout).")
