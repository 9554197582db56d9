"""The binary end to end, through a subprocess, on real MNIST (small subsets)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT

import qprune
from qprune.data import sources
from qprune.quant import in_target_set, read_targets

SMALL = ['--config.train_subset=1024', '--config.eval_subset=500', '--config.batch_size=64',
         '--config.progress=False']


def run_main(config, workdir, *overrides, check=True):
  cmd = [sys.executable, '-m', 'qprune.main',
         f'--config={os.path.join(REPO_ROOT, "configs", config)}', f'--workdir={workdir}',
         *overrides]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
  if check and proc.returncode:
    raise AssertionError(f'{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
  return proc


@pytest.fixture(scope='module')
def trained(data_dir, cache_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('lenet'))
  proc = run_main('mnist_lenet5.py', workdir, f'--config.data_dir={data_dir}',
                  '--config.epochs=2', *SMALL)
  return workdir, proc


@pytest.fixture(scope='module')
def mnist_test(data_dir, cache_dir):
  images, labels = sources.load_arrays('mnist', data_dir, cache_dir)['test']
  return images[:500], labels[:500]


def _accuracy(model, variables, images, labels):
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  return float(np.mean(np.argmax(logits, -1) == labels))


@pytest.mark.real_data
def test_train_writes_results_and_a_loadable_model(trained, mnist_test):
  workdir, proc = trained
  results = json.load(open(os.path.join(workdir, 'results.json')))
  for key in ('mode', 'model', 'dataset', 'test_accuracy', 'params', 'macs', 'epochs_run',
              'wall_time_s'):
    assert key in results
  assert results['epochs_run'] == 2 and results['params'] == 431_150
  assert results['test_accuracy'] > 0.85
  assert len(open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()) == 2
  model, variables = qprune.load_model(workdir)
  assert _accuracy(model, variables, *mnist_test) == pytest.approx(results['test_accuracy'])
  last_line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert last_line['test_accuracy'] == results['test_accuracy']


@pytest.mark.real_data
def test_rerunning_a_finished_run_changes_nothing(trained, data_dir):
  workdir, _ = trained
  before = open(os.path.join(workdir, 'results.json')).read()
  proc = run_main('mnist_lenet5.py', workdir, f'--config.data_dir={data_dir}',
                  '--config.epochs=2', *SMALL)
  assert 'nothing to do' in proc.stdout
  assert open(os.path.join(workdir, 'results.json')).read() == before


@pytest.mark.slow
@pytest.mark.real_data
def test_quantize_mode_puts_every_weight_on_its_targets(trained, data_dir, mnist_test, tmp_path):
  workdir, _ = trained
  out = str(tmp_path / 'quant')
  run_main('mnist_lenet5_quant.py', out, f'--config.data_dir={data_dir}',
           f'--config.init_from={workdir}', '--config.quant.k=2',
           '--config.quant.schedule=(0.5, 1.0)', *SMALL)
  results = json.load(open(os.path.join(out, 'results.json')))
  assert results['method'] == 'optimal' and results['bits_per_weight'] <= 3
  assert results['export_path'] == 'model.qpq'  # relative to the run
  results['export_path'] = os.path.join(out, results['export_path'])
  assert os.path.getsize(results['export_path']) == results['export_bytes']
  assert results['export_bytes'] < results['fp32_bytes'] / 8
  assert {ln['name'] for ln in results['layers']} == {'conv1', 'conv2', 'fc1', 'fc2'}
  model, variables = qprune.load_quantized(results['export_path'])
  targets = read_targets(results['export_path'])
  for name, exponents in targets.items():
    assert len(exponents) <= 2
    assert bool(jnp.all(in_target_set(variables['params'][name]['kernel'], exponents)))
  assert _accuracy(model, variables, *mnist_test) == pytest.approx(results['test_accuracy'])
  # The run's saved model is the same dequantized network.
  _, saved = qprune.load_model(out)
  for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.real_data
def test_zero_free_quantize_mode_uses_every_code(trained, data_dir, mnist_test, tmp_path):
  """quant.zero_code=False at k=2: four values per layer, {±2^a, ±2^b}, in 2 bits a weight."""
  workdir, _ = trained
  out = str(tmp_path / 'quant')
  run_main('mnist_lenet5_quant.py', out, f'--config.data_dir={data_dir}',
           f'--config.init_from={workdir}', '--config.quant.bits=2',
           '--config.quant.zero_code=False', '--config.quant.schedule=(0.5, 1.0)', *SMALL)
  results = json.load(open(os.path.join(out, 'results.json')))
  results['export_path'] = os.path.join(out, results['export_path'])
  assert results['bits_per_weight'] == 2  # quant.bits=2 zero-free: k=2
  assert all(ln['distinct_values'] == 4 and ln['bits'] == 2 for ln in results['layers'])
  model, variables = qprune.load_quantized(results['export_path'])
  for name, exponents in read_targets(results['export_path']).items():
    w = variables['params'][name]['kernel']
    assert bool(jnp.all(w != 0)) and bool(jnp.all(in_target_set(w, exponents, zero=False)))
  assert _accuracy(model, variables, *mnist_test) == pytest.approx(results['test_accuracy'])


BAD_INPUTS = [
    (['--config.bogus=1'], "unknown config field 'bogus'"),
    (['--config.mode=compress'], "mode='compress': must be one of"),
    (['--config.epochs=-1'], 'epochs=-1: must be an integer >= 0'),
    (['--config.epochs=abc'], "--config.epochs=abc"),
    (['--config.model=resnet21'], "model='resnet21'"),
    (['--config.dataset=imagenet'], "dataset='imagenet'"),
    (['--config.batch_size=0'], 'batch_size=0'),
    (['--config.mode=quantize', '--config.quant.k=0', '--config.init_from=x'], 'quant.k=0'),
    (['--config.mode=quantize', '--config.quant.bits=1', '--config.quant.method=inq',
      '--config.init_from=x'], 'quant.bits=1'),
    (['--config.mode=quantize'], 'needs the workdir of a trained run'),
    (['--config.mode=quantize', '--config.init_from=/nonexistent/run'], 'does not exist'),
    (['--config.data_dir=/nonexistent/data'], '/nonexistent/data/mnist.tar.gz'),
]


@pytest.mark.real_data
@pytest.mark.parametrize('overrides,message', BAD_INPUTS)
def test_bad_input_is_one_clear_error(overrides, message, tmp_path, data_dir):
  base = [] if any('data_dir' in o for o in overrides) else [f'--config.data_dir={data_dir}']
  proc = run_main('mnist_lenet5.py', str(tmp_path / 'w'), *base, *SMALL, *overrides, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'w' / 'results.json')


@pytest.mark.real_data
def test_workdir_of_another_config_is_refused_and_left_untouched(trained, data_dir):
  workdir, _ = trained
  before = open(os.path.join(workdir, 'results.json')).read()
  proc = run_main('mnist_lenet5.py', workdir, f'--config.data_dir={data_dir}',
                  '--config.epochs=3', *SMALL, check=False)
  assert proc.returncode == 2 and 'different config (differs in: epochs)' in proc.stderr
  assert open(os.path.join(workdir, 'results.json')).read() == before


@pytest.mark.real_data
def test_init_from_another_model_is_refused(trained, data_dir, tmp_path):
  workdir, _ = trained
  proc = run_main('cifar10_resnet20.py', str(tmp_path / 'w'), f'--config.data_dir={data_dir}',
                  f'--config.init_from={workdir}', *SMALL, check=False)
  assert proc.returncode == 2 and 'holds a lenet5 trained on mnist' in proc.stderr


TINY_PRUNE = ['--config.train_subset=1400', '--config.eval_subset=500', '--config.batch_size=64',
              '--config.progress=False', '--config.epochs=3', '--config.prune.eb_window=2',
              '--config.prune.holdout=300', '--config.prune.finetune_epochs=1']


@pytest.mark.slow
@pytest.mark.real_data
def test_prune_mode_shrinks_the_model(data_dir, mnist_test, tmp_path):
  out = str(tmp_path / 'prune')
  run_main('mnist_lenet5_prune.py', out, f'--config.data_dir={data_dir}', *TINY_PRUNE)
  r = json.load(open(os.path.join(out, 'results.json')))
  assert r['params'] <= 0.4 * r['params_before'] and r['macs'] < r['macs_before']
  assert 1 <= r['pretrain_epochs'] <= 3 and len(r['mask_distance']) == r['pretrain_epochs']
  # The config does what it says: L1 at 50 % of every layer, no search.
  assert (r['criterion'], r['prune_ratio'], r['selection']) == ('l1', 0.5, 'uniform')
  assert len(r['search']) == 1 and r['search'][0]['params'] == r['params']
  assert 'No search: the configured candidate' in open(os.path.join(out, 'report.md')).read()
  model, variables = qprune.load_model(out)
  assert qprune.count_params(variables['params']) == r['params']
  assert _accuracy(model, variables, *mnist_test) == pytest.approx(r['test_accuracy'])
  assert r['test_accuracy'] > 0.8


@pytest.mark.slow
@pytest.mark.real_data
def test_pipeline_end_to_end(data_dir, mnist_test, tmp_path):
  out = str(tmp_path / 'pipe')
  run_main('mnist_lenet5_pipeline.py', out, f'--config.data_dir={data_dir}', *TINY_PRUNE,
           '--config.quant.schedule=(0.5, 1.0)')
  r = json.load(open(os.path.join(out, 'results.json')))
  assert set(r['stages']) == {'prune', 'quantize'}
  assert r['export_path'] == os.path.join('quantize', 'model.qpq')
  r['export_path'] = os.path.join(out, r['export_path'])
  report = open(os.path.join(out, 'report.md')).read()
  assert 'The search scored 8 candidates' in report and 'budget: params <= ' in report
  assert r['compression_ratio'] == pytest.approx(r['fp32_bytes_original'] / r['export_bytes'])
  assert r['compression_ratio'] > 20  # pruned to <= 40% of params, then 3 bits per weight
  model, variables = qprune.load_quantized(r['export_path'])
  assert _accuracy(model, variables, *mnist_test) == pytest.approx(r['test_accuracy'])
  assert os.path.exists(os.path.join(out, 'report.md'))


@pytest.mark.real_data
def test_init_from_a_corrupt_model_is_refused(trained, data_dir, tmp_path):
  workdir, _ = trained
  broken = tmp_path / 'broken'
  broken.mkdir()
  (broken / 'model.json').write_text(open(os.path.join(workdir, 'model.json')).read())
  (broken / 'model').mkdir()
  (broken / 'model' / 'garbage').write_bytes(b'\0' * 64)
  proc = run_main('mnist_lenet5_quant.py', str(tmp_path / 'q'), f'--config.data_dir={data_dir}',
                  f'--config.init_from={broken}', *SMALL, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'cannot read saved variables' in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_persistent_compilation_cache(data_dir, tmp_path):
  """--config.compilation_cache_dir: the first run stores its compiled train step there, a
  second run of the same shapes loads it; results are the same and the field is not part of
  the run's identity (config.json)."""
  cache = tmp_path / 'xla_cache'
  runs = [run_main('mnist_lenet5.py', str(tmp_path / f'run{i}'), f'--config.data_dir={data_dir}',
                   '--config.epochs=1', '--config.learning_rate=0.0432',
                   f'--config.compilation_cache_dir={cache}', *SMALL) for i in range(2)]
  assert runs and len(os.listdir(cache)) >= 1
  results = [json.loads(p.stdout.strip().splitlines()[-1]) for p in runs]
  assert results[0]['test_accuracy'] == results[1]['test_accuracy']
  config = json.load(open(tmp_path / 'run0' / 'config.json'))
  assert 'compilation_cache_dir' not in config


@pytest.mark.slow
@pytest.mark.real_data
def test_decisions_replay_a_recorded_pretraining(data_dir, tmp_path):
  """prune.decide_from takes the decision from another run's snapshots, without pretraining:
  the same masks and accuracy as pretraining anew to that epoch, its distance to the recorded
  final masks, and the compute it stands for."""
  # (no Early-Bird window: these stop rules do not use it, and a set one is refused)
  single = [f'--config.data_dir={data_dir}',
            *[a for a in TINY_PRUNE if not a.startswith('--config.prune.eb_window')],
            "--config.prune.search_criteria=''", '--config.prune.max_params=']
  full = str(tmp_path / 'full')
  run_main('mnist_lenet5_prune.py', full, *single, '--config.prune.stop_rule=full',
           '--config.prune.snapshots=True')
  assert sorted(os.listdir(os.path.join(full, 'pretrain', 'epochs'))) == ['1', '2', '3']
  replay = str(tmp_path / 'replay')
  run_main('mnist_lenet5_prune.py', replay, *single, '--config.prune.stop_rule=fixed',
           '--config.prune.pretrain_epochs=1', f'--config.prune.decide_from={full}')
  anew = str(tmp_path / 'anew')
  run_main('mnist_lenet5_prune.py', anew, *single, '--config.prune.stop_rule=fixed',
           '--config.prune.pretrain_epochs=1')
  f, r, a = (json.load(open(os.path.join(d, 'results.json'))) for d in (full, replay, anew))
  assert not os.path.exists(os.path.join(replay, 'pretrain'))  # nothing pretrained
  assert r['pretrain_epochs'] == 1 and r['decided_from'] == full
  assert r['prune_layers'] == a['prune_layers'] and r['test_accuracy'] == a['test_accuracy']
  assert r['final_mask_distance'] == pytest.approx(f['mask_distance_to_final'][0])
  assert f['final_mask_distance'] == 0.0
  images = 1400 - 300  # train_subset - holdout
  assert r['train_macs'] == images * (f['macs_before'] + f['finetune_epochs'] * f['macs'])
  # The control: the same epoch-1 masks cut the weights after all 3 pretraining epochs.
  control = str(tmp_path / 'control')
  run_main('mnist_lenet5_prune.py', control, *single, '--config.prune.stop_rule=fixed',
           '--config.prune.pretrain_epochs=1', f'--config.prune.decide_from={full}',
           '--config.prune.shrink_weights=final')
  c = json.load(open(os.path.join(control, 'results.json')))
  masks = [json.load(open(os.path.join(d, 'search.json')))['masks'] for d in (replay, control)]
  assert masks[0] == masks[1] and c['prune_layers'] == r['prune_layers']
  assert c['pretrain_epochs'] == 1 and c['shrunk_epoch'] == 3 and r['shrunk_epoch'] == 1
  assert c['pretrained_test_accuracy'] == f['pretrained_test_accuracy']
  assert c['train_macs'] == images * (3 * f['macs_before'] + f['finetune_epochs'] * f['macs'])
  assert c['pruned_test_accuracy'] != r['pruned_test_accuracy']  # other weights were cut
  # A second seed of the same decision: the recorded pretraining and masks, its own fine-tuning.
  reseeded = str(tmp_path / 'reseeded')
  run_main('mnist_lenet5_prune.py', reseeded, *single, '--config.prune.stop_rule=fixed',
           '--config.prune.pretrain_epochs=1', f'--config.prune.decide_from={full}',
           '--config.seed=1')
  s = json.load(open(os.path.join(reseeded, 'results.json')))
  assert s['prune_layers'] == r['prune_layers'] and s['pretrain_seed'] == r['pretrain_seed'] == 0
  assert s['pruned_test_accuracy'] == r['pruned_test_accuracy']
  assert s['finetune_history'][0]['train_loss'] != r['finetune_history'][0]['train_loss']
  # The first 2 epochs pretrained again (stopped by the fixed rule, nothing fine-tuned) are the
  # recorded ones (what `check_replay` checks), and a decision from them is the one from `full`,
  # without a distance to final masks (this pretraining stopped before its end).
  again = str(tmp_path / 'again')
  run_main('mnist_lenet5_prune.py', again, *single, '--config.prune.stop_rule=fixed',
           '--config.prune.pretrain_epochs=2', '--config.prune.snapshots=True',
           '--config.prune.finetune_epochs=0')
  checked = subprocess.run([sys.executable, '-m', 'reproduce.results', 'check_replay', again,
                            full], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
  assert checked.returncode == 0, checked.stderr
  from_again = str(tmp_path / 'from_again')
  run_main('mnist_lenet5_prune.py', from_again, *single, '--config.prune.stop_rule=fixed',
           '--config.prune.pretrain_epochs=1', f'--config.prune.decide_from={again}')
  g = json.load(open(os.path.join(from_again, 'results.json')))
  assert g['prune_layers'] == r['prune_layers'] and g['test_accuracy'] == r['test_accuracy']
  untimed = [[{k: v for k, v in h.items() if k != 'epoch_time_s'} for h in run['pretrain_history']]
             for run in (g, r)]
  assert untimed[0] == untimed[1] and g['final_mask_distance'] is None
  proc = run_main('mnist_lenet5_prune.py', str(tmp_path / 'bad'), *single,
                  '--config.prune.ratio=0.3', f'--config.prune.decide_from={full}', check=False)
  assert proc.returncode == 2 and 'differs in: prune.ratio' in proc.stderr
  # Early-Bird's protocol: the epoch-1 decision trained to the full decision's compute.
  budgeted = str(tmp_path / 'budgeted')
  unset = [a for a in single if not a.startswith('--config.prune.finetune_epochs')]
  epoch1 = [*unset, '--config.prune.stop_rule=fixed', '--config.prune.pretrain_epochs=1',
            f'--config.prune.decide_from={full}', f'--config.prune.budget_of={full}']
  run_main('mnist_lenet5_prune.py', budgeted, *epoch1, '--config.prune.train_budget=1.0')
  b = json.load(open(os.path.join(budgeted, 'results.json')))
  epoch_macs = images * b['macs']
  assert b['finetune_epochs'] == (f['train_macs'] - images * f['macs_before']) // epoch_macs > 2
  assert f['train_macs'] - epoch_macs < b['train_macs'] <= f['train_macs']
  proc = run_main('mnist_lenet5_prune.py', str(tmp_path / 'small'), *epoch1,
                  '--config.prune.train_budget=0.1', check=False)
  assert proc.returncode == 2 and 'leaves no fine-tuning epoch' in proc.stderr
  proc = run_main('mnist_lenet5_prune.py', str(tmp_path / 'nobudget'), *unset,
                  '--config.prune.train_budget=1.0', f'--config.prune.budget_of={tmp_path}',
                  check=False)
  assert proc.returncode == 2 and 'is not a finished prune run' in proc.stderr


@pytest.mark.slow
@pytest.mark.real_data
def test_prune_from_a_trained_model_runs_no_pretraining(trained, data_dir, tmp_path):
  """init_from holds a trained model: its masks are decided on it, without a pretraining epoch
  (issue 37); the Early-Bird window then does not apply and is refused when set."""
  workdir, _ = trained
  out = str(tmp_path / 'prune')
  args = [f'--config.data_dir={data_dir}', f'--config.init_from={workdir}', *SMALL,
          '--config.prune.holdout=300', '--config.prune.finetune_epochs=1']
  proc = run_main('mnist_lenet5_prune.py', out, *args)
  assert 'decided without pretraining' in proc.stdout
  r = json.load(open(os.path.join(out, 'results.json')))
  assert r['pretrain_epochs'] == 0 and r['epochs_run'] == 1
  assert not os.path.exists(os.path.join(out, 'pretrain'))
  trained_accuracy = json.load(open(os.path.join(workdir, 'results.json')))['test_accuracy']
  assert r['pretrained_test_accuracy'] == pytest.approx(trained_accuracy, abs=0.02)
  refused = run_main('mnist_lenet5_prune.py', str(tmp_path / 'x'), *args,
                     '--config.prune.eb_window=2', check=False)
  assert refused.returncode == 2 and 'prune.eb_window=2: does not apply with init_from' in (
      refused.stderr)


def test_report_says_what_the_search_chose_among_what_and_why():
  """report.md's search paragraph for the committed pipeline run: the grid, the holdout, the
  budget, the choice and the more accurate candidate the budget excluded (issue 37)."""
  from qprune import records  # pylint: disable=g-import-not-at-top
  from qprune.report import markdown  # pylint: disable=g-import-not-at-top
  run = os.path.join(REPO_ROOT, 'results', 'mnist_lenet5', 'pipeline_optimal_k3')
  record = records.from_json(json.load(open(os.path.join(run, 'results.json'))))
  config = json.load(open(os.path.join(run, 'config.json')))
  (text, _) = markdown.search_explanation(record.stages['prune'], config)
  assert text.startswith('The search scored 8 candidates (criteria {attention, l1} x ratios '
                         '{0.6, 0.7} x selections {global, uniform}) on 1000 held-out')
  assert 'budget: params <= 20.00% of the unpruned model (86,230), met by 6 of them' in text
  assert 'Chosen: attention/global/ratio=0.7' in text and 'the most accurate within' in text
  assert 'l1/global/ratio=0.6 (97.40%), is over the budget (params 95,618 > 86,230)' in text
  single = dict(record.stages['prune'].to_json(), search=[record.stages['prune'].search[0]],
                search_best=0)
  (text, _) = markdown.search_explanation(records.PruneResults.from_json(single), config)
  assert text.startswith('No search: the configured candidate, l1/uniform/ratio=0.6')


def test_report_of_one_epoch_shows_no_change_where_there_is_none(tmp_path):
  """At one epoch there is no loss change to show: '–', not 'train loss 0.1374 → 0.1374'."""
  from qprune import records  # pylint: disable=g-import-not-at-top
  from qprune.report import markdown  # pylint: disable=g-import-not-at-top
  one = records.TrainResults(mode='train', model='lenet5', dataset='mnist', test_accuracy=0.98,
                             history=[{'epoch': 1, 'train_loss': 0.1374, 'test_accuracy': 0.98}])
  text = open(markdown.write_report(str(tmp_path), one)).read()
  assert 'train loss 0.1374 (one epoch: change –)' in text and '0.1374 → 0.1374' not in text
