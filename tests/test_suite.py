"""The GPU suite (reproduce.benchmarks.suite): --tiny runs every section on the CPU on a synthetic
CIFAR-10 copy in qprune's offline format, and writes one JSON with numbers or a skip reason for
each (no timing is asserted); the full-size pipeline command is one the binary accepts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from qprune.data import make_folders
from reproduce.benchmarks import suite


def _synthetic_cifar10(folder, rng, train=600, test=100):
  """A cifar10.tar.gz of random images, written by make_folders (the loader's own format)."""
  arrays = {f'{k}_{split}': a for split, n in (('train', train), ('test', test))
            for k, a in (('x', rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)),
                         ('y', np.arange(n) % 10))}
  npz = os.path.join(folder, 'cifar10.npz')
  np.savez(npz, **arrays)
  out = os.path.join(folder, 'data')
  assert make_folders.main(['--from_npz', npz, '--out', out, '--tar']) == 0
  return out


@pytest.mark.slow
def test_suite_tiny(tmp_path, rng):
  data_dir = _synthetic_cifar10(str(tmp_path), rng)
  out = tmp_path / 'out'
  env = {**os.environ, 'QPRUNE_CACHE_DIR': str(tmp_path / 'cache')}
  proc = subprocess.run([sys.executable, '-m', 'reproduce.benchmarks.suite', f'--out={out}',
                         '--tiny', f'--data_dir={data_dir}'], capture_output=True, text=True,
                        timeout=1200, cwd=REPO_ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / 'suite.json').read_text())
  assert set(result['sections']) == set(suite.ORDER)
  for name, section in result['sections'].items():
    assert section['status'] == 'ok', (name, section.get('reason'))
    assert section['wall_s'] > 0 and section['limit_s'] > 0
  assert result['device_kind'] and result['jax_version'] and result['wall_s'] > 0
  s = result['sections']
  assert s['kmeans']['results']['qprune_s'] > 0
  assert s['search']['results']['vmap_s'] > 0 and s['search']['results']['loop_over_vmap'] > 0
  epoch = s['epoch']['results']['rows'][0]
  assert epoch['warm_epoch_s'] > 0 and len(epoch['epoch_times_s']) == 2
  pipeline = s['pipeline']['results']
  assert pipeline['process_wall_s'] > 0 and 0 <= pipeline['test_accuracy'] <= 1
  assert pipeline['compression_ratio'] > 1
  row = s['throughput']['results']['rows'][0]
  assert row['model'] == 'lenet5'
  for dtype in ('float32', 'bfloat16'):
    assert row[dtype]['qprune']['images_per_s'] > 0 and row[dtype]['speedup'] > 0
  # every other zoo model is named with why it was not timed
  assert len(s['throughput']['results']['skipped']) == 8
  table = (out / 'suite.md').read_text()
  assert '| lenet5 |' in table and 'k-means target selection' in table
  assert table.strip() in proc.stdout


def test_without_data_the_data_sections_say_why(tmp_path):
  data, reason = suite.find_cifar10(None)
  assert data is None and '--data_dir' in reason
  data, reason = suite.find_cifar10(str(tmp_path))
  assert data is None and 'cifar10.tar.gz' in reason
  (tmp_path / 'cifar10.tar.gz').write_bytes(b'')
  assert suite.find_cifar10(str(tmp_path)) == (str(tmp_path), None)


def test_without_ml_collections_the_pipeline_is_skipped(tmp_path, monkeypatch):
  real = suite.importlib.util.find_spec
  monkeypatch.setattr(suite.importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'ml_collections' else real(name, *a))
  record = suite._pipeline_section(60, str(tmp_path), dict(os.environ), str(tmp_path), True)
  assert record['status'] == 'skipped' and 'ml_collections' in record['reason']


@pytest.mark.parametrize('tiny', [False, True])
def test_pipeline_command_is_accepted_by_the_binary(tiny, tmp_path):
  """The overrides the suite passes parse and validate (--only_check_args: no JAX, no data)."""
  cmd = suite.pipeline_command(str(tmp_path / 'run'), str(tmp_path), tiny) + ['--only_check_args']
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
  assert proc.returncode == 0, proc.stderr[-2000:]
