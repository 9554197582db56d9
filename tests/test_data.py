import os
import tarfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from qprune.data import pipeline, sources


def _write_folder(root, split_sizes, shape=(8, 8, 3), labels=('cat', 'ant', 'dog')):
  """A tiny image-folder dataset with per-class numbered files; returns {split: (imgs, labels)}."""
  rng = np.random.default_rng(0)
  for split, n in split_sizes.items():
    for li, label in enumerate(sorted(labels)):
      os.makedirs(os.path.join(root, split, label), exist_ok=True)
      for i in range(n):
        img = rng.integers(0, 256, shape, np.uint8)
        Image.fromarray(img.squeeze(-1) if shape[-1] == 1 else img).save(
            os.path.join(root, split, label, f'{i:04d}.png'))


@pytest.fixture
def tiny_info(monkeypatch):
  info = sources.DatasetInfo('tiny', 3, (8, 8, 3), (0.5,) * 3, (0.25,) * 3)
  monkeypatch.setitem(sources.DATASETS, 'tiny', info)
  return info


def test_image_folder_and_tarball_decode_identically(tmp_path, tiny_info):
  _write_folder(tmp_path / 'src' / 'tiny', {'train': 4, 'test': 2})
  folder = sources.load_arrays('tiny', str(tmp_path / 'src'), cache_dir=str(tmp_path / 'c1'),
                               allow_download=False)
  os.makedirs(tmp_path / 'tar')
  with tarfile.open(tmp_path / 'tar' / 'tiny.tar.gz', 'w:gz') as tar:
    tar.add(tmp_path / 'src' / 'tiny', arcname='tiny')
  tarred = sources.load_arrays('tiny', str(tmp_path / 'tar'), cache_dir=str(tmp_path / 'c2'),
                               allow_download=False)
  for split in ('train', 'test'):
    np.testing.assert_array_equal(folder[split][0], tarred[split][0])
    np.testing.assert_array_equal(folder[split][1], tarred[split][1])
  # Per-class numbered files are interleaved: labels sorted by name, file index major.
  np.testing.assert_array_equal(folder['train'][1][:6], [0, 1, 2, 0, 1, 2])
  assert folder['train'][0].dtype == np.uint8 and folder['train'][0].shape == (12, 8, 8, 3)
  # The decoded pixels are the PNG's pixels.
  first = np.asarray(Image.open(tmp_path / 'src' / 'tiny' / 'train' / 'ant' / '0000.png'))
  np.testing.assert_array_equal(folder['train'][0][0], first)


def test_second_load_reads_the_cache(tmp_path, tiny_info, monkeypatch):
  _write_folder(tmp_path / 'tiny', {'train': 2, 'test': 1})
  first = sources.load_arrays('tiny', str(tmp_path), cache_dir=str(tmp_path / 'cache'),
                              allow_download=False)
  monkeypatch.setattr(sources, 'read_image_folder', lambda *a: pytest.fail('decoded twice'))
  second = sources.load_arrays('tiny', str(tmp_path), cache_dir=str(tmp_path / 'cache'),
                               allow_download=False)
  np.testing.assert_array_equal(first['train'][0], second['train'][0])


def test_missing_data_names_every_path_tried(tmp_path):
  with pytest.raises(sources.DataNotFoundError) as e:
    sources.load_arrays('mnist', str(tmp_path), allow_download=False)
  message = str(e.value)
  assert str(tmp_path / 'mnist') in message and str(tmp_path / 'mnist.tar.gz') in message
  assert 'data_dir' in message


def test_wrong_number_of_classes_is_rejected(tmp_path, tiny_info):
  _write_folder(tmp_path / 'tiny', {'train': 1, 'test': 1}, labels=('a', 'b'))
  with pytest.raises(ValueError, match='2 label folders, tiny has 3'):
    sources.load_arrays('tiny', str(tmp_path), cache_dir=str(tmp_path / 'c'), allow_download=False)


@pytest.mark.slow
@pytest.mark.real_data
def test_real_mnist_is_complete_and_in_original_order(data_dir, cache_dir):
  arrays = sources.load_arrays('mnist', data_dir, cache_dir=cache_dir, allow_download=False)
  (train_x, train_y), (test_x, test_y) = arrays['train'], arrays['test']
  assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
  assert train_x.dtype == np.uint8
  np.testing.assert_array_equal(train_y[:8], [5, 0, 4, 1, 9, 2, 1, 3])  # the canonical first labels
  np.testing.assert_array_equal(test_y[:5], [7, 2, 1, 0, 4])
  assert np.bincount(train_y).min() > 5000


@pytest.mark.real_data
def test_the_cifar10_copy_is_jpeg_quality_75_with_half_resolution_colour(data_dir):
  """What RESULTS.md says of the CIFAR-10 copy its runs read (`DATASET_NOTES`): every image
  sampled from both splits has the quantization tables PIL writes at quality 75 and 4:2:0
  chroma subsampling."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import JpegImagePlugin  # pylint: disable=g-import-not-at-top
  from reproduce import results as results_lib  # pylint: disable=g-import-not-at-top
  assert 'IJG quality 75 with 4:2:0' in results_lib.DATASET_NOTES['cifar10']
  path = os.path.join(data_dir, 'cifar10.tar.gz')
  if not os.path.isfile(path):
    if os.environ.get('CI'):
      pytest.fail(f'real CIFAR-10 not found at {path}')
    pytest.skip(f'real CIFAR-10 not found at {path}')
  reference = io.BytesIO()
  Image.new('RGB', (32, 32)).save(reference, 'JPEG', quality=75, subsampling=2)
  q75 = Image.open(reference).quantization
  seen = {'train': 0, 'test': 0}
  with tarfile.open(path) as tar:
    for member in tar:
      split = member.name.split('/')[-3] if member.isfile() else None
      if split in seen and seen[split] < 50:
        image = Image.open(tar.extractfile(member))
        assert image.format == 'JPEG', member.name
        assert image.quantization == q75, member.name
        assert JpegImagePlugin.get_sampling(image) == 2, member.name  # 4:2:0
        seen[split] += 1
      if min(seen.values()) >= 50:
        break
  assert seen == {'train': 50, 'test': 50}


@pytest.mark.real_data
def test_subsets_take_the_first_examples(mnist_small):
  assert mnist_small.train.size == 2048 and mnist_small.test.size == 512
  assert mnist_small.train.images.dtype == jnp.uint8
  assert mnist_small.info.num_classes == 10


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
  key = jax.random.PRNGKey(3)
  a, b = pipeline.epoch_permutation(key, 5, 100), pipeline.epoch_permutation(key, 5, 100)
  np.testing.assert_array_equal(a, b)
  assert sorted(np.asarray(a).tolist()) == list(range(100))
  assert not np.array_equal(a, pipeline.epoch_permutation(key, 6, 100))


@pytest.mark.parametrize('jit', [False, True])
def test_crop_flip_moves_pixels_but_keeps_content(jit):
  images = jnp.arange(2 * 32 * 32 * 3, dtype=jnp.uint32).reshape(2, 32, 32, 3).astype(jnp.uint8)
  fn = jax.jit(pipeline.random_crop_flip) if jit else pipeline.random_crop_flip
  out = fn(jax.random.PRNGKey(0), images)
  chex.assert_shape(out, images.shape)
  assert out.dtype == jnp.uint8
  # Every output is a crop of the zero-padded (and maybe flipped) input.
  padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(2):
    found = any(np.array_equal(np.asarray(out[i]), cand[dy:dy + 32, dx:dx + 32])
                for cand in (padded[i], padded[i][:, ::-1]) for dy in range(9) for dx in range(9))
    assert found
  np.testing.assert_array_equal(out, fn(jax.random.PRNGKey(0), images))
