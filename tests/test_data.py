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
    for label in sorted(labels):
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


# ---------------------------------------------------------------------------------------------
# The bundled MNIST sample: what a run without data reads.

def _no_tfds(monkeypatch):
  """TFDS unable to provide the data (no TensorFlow or no network), whatever this machine has."""
  monkeypatch.setattr(sources, '_tfds_available', lambda name: (False, 'no network'))


def test_without_data_mnist_falls_back_to_the_bundled_sample_and_says_so(monkeypatch, capsys):
  from qprune import errors  # pylint: disable=g-import-not-at-top
  _no_tfds(monkeypatch)
  errors.collected_warnings(clear=True)
  arrays = sources.load_arrays('mnist')
  (train_x, train_y), (test_x, test_y) = arrays['train'], arrays['test']
  assert train_x.shape == (6000, 28, 28, 1) and test_x.shape == (1000, 28, 28, 1)
  assert train_x.dtype == np.uint8 and train_y.dtype == np.int32
  assert sources.check_arrays(arrays, sources.dataset_info('mnist')) is None
  assert np.bincount(train_y).min() > 500 and np.bincount(test_y).min() > 80  # every class
  line = ('data: using the bundled MNIST sample (6,000 train / 1,000 test); pass '
          '--config.data_dir for the full set')
  assert capsys.readouterr().err == f'qprune: warning: {line}\n'
  assert errors.collected_warnings(clear=True) == [line]  # results.json records it
  assert os.path.getsize(sources.SAMPLE_FILES['mnist']) < 2_000_000


def test_the_sample_never_replaces_a_data_dir_nor_another_dataset(tmp_path, monkeypatch):
  _no_tfds(monkeypatch)
  with pytest.raises(sources.DataNotFoundError, match='mnist.tar.gz'):
    sources.load_arrays('mnist', str(tmp_path))  # the folder asked for, or an error
  with pytest.raises(sources.DataNotFoundError, match=r"'cifar10' not found.*\(no network\)"):
    sources.load_arrays('cifar10')


def test_a_damaged_sample_is_one_clear_error(tmp_path, monkeypatch):
  _no_tfds(monkeypatch)
  damaged = tmp_path / 'mnist_sample.npz'
  damaged.write_bytes(b'PK\x03\x04 not really')
  monkeypatch.setitem(sources.SAMPLE_FILES, 'mnist', str(damaged))
  with pytest.raises(sources.DataError, match='bundled mnist sample\\) is damaged'):
    sources.load_arrays('mnist')


def test_without_tensorflow_tfds_is_not_tried():
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('tensorflow') is not None:
    pytest.skip('TensorFlow is installed here')
  assert sources._tfds_available('mnist') == (  # pylint: disable=protected-access
      False, 'TensorFlow is not installed (the tfds extra)')


def test_the_sample_ships_in_the_package():
  from conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  with open(os.path.join(REPO_ROOT, 'setup.cfg')) as f:
    setup = f.read()
  assert '[options.package_data]\n' in setup and 'qprune.data = mnist_sample.npz' in setup


@pytest.mark.real_data
def test_the_sample_is_rebuilt_byte_for_byte_from_full_mnist(data_dir, cache_dir):
  """tools/make_mnist_sample.py, run on the full MNIST, gives exactly the shipped file: the
  first 6,000 training and 1,000 test images, unchanged."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  from conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'make_mnist_sample', os.path.join(REPO_ROOT, 'tools', 'make_mnist_sample.py'))
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  with open(sources.SAMPLE_FILES['mnist'], 'rb') as f:
    assert tool.sample_bytes(data_dir, cache_dir) == f.read()


def test_the_main_command_trains_without_any_data(tmp_path):
  """README's main command with no data_dir, no $QPRUNE_DATA_DIR and no TensorFlow: it trains on
  the bundled sample and says so once."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('tensorflow') is not None:
    pytest.skip('TensorFlow is installed here: TFDS would be tried first')
  env = {k: v for k, v in os.environ.items() if k != 'QPRUNE_DATA_DIR'}
  proc = subprocess.run(
      [sys.executable, '-m', 'qprune.main', '--config=configs/mnist_lenet5.py',
       f'--workdir={tmp_path / "w"}', '--config.epochs=1', '--config.train_subset=512',
       '--config.eval_subset=256', '--config.progress=False'],
      capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stderr.count('data: using the bundled MNIST sample (6,000 train / 1,000 test)') == 1
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  assert results['dataset'] == 'mnist' and results['test_accuracy'] > 0.2  # chance: 0.1
  recorded = json.load(open(tmp_path / 'w' / 'results.json'))
  assert any('bundled MNIST sample' in w for w in recorded.get('warnings') or [])
