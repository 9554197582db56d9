"""The committed results: RESULTS.md in sync with results/, every published model loads and
re-measures to its recorded accuracy, no machine-local paths."""
import json
import os

import numpy as np
import pytest

from qprune.report import results as results_lib

from conftest import REPO_ROOT

RESULTS_DIR = os.path.join(REPO_ROOT, 'results')


def _runs():
  groups = results_lib.read_runs(RESULTS_DIR)
  return [run for runs in groups.values() for run in runs]


def test_results_md_is_in_sync_with_the_run_folders():
  with open(os.path.join(REPO_ROOT, 'RESULTS.md')) as f:
    committed = f.read()
  assert committed == results_lib.render(RESULTS_DIR), (
      'RESULTS.md is out of date: run python -m qprune.report.results write')


def test_published_folders_are_self_contained():
  runs = _runs()
  assert runs, 'results/ holds no published run'
  for run in runs:
    folder = os.path.join(RESULTS_DIR, run['path'])
    assert not os.path.exists(os.path.join(folder, 'checkpoints')), run['path']
    for value in json.dumps(run['results']).split('"'):
      assert not value.startswith('/'), f'{run["path"]}: machine-local path {value}'
    with open(os.path.join(folder, 'report.md')) as f:
      assert '/work/' not in f.read(), run['path']
    assert run['results'].get('command', '').startswith('python -m qprune.main'), run['path']
    if run['results'].get('export_path'):
      assert os.path.isfile(os.path.join(folder, run['results']['export_path']))
    else:
      assert os.path.isfile(os.path.join(folder, 'model.json'))


@pytest.mark.real_data
def test_published_mnist_models_reproduce_their_accuracy(data_dir, cache_dir):
  """Each committed LeNet-5 (full precision and every quantized export), evaluated afresh on the
  full MNIST test split, gives exactly the accuracy its results.json records."""
  import qprune  # pylint: disable=g-import-not-at-top
  from qprune.data import pipeline  # pylint: disable=g-import-not-at-top
  runs = [r for r in _runs() if r['results']['dataset'] == 'mnist']
  assert runs
  data = pipeline.load_data('mnist', data_dir, cache_dir=cache_dir)
  for run in runs:
    folder = os.path.join(RESULTS_DIR, run['path'])
    if run['results'].get('export_path'):
      model, variables = qprune.load_quantized(os.path.join(folder, run['results']['export_path']))
      kernels = [np.asarray(v) for path, v in _flat(variables['params']) if path[-1] == 'kernel']
      for k in kernels:  # every weight 0 or ±2^e
        nonzero = np.abs(k[k != 0])
        assert np.all(np.exp2(np.round(np.log2(nonzero))) == nonzero), run['path']
    else:
      model, variables = qprune.load_model(folder)
    accuracy = qprune.evaluate(model, variables, data.test, 1000)['accuracy']
    assert accuracy == pytest.approx(run['results']['test_accuracy'], abs=1e-9), run['path']


def _flat(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def test_publish_copies_a_run_without_checkpoints(tmp_path):
  work = tmp_path / 'run'
  (work / 'checkpoints').mkdir(parents=True)
  (work / 'plots').mkdir()
  (work / 'plots' / 'history.png').write_bytes(b'png')
  (work / 'model.qpq').write_bytes(b'qpq')
  (work / 'config.json').write_text('{"quant": {"method": "optimal", "k": 1}}')
  (work / 'report.md').write_text(f'Workdir: `{work}`\n')
  (work / 'results.json').write_text(json.dumps({
      'mode': 'quantize', 'export_path': str(work / 'model.qpq'), 'test_accuracy': 0.9}))
  dest = tmp_path / 'results' / 'mnist_lenet5' / 'optimal_k1'
  files = results_lib.publish(str(work), str(dest), command='python -m qprune.main --x',
                              machine='cpu')
  assert files == ['config.json', 'model.qpq', 'plots', 'report.md', 'results.json']
  published = json.loads((dest / 'results.json').read_text())
  assert published['export_path'] == 'model.qpq' and published['machine'] == 'cpu'
  assert str(work) not in (dest / 'report.md').read_text()
  with pytest.raises(results_lib.ResultsError, match='missing'):
    results_lib.publish(str(tmp_path / 'nowhere'), str(tmp_path / 'x'))
