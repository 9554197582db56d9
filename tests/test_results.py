"""The committed results: RESULTS.md in sync with results/, every published model loads and
re-measures to its recorded accuracy, no machine-local paths."""
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import REPO_ROOT

from qprune.report import publish as publish_lib
from reproduce import results as results_lib

RESULTS_DIR = os.path.join(REPO_ROOT, 'results')


def _runs():
  groups = results_lib.read_runs(RESULTS_DIR)
  return [run for runs in groups.values() for run in runs]


def test_results_md_is_in_sync_with_the_run_folders():
  with open(os.path.join(REPO_ROOT, 'RESULTS.md')) as f:
    committed = f.read()
  assert committed == results_lib.render(RESULTS_DIR), (
      'RESULTS.md is out of date: run python -m reproduce.results write')


def test_published_folders_are_self_contained():
  runs = _runs()
  assert runs, 'results/ holds no published run'
  for run in runs:
    folder = os.path.join(RESULTS_DIR, run.path)
    assert not os.path.exists(os.path.join(folder, 'checkpoints')), run.path
    for value in json.dumps(run.results.to_json()).split('"'):
      assert not value.startswith('/'), f'{run.path}: machine-local path {value}'
    for flag in (run.results.command or '').split():
      assert '=/' not in flag, f'{run.path}: machine-local path in its command: {flag}'
    for name in ('report.md', 'config.json', 'results.json'):
      if os.path.exists(os.path.join(folder, name)):
        with open(os.path.join(folder, name)) as f:
          assert '/work/' not in f.read(), f'{run.path}/{name}'
    assert (run.results.command or '').startswith('python -m qprune.main'), run.path
    export = publish_lib.export_path(run.results)
    if export:
      assert os.path.isfile(os.path.join(folder, export))
    else:
      assert os.path.isfile(os.path.join(folder, 'model.json'))


@pytest.mark.real_data
def test_published_mnist_models_reproduce_their_accuracy(data_dir, cache_dir):
  """Each committed LeNet-5 (full precision and every quantized export), evaluated afresh on the
  full MNIST test split, gives exactly the accuracy its results.json records."""
  import qprune  # pylint: disable=g-import-not-at-top
  from qprune.data import pipeline  # pylint: disable=g-import-not-at-top
  runs = [r for r in _runs() if r.results.dataset == 'mnist']
  assert runs
  data = pipeline.load_data('mnist', data_dir, cache_dir=cache_dir)
  for run in runs:
    folder = os.path.join(RESULTS_DIR, run.path)
    export = publish_lib.export_path(run.results)
    if export:
      model, variables = qprune.load_quantized(os.path.join(folder, export))
      kernels = [np.asarray(v) for path, v in _flat(variables['params']) if path[-1] == 'kernel']
      for k in kernels:  # every weight 0 or ±2^e
        nonzero = np.abs(k[k != 0])
        assert np.all(np.exp2(np.round(np.log2(nonzero))) == nonzero), run.path
    else:
      model, variables = qprune.load_model(folder)
    accuracy = qprune.evaluate(model, variables, data.test, 1000)['accuracy']
    assert accuracy == pytest.approx(run.results.test_accuracy, abs=1e-9), run.path


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
      'mode': 'quantize', 'export_path': str(work / 'model.qpq'), 'test_accuracy': 0.9,
      'machine': None, 'a_future_key': [1]}))
  dest = tmp_path / 'results' / 'mnist_lenet5' / 'optimal_k1'
  files = publish_lib.publish(str(work), str(dest), command='python -m qprune.main --x',
                              machine='cpu')
  assert files == ['config.json', 'model.qpq', 'plots', 'report.md', 'results.json']
  # The run's own file, not its record re-serialized: keys in their order, none added but the
  # filled-in header.
  assert (dest / 'results.json').read_text() == json.dumps({
      'mode': 'quantize', 'export_path': 'model.qpq', 'test_accuracy': 0.9, 'machine': 'cpu',
      'a_future_key': [1], 'command': 'python -m qprune.main --x'}, indent=1) + '\n'
  publish_lib.publish(str(work), str(dest))  # republished: the filled-in header is kept
  published = json.loads((dest / 'results.json').read_text())
  assert published['machine'] == 'cpu' and published['command'] == 'python -m qprune.main --x'
  assert str(work) not in (dest / 'report.md').read_text()
  with pytest.raises(publish_lib.PublishError, match='missing'):
    publish_lib.publish(str(tmp_path / 'nowhere'), str(tmp_path / 'x'))


def _finished_run(folder, accuracy=0.9):
  """A finished train run's folder as the binary leaves it (checkpoints and metrics included)."""
  (folder / 'model').mkdir(parents=True)
  (folder / 'model' / 'weights').write_bytes(b'w')
  (folder / 'model.json').write_text('{}')
  (folder / 'checkpoints').mkdir()
  (folder / 'metrics.jsonl').write_text('{"epoch": 1}\n')
  (folder / 'results.json').write_text(json.dumps({'mode': 'train', 'test_accuracy': accuracy}))
  return folder


def _tree(folder):
  return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


def test_publish_refuses_to_replace_what_it_did_not_publish(tmp_path, capsys):
  """Another run's workdir, a folder of other files, a file, the run itself or a folder holding
  it: refused with one line, every file left as it was."""
  work = _finished_run(tmp_path / 'runs' / 'a')
  other = _finished_run(tmp_path / 'runs' / 'b', accuracy=0.5)
  notes = tmp_path / 'notes'
  notes.mkdir()
  (notes / 'todo.txt').write_text('keep me')
  a_file = tmp_path / 'file.txt'
  a_file.write_text('keep me too')
  before = _tree(tmp_path)
  for dest, match in ((other, 'not a published folder .*metrics.jsonl'),
                      (notes, 'not a published folder .*no results.json'),
                      (a_file, 'not a folder'), (work, 'itself or a folder holding it'),
                      (work.parent, 'itself or a folder holding it'),
                      (tmp_path, 'itself or a folder holding it'),
                      (work / 'published', 'inside the run')):
    with pytest.raises(publish_lib.PublishError, match=match):
      publish_lib.publish(str(work), str(dest))
    assert publish_lib.main([f'--workdir={work}', f'--to={dest}']) == 2
    err = capsys.readouterr().err
    assert err.startswith('qprune: error: ') and err.count('\n') == 1, err
  assert _tree(tmp_path) == before
  assert json.loads((other / 'results.json').read_text())['test_accuracy'] == 0.5
  assert (notes / 'todo.txt').read_text() == 'keep me'


def test_republishing_swaps_in_a_complete_folder_or_keeps_the_old_one(tmp_path):
  """A published folder is replaced only by a complete new one: a run without its model leaves
  it as it was, and no staging folder is left beside it."""
  work = _finished_run(tmp_path / 'run', accuracy=0.9)
  dest = tmp_path / 'results' / 'mnist_lenet5' / 'fp'
  dest.mkdir(parents=True)  # an empty destination is fine
  assert publish_lib.publish(str(work), str(dest)) == ['model', 'model.json', 'results.json']
  (work / 'results.json').write_text(json.dumps({'mode': 'train', 'test_accuracy': 0.95}))
  publish_lib.publish(str(work), str(dest))  # republished over its earlier publication
  assert json.loads((dest / 'results.json').read_text())['test_accuracy'] == 0.95
  published = _tree(dest)
  shutil.rmtree(work / 'model')
  (work / 'results.json').write_text(json.dumps({'mode': 'train', 'test_accuracy': 0.1}))
  with pytest.raises(publish_lib.PublishError, match='has no model: not a finished run'):
    publish_lib.publish(str(work), str(dest))
  assert _tree(dest) == published
  assert json.loads((dest / 'results.json').read_text())['test_accuracy'] == 0.95
  assert os.listdir(dest.parent) == ['fp']  # no staging or old folder left beside it


def test_publish_sweep_checks_every_destination_before_publishing_any(tmp_path):
  sweep = tmp_path / 'sweep'
  for name, k in (('a', 1), ('b', 2)):
    run = sweep / name
    run.mkdir(parents=True)
    (run / 'model.qpq').write_bytes(b'qpq')
    (run / 'config.json').write_text(json.dumps({'mode': 'quantize', 'quant': {
        'method': 'optimal', 'k': k, 'final_epochs': 1, 'retrain_epochs': 1}}))
    (run / 'results.json').write_text(json.dumps({'mode': 'quantize',
                                                  'export_path': str(run / 'model.qpq')}))
  group = tmp_path / 'results' / 'mnist_lenet5'
  _finished_run(group / 'optimal_k2')  # a workdir where the second run would go
  with pytest.raises(publish_lib.PublishError, match='optimal_k2 is not empty'):
    publish_lib.publish_sweep(str(sweep), str(group))
  assert sorted(os.listdir(group)) == ['optimal_k2']  # optimal_k1 not published either
  shutil.rmtree(group / 'optimal_k2')
  assert publish_lib.publish_sweep(str(sweep), str(group)) == ['optimal_k1', 'optimal_k2']
  assert (group / 'optimal_k2' / 'model.qpq').read_bytes() == b'qpq'


def test_publish_writes_paths_in_and_beside_the_start_folder_relative_to_it(tmp_path):
  """A run started with absolute paths (its init model in the checkout, the data beside it)
  publishes none of them: the command, the config and the report name them as a user would."""
  checkout, data = tmp_path / 'checkout', tmp_path / 'shared' / 'data'
  work = checkout / 'workdirs' / 'q'
  work.mkdir(parents=True)
  (work / 'model.qpq').write_bytes(b'qpq')
  init = checkout / 'results' / 'fp'
  command = (f'python -m qprune.main --workdir={work} --config.init_from={init} '
             f'--config.data_dir={data} --config.cache_dir=/var/cache/q')
  (work / 'config.json').write_text(json.dumps({'init_from': str(init), 'data_dir': str(data)}))
  (work / 'report.md').write_text(f'init: `{init}`, data {data}/cifar10.tar.gz, 1/2 of 7/8\n')
  (work / 'results.json').write_text(json.dumps({
      'mode': 'quantize', 'export_path': str(work / 'model.qpq'), 'command': command,
      'warnings': [f'rebuilt from {data}/cifar10.tar.gz']}))
  dest = checkout / 'results' / 'q'
  publish_lib.publish(str(work), str(dest), root=str(checkout))
  published = json.loads((dest / 'results.json').read_text())
  assert published['command'] == (
      'python -m qprune.main --workdir=workdirs/q --config.init_from=results/fp '
      '--config.data_dir=../shared/data --config.cache_dir=/var/cache/q')  # outside: kept
  assert published['warnings'] == ['rebuilt from ../shared/data/cifar10.tar.gz']
  assert published['export_path'] == 'model.qpq'
  assert json.loads((dest / 'config.json').read_text()) == {
      'init_from': 'results/fp', 'data_dir': '../shared/data'}
  assert (dest / 'report.md').read_text() == (
      'init: `results/fp`, data ../shared/data/cifar10.tar.gz, 1/2 of 7/8\n')
  assert str(tmp_path) not in ''.join(p.read_text() for p in dest.glob('*.*') if p.suffix != '.qpq')


def test_run_names_mark_every_recipe_change():
  from qprune import configs  # pylint: disable=g-import-not-at-top
  from qprune.quant.inq import DEFAULT_SCHEDULE  # pylint: disable=g-import-not-at-top
  assert tuple(configs.quant_config().schedule) == DEFAULT_SCHEDULE
  def name(**quant):
    q = {'method': 'optimal', 'k': 2, 'final_epochs': 1, 'retrain_epochs': 1, **quant}
    return publish_lib.run_name({'mode': 'quantize', 'quant': q})
  assert name() == 'optimal_k2'
  assert name(zero_code=True, schedule=[0.5, 0.75, 0.875, 1.0]) == 'optimal_k2'
  assert name(zero_code=False, retrain_epochs=2) == 'optimal_k2_zero_free_retrain2'
  assert (name(zero_code=False, schedule=[0.5, 0.75, 0.875, 0.9375, 1.0], final_epochs=0)
          == 'optimal_k2_zero_free_steps5_final0')
  assert name(method='inq', bits=4) == 'inq_b4'
  assert name(bits_budget=2.5) == 'optimal_budget2.5'
  assert name(distill_weight=0.0, distill_temperature=1.0) == 'optimal_k2'
  assert name(distill_weight=0.5, distill_temperature=1.0) == 'optimal_k2_distill0.5'
  assert name(distill_weight=1.0, distill_temperature=4.0) == 'optimal_k2_distill1_t4'
  assert publish_lib.run_name({'mode': 'train'}) == 'fp'
  assert publish_lib.run_name({'mode': 'train', 'compute_dtype': 'float32'}) == 'fp'
  assert publish_lib.run_name({'mode': 'train', 'compute_dtype': 'bfloat16'}) == 'fp_bf16'


def _write_run(folder, results, config=None):
  """A published run folder as `read_runs` reads it: results.json (with a recorded command) and,
  if given, config.json."""
  folder.mkdir(parents=True)
  (folder / 'results.json').write_text(json.dumps({'command': 'python -m qprune.main', **results}))
  if config is not None:
    (folder / 'config.json').write_text(json.dumps(config))


def test_full_precision_runs_table_and_the_cifar10_data_note(tmp_path):
  """A group with two trained models lists both against `fp` (which stays the reference
  whatever the folder order), and a CIFAR-10 group says which copy of the data it read."""
  group = tmp_path / 'cifar10_resnet20'
  def run(name, accuracy, dtype):
    _write_run(group / name,
               {'mode': 'train', 'dataset': 'cifar10', 'model': 'resnet20',
                'test_accuracy': accuracy, 'params': 269_722, 'macs': 9, 'epochs_run': 30,
                'wall_time_s': 600.0, 'machine': 'cpu x1'},
               {'mode': 'train', 'compute_dtype': dtype, 'batch_size': 128, 'learning_rate': 0.1,
                'lr_schedule': 'cosine', 'weight_decay': 5e-4})
  run('fp', 0.8651, 'float32')
  text = results_lib.render(str(tmp_path))
  assert 'JPEG re-encoding' in text and 'Full-precision runs' not in text
  run('a_bf16', 0.8600, 'bfloat16')
  text = results_lib.render(str(tmp_path))
  assert 'Full precision (`fp`): **86.51 %**' in text
  assert ('| [a_bf16](results/cifar10_resnet20/a_bf16) | bfloat16 | 30 | batch 128, lr 0.1 '
          'cosine, wd 0.0005 | 86.00 % | -0.51 | 10.0 min | cpu x1 |') in text
  assert '| [fp](results/cifar10_resnet20/fp) | float32 | 30 |' in text
  assert ('- Goal full precision >= 90.0 % on this copy (He et al. 2016: 91.25 % on the original '
          'images): **missed** (best 86.51 %, '
          '`fp`, after 30 epochs)') in text
  # A resumed run's wall_time_s is its last process's: the table also gives its epochs' time.
  results_json = group / 'fp' / 'results.json'
  resumed = json.loads(results_json.read_text())
  resumed['history'] = [{'epoch': 1, 'epoch_time_s': 500.0}, {'epoch': 2, 'epoch_time_s': 400.0}]
  results_json.write_text(json.dumps(resumed))
  assert ('| 86.51 % | +0.00 | 10.0 min in its last process (resumed; its epochs 15.0 min) | '
          'cpu x1 |') in results_lib.render(str(tmp_path))
  run('longer', 0.9100, 'float32')
  text = results_lib.render(str(tmp_path))
  assert 'original images): **met** (best 91.00 %, `longer`' in text
  assert ('| ResNet-20 / CIFAR-10 | `longer`: 30 epochs, 10.0 min | full precision >= 90.0 % on '
          'this copy') in text.split('## ResNet-20')[0]  # the claims table comes first


def _study_run(root, name, *, epochs, accuracy, decided_from=None, stop_rule='fixed',
               fired=False, distance=0.0, train_macs=100, shrunk_epoch=None, finetune_epochs=2,
               finetune_lr=0.01, train_budget=None, seed=0, pretrain_seed=None,
               pretrain_history=(), to_final=(0.1, 0.0), macs=20):
  folder = root / 'cifar10_resnet20' / name
  folder.mkdir(parents=True)
  (folder / 'config.json').write_text(json.dumps({
      'mode': 'prune', 'epochs': 10, 'seed': seed,
      'prune': {'snapshots': decided_from is None, 'finetune_learning_rate': finetune_lr,
                'train_budget': train_budget}}))
  (folder / 'results.json').write_text(json.dumps({
      'mode': 'prune', 'dataset': 'cifar10', 'model': 'resnet20', 'criterion': 'l1',
      'prune_ratio': 0.3, 'selection': 'uniform', 'macs_removed': 0.45, 'params': 10,
      'macs': macs, 'macs_before': 40, 'test_accuracy': accuracy, 'pretrained_test_accuracy': 0.85,
      'pruned_test_accuracy': 0.5, 'pretrain_epochs': epochs, 'stop_rule': stop_rule,
      'stop_rule_fired': fired, 'final_mask_distance': distance, 'decided_from': decided_from,
      'train_macs': train_macs, 'finetune_epochs': finetune_epochs, 'mask_distance': [None, 0.1],
      'mask_distance_to_final': list(to_final), 'command': 'python -m qprune.main',
      'pretrain_history': list(pretrain_history),
      'shrunk_epoch': epochs if shrunk_epoch is None else shrunk_epoch,
      **({} if pretrain_seed is None else {'pretrain_seed': pretrain_seed})}))


def test_decision_study_table_and_goals(tmp_path):
  """Hand-made study: the full-training decision at 84.00 %, an epoch-2 decision 0.2 below it
  at a quarter of the compute (goals met), an epoch-1 one 1.0 below (not the best early one), and
  an Early-Bird pick at epoch 5 (50 %: that goal missed)."""
  _study_run(tmp_path, 'prune_l1_full', epochs=10, accuracy=0.84, stop_rule='full',
             train_macs=400)
  _study_run(tmp_path, 'prune_l1_epoch1', epochs=1, accuracy=0.83, decided_from='w',
             distance=0.2, train_macs=90)
  _study_run(tmp_path, 'prune_l1_epoch2', epochs=2, accuracy=0.838, decided_from='w',
             distance=0.1, train_macs=100)
  _study_run(tmp_path, 'prune_l1_early_bird', epochs=5, accuracy=0.839, decided_from='w',
             stop_rule='early_bird', fired=True, train_macs=200)
  # A control (the epoch-1 masks on the epoch-10 weights), the best of all: not a decision, so
  # no goal may count it.
  _study_run(tmp_path, 'prune_l1_epoch1_final_weights', epochs=1, accuracy=0.845,
             decided_from='w', distance=0.2, train_macs=410, shrunk_epoch=10)
  text = results_lib.render(str(tmp_path))
  assert '#### Criterion `l1`: ratio 0.3 (uniform), 45.00 % of the MACs removed' in text
  rows = [line for line in text.splitlines() if line.startswith('| [prune_l1')]
  assert [row.split(']')[0][3:] for row in rows] == [
      'prune_l1_full', 'prune_l1_epoch1', 'prune_l1_epoch1_final_weights', 'prune_l1_epoch2',
      'prune_l1_early_bird']
  assert '1 of 10 epochs (10 %); control: these masks cut the epoch-10 weights |' in rows[2]
  assert ('- `prune_l1_epoch1_final_weights`: the epoch-1 masks on the epoch-10 weights reach '
          '84.50 % (+0.50 vs the full-training decision); of `prune_l1_epoch1`\'s -1.00, the '
          'mask accounts for +0.50 and the shorter training for -1.50') in text
  del rows[2]
  assert '| 2 of 10 epochs (20 %) | 0.100 |' in rows[2] and '| -0.20 | -1.20 |' in rows[2]
  assert '(0.25x)' in rows[2] and '5 of 10 epochs (50 %), Early-Bird rule |' in rows[3]
  assert ('- decision at ≤ 20 % of pretraining within 0.3 % of the full-training decision: '
          '**met** (`prune_l1_epoch2`: -0.20)') in text
  assert '- ... and within 1.0 % of the unpruned network after the same pretraining: **missed**' \
      in text
  assert '**met** (0.25x)' in text
  assert '- the stop rule finds such an epoch by itself: **missed** (epoch 5, -0.10)' in text
  results_lib.plot_decision_studies(results_lib.read_runs(str(tmp_path)), str(tmp_path / 'plots'))
  assert sorted(os.listdir(tmp_path / 'plots')) == [
      'cifar10_resnet20_prune_accuracy_vs_macs.png', 'cifar10_resnet20_prune_mask_distance.png']


def test_decision_study_longer_finetuning_is_its_own_table(tmp_path):
  """Decisions fine-tuned with another budget than the full-training run's are not compared
  with it: they get their own table against the decision after all epochs with that budget."""
  _study_run(tmp_path, 'prune_l1_full', epochs=10, accuracy=0.80, stop_rule='full',
             train_macs=400)
  _study_run(tmp_path, 'prune_l1_epoch2', epochs=2, accuracy=0.70, decided_from='w',
             train_macs=100)
  long = {'finetune_epochs': 6, 'finetune_lr': 0.1, 'decided_from': 'w'}
  _study_run(tmp_path, 'prune_l1_full_ft6', epochs=10, accuracy=0.83, train_macs=480, **long)
  _study_run(tmp_path, 'prune_l1_epoch2_ft6', epochs=2, accuracy=0.828, train_macs=180, **long)
  text = results_lib.render(str(tmp_path))
  first, longer = text.split('Longer fine-tuning: ')
  assert 'ft6' not in first.split('Goals:')[0]
  assert ('- decision at ≤ 20 % of pretraining within 0.3 % of the full-training decision: '
          '**missed** (`prune_l1_epoch2`: -10.00)') in first
  assert longer.startswith('the same decisions fine-tuned for 6 epochs at lr 0.1, each against '
                           'the decision after all 10 pretraining epochs with this fine-tuning.')
  rows = [line for line in longer.splitlines() if line.startswith('| [prune_l1')]
  assert [row.split(']')[0][3:] for row in rows] == ['prune_l1_epoch2_ft6', 'prune_l1_full_ft6']
  assert '| -0.20 |' in rows[0] and '(0.38x)' in rows[0] and '(1.00x)' in rows[1]
  assert ('- decision at ≤ 20 % of pretraining within 0.3 % of the full-training decision: '
          '**met** (`prune_l1_epoch2_ft6`: -0.20)') in longer
  assert '- compute to the pruned model ≤ 1/3 of prune-after-full-training: **missed** (0.38x)' \
      in longer
  assert '- `prune_l1_epoch2_ft6`: 82.80 % (+2.80) at 0.45x the compute' in longer
  assert 'prune_l1_full_ft6`: 83.00 %' not in longer  # more compute than prune_l1_full
  results_lib.plot_decision_studies(results_lib.read_runs(str(tmp_path)), str(tmp_path / 'plots'))


def test_early_bird_protocol_table_and_goals(tmp_path):
  """Decisions trained to a fraction of the full decision's compute (prune.train_budget) get
  their own table against it; the goal takes an early decision within 0.5x; the least compute
  that matches is named; a second seed's study is its own."""
  _study_run(tmp_path, 'prune_l1_full', epochs=10, accuracy=0.80, stop_rule='full',
             train_macs=400)
  budget = {'decided_from': 'w', 'finetune_lr': 0.1}
  _study_run(tmp_path, 'prune_l1_epoch1_b0.35', epochs=1, accuracy=0.798, train_macs=138,
             train_budget=0.35, finetune_epochs=6, **budget)
  _study_run(tmp_path, 'prune_l1_epoch2_b0.5', epochs=2, accuracy=0.799, train_macs=196,
             train_budget=0.5, finetune_epochs=8, macs=23, **budget)
  _study_run(tmp_path, 'prune_l1_epoch5_b0.5', epochs=5, accuracy=0.81, train_macs=198,
             train_budget=0.5, finetune_epochs=4, **budget)
  _study_run(tmp_path, 'prune_l1_epoch2_b1', epochs=2, accuracy=0.806, train_macs=398,
             train_budget=1.0, finetune_epochs=18, **budget)
  text = results_lib.render(str(tmp_path))
  table = text.split("Early-Bird's protocol (You et al. 2020)")[1]
  assert "lr 0.1" in table and "`prune_l1_full`'s training compute (80.00 %, 0.0 TMAC" in table
  rows = [line for line in table.splitlines() if line.startswith('| 0') or
          line.startswith('| 1')]
  assert [row.split('[')[1].split(']')[0] for row in rows] == [
      'prune_l1_epoch1_b0.35', 'prune_l1_epoch2_b0.5', 'prune_l1_epoch5_b0.5',
      'prune_l1_epoch2_b1']
  assert rows[1].startswith('| 0.5x | [prune_l1_epoch2_b0.5]') and '(0.49x)' in rows[1]
  # epoch 5 is 50 % of the schedule: better, but not an early decision
  assert ('- a decision at ≤ 20 % of the schedule, at ≤ 0.5x the training compute of '
          '`prune_l1_full`, within 0.3 % of it (or above): **met** (`prune_l1_epoch2_b0.5`: '
          '79.90 %, -0.10 at 0.49x)') in table
  # its network is larger than the reference's (the same ratio, other channels kept)
  assert ('  - at equal training compute, not equal size: it keeps 23 MACs per image, '
          '`prune_l1_full` 20') in table
  assert table.count('not equal size') == 1
  assert ('- the least compute at which an early decision matches it: 0.34x '
          '(`prune_l1_epoch1_b0.35`: 79.80 %, budget 0.35x)') in table
  # the first table holds no budgeted run
  assert '_b0' not in text.split("Early-Bird's protocol")[0].split('```')[0]
  # A second seed of what follows the epoch-2 decision (the same pretraining, seed 0): its row
  # joins this study, and the goal is judged by the mean of the two seeds.
  _study_run(tmp_path, 'prune_l1_epoch2_b0.5_s1', epochs=2, accuracy=0.803, train_macs=197,
             train_budget=0.5, finetune_epochs=8, seed=1, pretrain_seed=0, **budget)
  table = results_lib.render(str(tmp_path)).split("Early-Bird's protocol (You et al. 2020)")[1]
  assert '| 0.5x | [prune_l1_epoch2_b0.5_s1]' in table
  assert ('within 0.3 % of it (or above): **met** (`prune_l1_epoch2_b0.5`, mean of 2 seeds: '
          '80.10 %, +0.10 at 0.49x)') in table
  # A whole study with another seed (its own pretraining) is its own study.
  _study_run(tmp_path, 'prune_l1_seed1_full', epochs=10, accuracy=0.80, stop_rule='full',
             train_macs=400, seed=1)
  _study_run(tmp_path, 'prune_l1_seed1_epoch2_b0.5', epochs=2, accuracy=0.79, train_macs=196,
             train_budget=0.5, finetune_epochs=8, seed=1, pretrain_seed=1, **budget)
  text = results_lib.render(str(tmp_path))
  second = text.split('#### Criterion `l1, seed 1`')[1]
  assert '**missed** (`prune_l1_seed1_epoch2_b0.5`: 79.00 %, -1.00 at 0.49x)' in second
  assert '- the least compute at which an early decision matches it: **none**' in second
  assert 'prune_l1_epoch2_b0.5_s1' not in second.split('<details>')[0]
  results_lib.plot_decision_studies(results_lib.read_runs(str(tmp_path)), str(tmp_path / 'plots'))


def test_a_decision_from_a_replayed_pretraining_joins_its_study_only_if_it_is_the_same(tmp_path):
  """A decision replayed from a re-run of the reference's first epochs joins the study where its
  recorded epochs are the reference's (its distance to the final masks is then the reference's
  record); one whose epochs differ is left out, with the first difference. `check_replay` is
  the same test on a workdir against a published run, before any decision is trained."""
  history = [{'epoch': e, 'step': 10 * e, 'train_loss': 2.0 / e, 'test_accuracy': 0.3 * e,
              'mask_distance': None if e == 1 else 0.2 / e, 'epoch_time_s': 100.0 + e}
             for e in (1, 2, 3)]
  _study_run(tmp_path, 'prune_l1_full', epochs=3, accuracy=0.80, stop_rule='full',
             train_macs=400, pretrain_history=history, to_final=(0.4, 0.25, 0.0))
  budget = {'decided_from': 'w', 'finetune_lr': 0.1, 'train_budget': 0.5, 'train_macs': 196}
  timed_otherwise = [dict(h, epoch_time_s=1.0) for h in history[:2]]
  _study_run(tmp_path, 'prune_l1_epoch2_b0.5', epochs=2, accuracy=0.799, distance=None,
             pretrain_history=timed_otherwise, **budget)
  drifted = [history[0], dict(history[1], test_loss=1.5)]
  _study_run(tmp_path, 'prune_l1_epoch2_b0.5_s1', epochs=2, accuracy=0.9, seed=1,
             pretrain_seed=0, pretrain_history=drifted, **budget)
  text = results_lib.render(str(tmp_path))
  protocol = text.split("Early-Bird's protocol (You et al. 2020)")[1]
  row = next(line for line in protocol.splitlines() if '[prune_l1_epoch2_b0.5]' in line)
  assert row.split(' | ')[3] == '0.250'  # the reference's record at epoch 2
  assert '[prune_l1_epoch2_b0.5_s1]' not in protocol
  assert ("Left out: `prune_l1_epoch2_b0.5_s1`, whose recorded pretraining is not "
          "`prune_l1_full`'s (epoch 2: test_loss 1.5, the reference's None).") in text
  assert '(`prune_l1_epoch2_b0.5`: 79.90 %, -0.10 at 0.49x)' in protocol
  # A longer fine-tuning's group from another run of the pretraining is compared with its own
  # decision after all epochs, not with the full run.
  other = [dict(h, test_loss=1.5) for h in history]
  longer = {'decided_from': 'w', 'finetune_lr': 0.1, 'finetune_epochs': 6, 'train_macs': 100}
  _study_run(tmp_path, 'prune_l1_full_ft6', epochs=10, accuracy=0.82, pretrain_history=other,
             **longer)
  _study_run(tmp_path, 'prune_l1_epoch2_ft6', epochs=2, accuracy=0.83,
             pretrain_history=other[:2], **longer)
  text = results_lib.render(str(tmp_path))
  assert '| [prune_l1_epoch2_ft6]' in text and 'Left out: `prune_l1_epoch2_ft6`' not in text
  assert ("These runs decided from another run of `prune_l1_full`'s pretraining, which came out "
          "otherwise (epoch 1: test_loss 1.5") in text
  assert 'they are compared with `prune_l1_full_ft6` only' in text
  assert 'Against `prune_l1_full`' not in text

  workdir = tmp_path / 'replay'
  (workdir / 'pretrain').mkdir(parents=True)
  def check(records):
    (workdir / 'pretrain' / 'metrics.jsonl').write_text(
        ''.join(json.dumps(dict(r, mask={'a': '101'})) + '\n' for r in records))
    return subprocess.run([sys.executable, '-m', 'reproduce.results', 'check_replay',
                           str(workdir), str(tmp_path / 'cifar10_resnet20' / 'prune_l1_full')],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
  same = check(timed_otherwise)
  assert same.returncode == 0 and 'pretraining epochs 1-2 are' in same.stdout, same.stderr
  differs = check(drifted)
  assert differs.returncode == 1 and len(differs.stderr.splitlines()) == 1
  assert 'is not the one' in differs.stderr and '(epoch 2: test_loss 1.5' in differs.stderr
  assert check(history + [dict(history[-1], epoch=4)]).returncode == 1


def test_longer_finetuning_tables_in_numeric_order(tmp_path):
  """Budgets are ordered as numbers: 6 epochs before 10 (as strings, '10' sorts first)."""
  _study_run(tmp_path, 'prune_l1_full', epochs=10, accuracy=0.80, stop_rule='full',
             train_macs=400)
  for finetune in (10, 6):
    _study_run(tmp_path, f'prune_l1_full_ft{finetune}', epochs=10, accuracy=0.83,
               train_macs=480, finetune_epochs=finetune, finetune_lr=0.1, decided_from='w')
  tables = results_lib.render(str(tmp_path)).split('Longer fine-tuning: ')[1:]
  assert [t.split(' epochs')[0].rsplit(' ', 1)[1] for t in tables] == ['6', '10']


def test_pruned_model_table_and_the_reference_goal(tmp_path):
  """Prune runs outside a decision study: a row each, mean ± std per setting over its seeds, and
  the goal against the reference counts only settings within the reference's params."""
  group = tmp_path / 'mnist_lenet5'
  def run(name, results):
    _write_run(group / name, {'dataset': 'mnist', 'model': 'lenet5', **results})
  run('fp_2epochs', {'mode': 'train', 'test_accuracy': 0.9913, 'params': 431_150, 'macs': 9})
  for name, params, accuracy in (('prune_a_s0', 100_000, 0.9915), ('prune_a_s1', 100_000, 0.9909),
                                 ('prune_big_s0', 200_000, 0.9950)):
    run(name, {'mode': 'prune', 'criterion': 'taylor', 'prune_ratio': 0.68,
               'selection': 'global', 'params_before': 431_150, 'params': params,
               'macs_before': 9, 'macs': 5, 'pruned_test_accuracy': 0.96,
               'test_accuracy': accuracy, 'pretrain_epochs': 0})
  text = results_lib.render(str(tmp_path))
  assert 'From `fp_2epochs` (99.13 %, 431,150 params)' in text
  assert ('| [prune_a_s1](results/mnist_lenet5/prune_a_s1) | taylor at ratio 0.68 (global) on the '
          'starting model, without pretraining | 431,150 → 100,000 | 9 → 5 | 96.00 % | 99.09 % |'
          ) in text
  assert '- `prune_a`: fine-tuned 99.12 ± 0.04 % over 2 seeds' in text
  assert ('- Goal ≥ 99.10 % at ≤ 109,330 params: **met** by `prune_a` (99.12 % mean of 2 seeds, '
          'at most 100,000 params; +0.07 vs the reference)') in text


def test_float_layers_and_zero_free_sets_in_the_quantization_table(tmp_path):
  """A run that keeps its first and last layers in float32 says so in its row, and its recorded
  bits/weight (which counts those layers at 32 bits) keeps it out of the 2-bit goal; a zero-free
  run is named as one."""
  group = tmp_path / 'cifar10_resnet20'
  def run(name, results, quant):
    _write_run(group / name, {'dataset': 'cifar10', 'model': 'resnet20', **results},
               {'quant': quant, **({'weight_decay': 5e-4} if name == 'k2_zero_free' else {})})
  run('fp', {'mode': 'train', 'test_accuracy': 0.8651, 'params': 269_722, 'macs': 9}, {})
  recipe = {'retrain_epochs': 2, 'learning_rate': 0.01, 'final_epochs': 1}
  run('k1_float_ends', {'mode': 'quantize', 'test_accuracy': 0.86, 'fp_test_accuracy': 0.8651,
                        'method': 'optimal', 'bits_per_weight': 2.12, 'export_bytes': 100,
                        'fp32_bytes': 1000, 'float_layers': ['stem_conv', 'fc']},
      {**recipe, 'method': 'optimal', 'k': 1, 'exclude': ['stem_conv', 'fc']})
  text = results_lib.render(str(tmp_path))
  assert '2 ep/step, lr 0.01, final 1 ep; float32: stem_conv, fc | 2.12 |' in text
  assert '2 bits within 1.0 % of FP: **not measured**' in text
  # A zero-free run at 2 bits says so in its targets cell and counts for the 2-bit goal.
  run('k2_zero_free', {'mode': 'quantize', 'test_accuracy': 0.856, 'fp_test_accuracy': 0.8651,
                       'method': 'optimal', 'bits_per_weight': 2.0, 'export_bytes': 90,
                       'fp32_bytes': 1000}, {**recipe, 'method': 'optimal', 'k': 2,
                                             'zero_code': False,
                                             'schedule': [0.5, 0.75, 0.875, 0.9375, 1.0]})
  text = results_lib.render(str(tmp_path))
  assert ('| optimal (l1, zero-free), k=2 | 2 ep/step, lr 0.01, wd 0.0005, final 1 ep; '
          'frozen 50/75/87.5/93.75/100 % |') in text
  assert '2 bits within 1.0 % of FP: **met**' in text
  # Seeds of one setting are judged together: a lucky seed does not meet the goal on its own.
  three = {'mode': 'quantize', 'fp_test_accuracy': 0.8651, 'method': 'optimal',
           'bits_per_weight': 3.0, 'export_bytes': 120, 'fp32_bytes': 1000}
  run('b3', {**three, 'test_accuracy': 0.8640}, {**recipe, 'method': 'optimal', 'k': 3})
  run('b3_s1', {**three, 'test_accuracy': 0.8580}, {**recipe, 'method': 'optimal', 'k': 3})
  text = results_lib.render(str(tmp_path))
  assert ('3 bits within 0.3 % of FP: **missed**, 86.10 ± 0.42 % mean over 2 seeds (-0.41 vs FP; '
          '86.40 % / 85.80 %) by `b3`') in text
  # LeNet-5's goals name the levels of sets with a zero code: four zero-free values do not count.
  group = tmp_path / 'mnist_lenet5'
  (group / 'fp').mkdir(parents=True)
  (group / 'fp' / 'results.json').write_text(json.dumps(
      {'dataset': 'mnist', 'model': 'lenet5', 'mode': 'train', 'test_accuracy': 0.9944,
       'params': 431_150, 'macs': 9, 'epochs_run': 10}))
  (group / 'zf').mkdir()
  (group / 'zf' / 'results.json').write_text(json.dumps(
      {'dataset': 'mnist', 'model': 'lenet5', 'mode': 'quantize', 'test_accuracy': 0.9931,
       'method': 'optimal', 'bits_per_weight': 2.0, 'export_bytes': 9, 'fp32_bytes': 99,
       'layers': [{'name': 'fc1', 'distinct_values': 4}]}))
  text = results_lib.render(str(tmp_path))
  assert '2 bits (3 levels) at >= 98.5 %: **not measured**' in text
  assert '- optimal: 2.00 bits/weight (99.31 %, `zf`)' in text


def test_quantized_runs_are_judged_against_the_model_they_start_from(tmp_path):
  """Runs quantized from a second full-precision model of the group get their own table, their
  Δ and goals against that model, not the group's `fp`; older runs that recorded a workdir
  (not a published folder) as `init_from` stay with `fp`."""
  group = tmp_path / 'cifar10_resnet20'
  def train(name, accuracy, epochs):
    _write_run(group / name, {'mode': 'train', 'dataset': 'cifar10', 'model': 'resnet20',
                              'test_accuracy': accuracy, 'params': 9, 'macs': 9,
                              'epochs_run': epochs}, {'mode': 'train'})
  def quantize(name, accuracy, start):
    _write_run(group / name, {'mode': 'quantize', 'dataset': 'cifar10', 'model': 'resnet20',
                              'test_accuracy': accuracy, 'method': 'optimal',
                              'bits_per_weight': 3.0, 'export_bytes': 9, 'fp32_bytes': 99},
               {'quant': {'method': 'optimal', 'k': 3}, 'init_from': start})
  train('fp', 0.8651, 30)
  train('fp40', 0.9000, 40)
  quantize('old', 0.8640, 'workdirs/cifar/fp')
  quantize('new', 0.8980, 'results/cifar10_resnet20/fp40')
  text = results_lib.render(str(tmp_path))
  first, second = text.split('### Power-of-two quantization from `fp40` (90.00 %, 40 epochs')
  assert '[old]' in first and '[new]' not in first and '| 86.40 % | -0.11 |' in first
  assert '[new]' in second and '[old]' not in second and '| 89.80 % | -0.20 |' in second
  assert 'within 0.3 % of FP: **met**, best 86.40 % (-0.11 vs FP) by `old`' in first
  assert 'within 0.3 % of FP: **met**, best 89.80 % (-0.20 vs FP) by `new`' in second
  claims = text.split('## Claims by scale')[1].split('## ResNet-20')[0]
  assert ('| ResNet-20 / CIFAR-10 | from `fp40` (40 epochs, 90.00 %); runs of 0.0 min median | '
          '3 bits within 0.3 % of FP | **met** |') in claims
  # A resumed quantization: wall_time_s is its last process's; its INQ and final epochs count.
  results_json = group / 'new' / 'results.json'
  resumed = json.loads(results_json.read_text())
  resumed.update(wall_time_s=60.0, inq_steps=[{'step': 1, 'history': [{'epoch_time_s': 300.0}]}],
                 final_history=[{'epoch_time_s': 240.0}])
  results_json.write_text(json.dumps(resumed))
  assert ('| 89.80 % | -0.20 | 1.0 min in its last process (resumed; its epochs 9.0 min) |'
          in results_lib.render(str(tmp_path)))
  quantize('lossy', 0.8900, 'results/cifar10_resnet20/fp40')
  assert 'best 89.80 % (-0.20 vs FP) by `new`' in results_lib.render(str(tmp_path))


def test_attention_ablation_table_by_hand(tmp_path):
  """Two seeds: se_l1 beats l1 on its own (SE-gated) pretraining and on the plain one by more than
  either's spread; the training-free attention is within noise of l1."""
  from reproduce import ablation  # pylint: disable=g-import-not-at-top
  accuracies = {('l1', False): (0.90, 0.92), ('attention', False): (0.91, 0.92),
                ('se_l1', True): (0.95, 0.96), ('random', False): (0.5, 0.6),
                ('l1', True): (0.94, 0.94)}
  for (criterion, gated), values in accuracies.items():
    for seed, accuracy in enumerate(values):
      folder = tmp_path / 'runs' / f'seed{seed}' / f'{"gated_" * gated}{criterion}_r0.8'
      folder.mkdir(parents=True)
      (folder / 'config.json').write_text(json.dumps({'seed': seed,
                                                      'prune': {'se_gates': gated}}))
      (folder / 'results.json').write_text(json.dumps({
          'mode': 'prune', 'criterion': criterion, 'prune_ratio': 0.8, 'finetune_epochs': 1,
          'test_accuracy': accuracy, 'pruned_test_accuracy': accuracy / 2, 'params': 100}))
  pretrain = tmp_path / 'runs' / 'seed0' / 'pretrain'  # pretraining only: not a row
  pretrain.mkdir()
  (pretrain / 'results.json').write_text(json.dumps({'mode': 'prune', 'finetune_epochs': 0}))
  table = ablation.table([run.measurement() for run in ablation.read_runs(str(tmp_path / 'runs'))])
  rows = {(row['criterion'], row['pretraining']): row for row in table['rows']}
  assert sorted(rows) == [('attention', 'plain'), ('l1', 'SE-gated'), ('l1', 'plain'),
                          ('random', 'plain'), ('se_l1', 'SE-gated')]
  l1 = rows['l1', 'plain']
  assert l1['seeds'] == [0, 1] and l1['test_accuracy']['mean'] == pytest.approx(0.91)
  assert l1['test_accuracy']['std'] == pytest.approx(np.std([0.90, 0.92], ddof=1))
  assert rows['se_l1', 'SE-gated']['attention'] == 'learned'
  verdicts = {(v['criterion'], v['base_pretraining']): v for v in table['verdicts']
              if v['metric'] == 'test_accuracy'}
  assert sorted(verdicts) == [('attention', 'plain'), ('se_l1', 'SE-gated'), ('se_l1', 'plain')]
  assert verdicts['se_l1', 'SE-gated']['gain'] == pytest.approx(0.015)
  assert verdicts['se_l1', 'SE-gated']['beats_base']  # spread: the std of (0.95, 0.96)
  assert verdicts['se_l1', 'plain']['gain'] == pytest.approx(0.045)
  attention = verdicts['attention', 'plain']
  assert not attention['beats_base'] and not attention['loses_to_base']
  text = '\n'.join(ablation.markdown(table))
  assert '| 0.8 | `se_l1` | learned | SE-gated | 100 | 47.75 ± 0.35 | 95.50 ± 0.71 | 2 |' in text
  assert '`se_l1` beats `l1` (+1.50 points' in text
  assert '`se_l1` beats `l1` on the plain pretraining (+4.50 points' in text
  assert '`attention` within noise of `l1`' in text


def test_attention_ablation_merges_seeds_into_the_table_it_wrote(tmp_path, capsys):
  """--merge: a table written from seed 0 grows by seed 1's runs from another folder (a machine
  whose workdirs are gone), a rerun replaces its own cell and seed, another setting is refused."""
  from reproduce import ablation  # pylint: disable=g-import-not-at-top
  def runs(folder, seed, accuracies, finetune_epochs=1):
    for criterion, accuracy in accuracies.items():
      run = tmp_path / folder / f'seed{seed}' / f'{criterion}_r0.5'
      run.mkdir(parents=True)
      (run / 'config.json').write_text(json.dumps({'seed': seed, 'prune': {}}))
      (run / 'results.json').write_text(json.dumps({
          'mode': 'prune', 'criterion': criterion, 'prune_ratio': 0.5, 'dataset': 'cifar10',
          'finetune_epochs': finetune_epochs, 'test_accuracy': accuracy,
          'pruned_test_accuracy': accuracy / 2, 'params': 10, 'machine': f'machine {folder}'}))
    return str(tmp_path / folder)
  out = str(tmp_path / 'attention_ablation.json')
  assert ablation.main(['--runs', runs('a', 0, {'l1': 0.80, 'random': 0.70}), '--out', out]) == 0
  assert ablation.main(['--runs', runs('b', 1, {'l1': 0.82}), '--out', out, '--merge']) == 0
  rows = {row['criterion']: row for row in json.load(open(out))['rows']}
  assert rows['l1']['seeds'] == [0, 1] and rows['l1']['test_accuracy']['values'] == [0.80, 0.82]
  assert json.load(open(out))['config']['residual'] is False
  assert rows['random']['seeds'] == [0]
  assert json.load(open(out))['machine'] == 'machine a / machine b'
  older = json.load(open(out))
  del older['config']['residual']  # tables written before it was recorded still merge
  (tmp_path / 'attention_ablation.json').write_text(json.dumps(older))
  assert ablation.main(['--runs', runs('c', 0, {'l1': 0.90}), '--out', out, '--merge']) == 0
  rows = {row['criterion']: row for row in json.load(open(out))['rows']}
  assert rows['l1']['test_accuracy']['values'] == [0.90, 0.82]
  capsys.readouterr()
  assert ablation.main(['--runs', runs('d', 2, {'l1': 0.5}, finetune_epochs=3), '--out', out,
                        '--merge']) == 2
  assert 'tabulates another setting' in capsys.readouterr().err
  assert json.load(open(out))['rows'][0]['seeds'] == [0, 1]  # the table is left as it was


def test_attention_ablation_section_names_the_pruned_units():
  def units(config):
    return results_lib.attention_ablation_lines({'config': config, 'rows': [], 'verdicts': []})[2]
  assert 'conv channels and fc1 units' in units({'model': 'lenet5'})
  assert 'residual groups included' in units({'model': 'resnet20', 'residual': True})
  assert 'the residual stream kept whole' in units({'model': 'resnet20', 'residual': False})


@pytest.mark.parametrize('config_file, run', [
    ('cifar10_resnet20_quant_3bit.py', 'cifar10_resnet20/optimal_budget3_zero_free_distill1'),
    ('cifar10_resnet20_quant_2bit.py',
     'cifar10_resnet20/optimal_budget2_zero_free_retrain2_distill1'),
])
def test_goal_configs_are_the_published_goal_runs(config_file, run):
  """A goal config, given the published run's init_from, computes exactly what that run did."""
  from qprune import configs  # pylint: disable=g-import-not-at-top
  config = configs.sibling_config(os.path.join(REPO_ROOT, 'configs', 'x.py'),
                                  config_file[:-len('.py')])
  with open(os.path.join(RESULTS_DIR, run, 'config.json')) as f:
    stored = json.load(f)
  config.init_from = stored['init_from']
  stored = {k: v for k, v in configs.with_new_defaults(stored).items()
            if k not in configs.NON_SEMANTIC_FIELDS}
  assert configs.semantic_dict(config) == stored


def test_training_recipe_names_label_smoothing_only_where_it_was_used():
  from reproduce import results as book
  base = {'batch_size': 128, 'learning_rate': 0.1, 'lr_schedule': 'cosine', 'weight_decay': 5e-4}
  plain = types.SimpleNamespace(config=dict(base, label_smoothing=0.0))
  smoothed = types.SimpleNamespace(config=dict(base, label_smoothing=0.1))
  assert book.training_recipe(plain) == 'batch 128, lr 0.1 cosine, wd 0.0005'
  assert book.training_recipe(smoothed) == ('batch 128, lr 0.1 cosine, wd 0.0005, '
                                            'label smoothing 0.1')
