r"""Builds qprune/data/mnist_sample.npz, the small real MNIST sample qprune ships.

  python tools/make_mnist_sample.py --data_dir=DATA [--out=qprune/data/mnist_sample.npz]

How it was made: DATA holds the full MNIST (`mnist.tar.gz` or `mnist/` in the image-folder
layout that `python -m qprune.data.make_folders` writes, read by `qprune.data.load_arrays`, which
keeps the original order of LeCun et al.'s files). The sample is the first TRAIN = 6,000
training images and the first TEST = 1,000 test images in that order, unchanged (uint8
28x28x1, int32 labels; every class is 8.5-12.6 % of each split). They are stored as four .npy
arrays (`train_images`, `train_labels`, `test_images`, `test_labels`) in a zip archive deflated
at level 9 with fixed timestamps (about 1.1 MB), so a rebuild from the same data gives the
same bytes (tests/test_data.py rebuilds it and compares).

qprune uses the sample only when a run has no data_dir and TFDS cannot provide MNIST
(docs/data.md); full-data runs and every published result read the full set.
"""
import argparse
import io
import os
import sys
import zipfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run by path from a checkout
  sys.path.insert(0, REPO_ROOT)

from qprune.data import sources  # noqa: E402  pylint: disable=wrong-import-position

TRAIN, TEST = 6000, 1000
OUT = os.path.join(REPO_ROOT, 'qprune', 'data', 'mnist_sample.npz')


def sample_bytes(data_dir: str, cache_dir=None) -> bytes:
  """The archive's bytes from the full MNIST in `data_dir`."""
  arrays = sources.load_arrays('mnist', data_dir, cache_dir=cache_dir, allow_download=False)
  parts = {'train': TRAIN, 'test': TEST}
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as archive:
    for split, count in parts.items():
      images, labels = arrays[split]
      for kind, array in (('images', images[:count]), ('labels', labels[:count])):
        npy = io.BytesIO()
        np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
        info = zipfile.ZipInfo(f'{split}_{kind}.npy', date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        archive.writestr(info, npy.getvalue(), compresslevel=9)
  return buffer.getvalue()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', required=True, help='holds mnist.tar.gz or mnist/')
  parser.add_argument('--out', default=OUT)
  args = parser.parse_args(argv)
  try:
    data = sample_bytes(args.data_dir)
  except sources.DataError as e:
    print(f'qprune: error: {e}', file=sys.stderr)
    return 2
  from qprune import files  # pylint: disable=g-import-not-at-top
  files.write_bytes_atomic(args.out, data)
  print(f'{args.out}: {TRAIN:,} train / {TEST:,} test images, {len(data) / 1e6:.2f} MB')
  return 0


if __name__ == '__main__':
  sys.exit(main())
