"""qprune.data.make_folders: an .npz becomes the image-folder copy (or tarball) qprune's loader
reads back bit for bit, in the original order."""
import numpy as np
import pytest

from qprune.data import make_folders, sources


def _arrays(rng, shape, classes, per_class, gray_hw=False):
  arrays = {}
  for split, n in (('train', per_class * classes), ('test', classes)):
    labels = np.concatenate([np.arange(classes)] * (n // classes))
    rng.shuffle(labels)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    if gray_hw:
      images = images[..., 0]  # [N, H, W], as keras' MNIST arrays
    arrays[split] = (images, labels)
  return arrays


def _npz(path, arrays):
  np.savez(path, **{f'{k}_{split}': a for split, (x, y) in arrays.items()
                    for k, a in (('x', x), ('y', y))})
  return str(path)


@pytest.mark.parametrize('name, shape, classes, tar', [
    ('mnist', (28, 28, 1), 10, False),
    ('cifar10', (32, 32, 3), 10, True),
    ('cifar100', (32, 32, 3), 100, False),  # label folders 00..99 keep the label order
])
def test_npz_to_folders_round_trip(name, shape, classes, tar, tmp_path, rng):
  arrays = _arrays(rng, shape, classes, per_class=2 if classes == 100 else 3,
                   gray_hw=name == 'mnist')
  npz = _npz(tmp_path / f'{name}.npz', arrays)
  out = tmp_path / 'data'
  argv = ['--from_npz', npz, '--out', str(out)] + (['--tar'] if tar else [])
  assert make_folders.main(argv) == 0
  assert (out / (f'{name}.tar.gz' if tar else name)).exists()
  loaded = sources.load_arrays(name, str(out), cache_dir=str(tmp_path / 'cache'),
                               allow_download=False)
  for split, (images, labels) in arrays.items():
    got_images, got_labels = loaded[split]
    np.testing.assert_array_equal(got_images, images.reshape(len(images), *shape))
    np.testing.assert_array_equal(got_labels, labels)
  # an existing copy is kept unless --overwrite
  assert make_folders.main(argv) == 2
  assert make_folders.main(argv + ['--overwrite']) == 0


def test_bad_arrays_are_one_clear_error(tmp_path, rng, capsys):
  arrays = _arrays(rng, (28, 28, 1), 10, per_class=1)
  arrays['test'] = (arrays['test'][0][:, :20], arrays['test'][1])  # wrong height
  npz = _npz(tmp_path / 'mnist.npz', arrays)
  assert make_folders.main(['--from_npz', npz, '--out', str(tmp_path / 'd')]) == 2
  assert 'x_test: shape (10, 20, 28, 1), mnist images are (28, 28, 1)' in capsys.readouterr().err
  np.savez(tmp_path / 'other.npz', images=np.zeros((1, 28, 28), np.uint8))
  assert make_folders.main(['--from_npz', str(tmp_path / 'other.npz'), '--name', 'mnist',
                            '--out', str(tmp_path / 'd')]) == 2
  assert 'has no x_train, y_train, x_test, y_test' in capsys.readouterr().err
  assert not (tmp_path / 'd' / 'mnist').exists()
