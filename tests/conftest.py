"""Shared fixtures. Real-data tests read ../shared/data (or $QPRUNE_DATA_DIR).

Without that data the real-data tests are skipped on a developer machine but FAIL under CI
(CI=true), so a CI run can never pass by silently skipping them.
"""
import logging
import os
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests build many small models whose steps compile to the same HLO (and subprocesses repeat
# them): XLA's persistent cache turns those repeats into cache hits. Set before JAX starts.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'qprune-test-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def shared_data_dir() -> str:
  return os.environ.get('QPRUNE_DATA_DIR') or os.path.join(REPO_ROOT, '..', 'shared', 'data')


@pytest.fixture(scope='session')
def data_dir():
  path = shared_data_dir()
  if not os.path.exists(os.path.join(path, 'mnist.tar.gz')) and not os.path.isdir(
      os.path.join(path, 'mnist')):
    message = f'real MNIST not found in {path} (set QPRUNE_DATA_DIR)'
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  """One decode of the real data per test session (shared with the binary via env)."""
  path = os.environ.get('QPRUNE_CACHE_DIR') or str(tmp_path_factory.mktemp('qprune_cache'))
  os.environ['QPRUNE_CACHE_DIR'] = path
  return path


@pytest.fixture(scope='session')
def mnist_small(data_dir, cache_dir):
  """The first 2048 training and 512 test images of real MNIST, on device."""
  from qprune.data import pipeline
  return pipeline.load_data('mnist', data_dir, train_subset=2048, eval_subset=512,
                            cache_dir=cache_dir)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


class _CompileCounter(logging.Handler):
  """Counts jax's 'Compiling <name>' log records whose message contains `needle`."""

  def __init__(self, needle):
    super().__init__()
    self.needle, self.count = needle, 0

  def emit(self, record):
    message = record.getMessage()
    if 'Compiling' in message and self.needle in message:
      self.count += 1


def count_compiles(needle, fn):
  """(fn(), number of XLA compilations of functions whose log line contains `needle`)."""
  import jax  # pylint: disable=g-import-not-at-top
  counter = _CompileCounter(needle)
  logger = logging.getLogger('jax')
  logger.addHandler(counter)
  try:
    with jax.log_compiles():
      out = fn()
  finally:
    logger.removeHandler(counter)
  return out, counter.count


SLOW_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'slow_tests.txt')


def _listed_slow() -> set:
  """tests/slow_tests.txt: node ids measured slow (regenerate with tools/slow_tests.py)."""
  if not os.path.exists(SLOW_TESTS):
    return set()
  with open(SLOW_TESTS) as f:
    return {line.strip() for line in f if line.strip() and not line.startswith('#')}


def pytest_collection_modifyitems(config, items):
  """Every test that reads the real datasets (through the data_dir fixture, directly or via
  mnist_small / a trained run) is marked real_data: `pytest -m "not slow and not real_data"` is
  the unit tier (synthetic arrays and tiny models only). Tests listed in slow_tests.txt (measured
  slow) are marked slow: `pytest -m "not slow"` is the fast tier."""
  del config
  slow = _listed_slow()
  for item in items:
    if 'data_dir' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.real_data)
    if item.nodeid in slow:
      item.add_marker(pytest.mark.slow)
