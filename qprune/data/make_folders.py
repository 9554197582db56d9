r"""Writes the image-folder copy of a dataset that qprune reads offline, from data you have.

  python -m qprune.data.make_folders --from_tfds=mnist --out=DATA          # needs internet + TF
  python -m qprune.data.make_folders --from_npz=mnist.npz --name=mnist --out=DATA [--tar]

then `python -m qprune.main ... --config.data_dir=DATA` (or `export QPRUNE_DATA_DIR=DATA`).

It writes `DATA/<name>/{train,test}/<label>/<index>.png` (with `--tar`: the same tree in
`DATA/<name>.tar.gz` instead), the layout `qprune.data.sources` reads: label folders are the
class indices, zero-padded so that their sorted order is the index order (`00`..`99` for
CIFAR-100), and files are numbered by their position in the split, so the loader returns the
examples in their original order.

Sources:
* `--from_tfds=NAME`: `tfds.load(NAME)` (downloads; needs TensorFlow: in the qprune checkout,
  `pip install -e '.[tfds]'`); `--tfds_dir` is where TFDS keeps its files.
* `--from_npz=FILE`: a numpy `.npz` with `x_train`, `y_train`, `x_test`, `y_test`; images uint8,
  `[N, H, W]` (grayscale) or `[N, H, W, C]` with C = 1 or 3, labels integers 0..classes-1
  (e.g. `keras.datasets.mnist.load_data()`'s arrays saved with `np.savez`).

`--name` (mnist, cifar10, cifar100) is the dataset qprune will look for; it defaults to the TFDS
name, or to the npz file's stem. Images are checked against that dataset's shape and classes.
"""
import argparse
import concurrent.futures
import io
import os
import shutil
import sys
import tarfile

import numpy as np

SPLITS = ('train', 'test')
Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


class MakeFoldersError(Exception):
  """Bad input: the message says what is wrong (the command prints it as one line, exit 2)."""


def arrays_from_npz(path: str) -> Arrays:
  """{'train': (x, y), 'test': (x, y)} from an .npz with x_train, y_train, x_test, y_test."""
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in z.files]
      if missing:
        raise MakeFoldersError(f'{path} has no {", ".join(missing)} (it has: '
                               f'{", ".join(z.files) or "nothing"})')
      return {split: (z[f'x_{split}'], z[f'y_{split}']) for split in SPLITS}
  except (OSError, ValueError) as e:
    raise MakeFoldersError(f'cannot read {path}: {e}') from e


def arrays_from_tfds(name: str, data_dir: str | None = None) -> Arrays:
  """Both splits of a TFDS dataset as uint8 arrays (downloads; TensorFlow needed)."""
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MakeFoldersError(f'--from_tfds needs tensorflow-datasets and TensorFlow ({e}); '
                           "install them from the qprune checkout: pip install -e '.[tfds]'") from e
  out = {}
  for split in SPLITS:
    images, labels = tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir,
                                             batch_size=-1, as_supervised=True))
    out[split] = (np.asarray(images), np.asarray(labels))
  return out


def check_arrays(arrays: Arrays, name: str) -> Arrays:
  """uint8 NHWC images and int64 labels, checked against qprune's description of `name`."""
  from qprune.data.sources import DATASETS  # pylint: disable=g-import-not-at-top
  if name not in DATASETS:
    raise MakeFoldersError(f'--name={name!r}: qprune reads {", ".join(sorted(DATASETS))}')
  info = DATASETS[name]
  out = {}
  for split, (images, labels) in arrays.items():
    images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
    if images.ndim == 3:
      images = images[..., None]
    if images.dtype != np.uint8:
      raise MakeFoldersError(f'x_{split}: images must be uint8 (0..255), got {images.dtype}')
    if images.ndim != 4 or images.shape[1:] != info.shape:
      raise MakeFoldersError(f'x_{split}: shape {images.shape}, {name} images are '
                             f'{info.shape} (N x H x W x C; H x W for grayscale)')
    if len(images) != len(labels):
      raise MakeFoldersError(f'{split}: {len(images)} images but {len(labels)} labels')
    if not np.issubdtype(labels.dtype, np.integer):
      raise MakeFoldersError(f'y_{split}: labels must be integers, got {labels.dtype}')
    found = sorted(set(labels.tolist()))
    if found != list(range(info.num_classes)):
      raise MakeFoldersError(f'y_{split}: {name} has labels 0..{info.num_classes - 1}, all '
                             f'present; found {len(found)} distinct in '
                             f'{found[0] if found else "-"}..{found[-1] if found else "-"}')
    out[split] = (images, labels.astype(np.int64))
  return out


def label_folder(label: int, num_classes: int) -> str:
  """Zero-padded so that sorted folder names are in label order (what the loader assumes)."""
  return f'{label:0{len(str(num_classes - 1))}d}'


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format='PNG')
  return buffer.getvalue()


def _encoded(arrays: Arrays, num_classes: int):
  """Yields (relative path '<split>/<label>/<index>.png', png bytes) in split order."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    for split, (images, labels) in arrays.items():
      for index, data in enumerate(pool.map(_png, images, chunksize=256)):
        yield f'{split}/{label_folder(int(labels[index]), num_classes)}/{index}.png', data


def write_folders(arrays: Arrays, out: str, name: str, *, tar: bool = False,
                  overwrite: bool = False) -> str:
  """Writes `out/<name>/` (or `out/<name>.tar.gz`); returns its path. Written under a temporary
  name and renamed at the end, so an interrupted run leaves no half copy behind."""
  from qprune.data.sources import DATASETS  # pylint: disable=g-import-not-at-top
  arrays = check_arrays(arrays, name)
  num_classes = DATASETS[name].num_classes
  target = os.path.join(out, f'{name}.tar.gz' if tar else name)
  if os.path.exists(target) and not overwrite:
    raise MakeFoldersError(f'{target} exists (pass --overwrite to replace it)')
  os.makedirs(out, exist_ok=True)
  tmp = f'{target}.tmp-{os.getpid()}'
  try:
    if tar:
      with tarfile.open(tmp, 'w:gz') as archive:
        for relative, data in _encoded(arrays, num_classes):
          member = tarfile.TarInfo(f'{name}/{relative}')
          member.size, member.mode = len(data), 0o644
          archive.addfile(member, io.BytesIO(data))
    else:
      for relative, data in _encoded(arrays, num_classes):
        path = os.path.join(tmp, *relative.split('/'))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
          f.write(data)
    if os.path.isdir(target):
      shutil.rmtree(target)
    elif os.path.exists(target):
      os.unlink(target)
    os.replace(tmp, target)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)
    elif os.path.exists(tmp):
      os.unlink(tmp)
  return target


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m qprune.data.make_folders', description=__doc__.split('\n\n')[0].strip(),
      epilog='Layout: OUT/NAME/{train,test}/<label>/<index>.png (see the module docstring).')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--from_tfds', metavar='NAME', help='a TFDS dataset (downloads; needs TF)')
  source.add_argument('--from_npz', metavar='FILE',
                      help='.npz with x_train, y_train, x_test, y_test (uint8 images)')
  parser.add_argument('--out', required=True, help='the data_dir to write into')
  parser.add_argument('--name', help='mnist, cifar10 or cifar100 (default: the TFDS name or the '
                                     "npz file's stem)")
  parser.add_argument('--tar', action='store_true', help='write OUT/NAME.tar.gz instead')
  parser.add_argument('--tfds_dir', help="TFDS's own data_dir for --from_tfds")
  parser.add_argument('--overwrite', action='store_true', help='replace an existing copy')
  args = parser.parse_args(argv)
  name = args.name or args.from_tfds or os.path.splitext(os.path.basename(args.from_npz))[0]
  try:
    arrays = (arrays_from_tfds(args.from_tfds, args.tfds_dir) if args.from_tfds
              else arrays_from_npz(args.from_npz))
    path = write_folders(arrays, args.out, name, tar=args.tar, overwrite=args.overwrite)
  except MakeFoldersError as e:
    print(f'make_folders: error: {e}', file=sys.stderr)
    return 2
  sizes = ', '.join(f'{split} {len(arrays[split][0])}' for split in SPLITS)
  print(f'wrote {path} ({sizes} images); use --config.data_dir={args.out} '
        f'(or QPRUNE_DATA_DIR={args.out})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
