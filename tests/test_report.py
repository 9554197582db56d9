"""report.md + plots, sensitivity scans (one compile), sweep plots and the results collector."""
import csv
import json
import os
import types

import jax
import jax.numpy as jnp
import pytest
from conftest import count_compiles

from qprune import quant, records, report
from qprune.models import create_model, init_variables
from qprune.report import collect as collect_lib

SHAPE = (28, 28, 1)


@pytest.fixture(scope='module')
def lenet():
  model = create_model('lenet5', 10, width=0.25)
  variables = init_variables(model, jax.random.PRNGKey(0), SHAPE)
  images = jax.random.randint(jax.random.PRNGKey(1), (12, *SHAPE), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.PRNGKey(2), (12,), 0, 10)
  return model, variables, types.SimpleNamespace(images=images, labels=labels)


def _synthetic_results(variables):
  """(a quantize run's results.json, a prune run's, the target sets), as the modes write them."""
  layers = quant.quantizable_layers(variables['params'])
  targets = quant.inq_targets(layers, bits=4)
  rows = quant.layer_report(variables['params'], targets)
  history = [{'epoch': e, 'step': 10 * e, 'train_loss': 1.0 / e, 'train_accuracy': 0.5 + e / 10,
              'test_accuracy': 0.6 + e / 20, 'test_loss': 0.9 / e, 'epoch_time_s': 1.5}
             for e in range(1, 4)]
  quantized = records.QuantizeResults(
      mode='quantize', model='lenet5', dataset='mnist', test_accuracy=0.71,
      fp_test_accuracy=0.75, params=1234, macs=56789, epochs_run=3, wall_time_s=12.5, devices=1,
      method='kmeans', bits_per_weight=quant.average_bits(rows), export_bytes=500,
      fp32_bytes=5000, export_path='/tmp/x/model.qpq', layers=rows,
      inq_steps=[records.InqStep(step=1, frozen_fraction=0.5, test_accuracy=0.7, epochs=3,
                                 history=history)]).to_json()
  pruned = records.PruneResults(
      mode='prune', model='lenet5', dataset='mnist', test_accuracy=0.7,
      pretrained_test_accuracy=0.75, pruned_test_accuracy=0.5, params=1234, macs=56789,
      params_before=2000, macs_before=90000, pretrain_epochs=3, stop_rule='early_bird',
      stop_rule_fired=True, eb_window=2, eb_threshold=0.1, mask_distance=[None, 0.3, 0.1],
      mask_window_max=[None, 0.3, 0.1], mask_distance_to_final=[0.4, 0.1, 0.0],
      criterion='l1', prune_ratio=0.5, selection='uniform',
      search=[{'description': 'l1/uniform/ratio=0.5', 'criterion': 'l1', 'ratio': 0.5,
               'selection': 'uniform', 'params': 1234, 'macs': 56789, 'accuracy': 0.7,
               'loss': 0.8},
              {'description': 'l1/uniform/ratio=0.25', 'criterion': 'l1', 'ratio': 0.25,
               'selection': 'uniform', 'params': 1500, 'macs': 70000, 'accuracy': 0.72,
               'loss': 0.7}],
      search_best=0,
      prune_layers=[{'name': 'conv1', 'kept': 3, 'total': 5},
                    {'name': 'conv2', 'kept': 6, 'total': 12}],
      layer_costs=[{'name': 'conv1', 'params_before': 130, 'params': 78, 'macs_before': 10000,
                    'macs': 6000}],
      pretrain_history=history, finetune_history=history[:1]).to_json()
  return quantized, pruned, targets


def _check_pngs(folder):
  for name in os.listdir(folder):
    assert open(os.path.join(folder, name), 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_write_report_tables_and_plots(tmp_path, lenet):
  _, variables, _ = lenet
  quantized, pruned, targets = _synthetic_results(variables)
  path = report.write_report(str(tmp_path / 'q'), quantized, variables=variables,
                             targets=targets)
  assert path == str(tmp_path / 'q' / 'report.md')
  text = open(path).read()
  for needle in ('## Quantization', 'conv1', 'fc2', 'exponents e', 'distinct values used',
                 'bits per weight: 32.00 → ', 'compression (float32 / exported bytes) | 10.0x',
                 'test accuracy, quantized | 71.00%', '## Training curves',
                 '**INQ step 1 (50% frozen)**: 3 epochs', '| 1 | 50.00% | 3 | 70.00% |'):
    assert needle in text, needle
  plots = sorted(os.listdir(tmp_path / 'q' / 'plots'))
  for name in quant.quantizable_layers(variables['params']):
    assert f'hist_{name}.png' in plots
    assert f'(plots/hist_{name}.png)' in text
  assert 'curves.png' in plots
  _check_pngs(tmp_path / 'q' / 'plots')

  text = open(report.write_report(str(tmp_path / 'p'), pruned)).read()
  for needle in ('## Pruning', 'Channels kept per group', '| conv2 | 6 | 12 | 50.00% |',
                 'Candidate search', 'Mask distance', 'Params and MACs per layer',
                 '| conv1 | 130 | 78 | 10,000 | 6,000 |', '| ✓ | l1/uniform/ratio=0.5',
                 'params: 2,000 → 1,234  (-38.3%)', 'Early-Bird rule fired',
                 'window maximum (window 2, threshold 0.1)', '**pretrain**: 3 epochs',
                 '**finetune**: 1 epoch;', 'test accuracy right after shrinking'):
    assert needle in text, needle
  assert {'mask_distance.png', 'curves.png'} <= set(os.listdir(tmp_path / 'p' / 'plots'))
  _check_pngs(tmp_path / 'p' / 'plots')
  assert not [f for f in os.listdir(tmp_path / 'p') if f.startswith('.tmp-')]  # atomic writes


def test_write_report_pipeline_stages(tmp_path, lenet):
  _, variables, _ = lenet
  quantized, pruned, _ = _synthetic_results(variables)
  for stage in (quantized, pruned):  # stages written before they carried their mode
    del stage['mode']
  pipeline = {'mode': 'pipeline', 'model': 'lenet5', 'dataset': 'mnist', 'test_accuracy': 0.7,
              'finetuned_test_accuracy': 0.72, 'compression_ratio': 31.5,
              'export_path': '/tmp/x.qpq', 'stages': {'prune': pruned, 'quantize': quantized}}
  record = records.from_json(pipeline)
  assert isinstance(record.stages['prune'], records.PruneResults)
  assert isinstance(record.stages['quantize'], records.QuantizeResults)
  text = open(report.write_report(str(tmp_path), pipeline, variables=variables)).read()
  assert '## Stage `prune`' in text and '## Stage `quantize`' in text
  assert 'compression (original float32 / exported bytes) | 31.5x' in text
  assert 'test accuracy after pruning and fine-tuning | 72.00%' in text
  assert 'test accuracy right after shrinking (BN re-estimated) | 50.00%' in text
  assert os.path.exists(tmp_path / 'plots' / 'prune_mask_distance.png')
  assert os.path.exists(tmp_path / 'plots' / 'quantize_hist_conv1.png')


def test_quant_sensitivity_rows_and_one_compile(tmp_path, lenet):
  model, variables, split = lenet
  ks = (1, 2, 3)
  # vmap_size=4: 1 baseline + 4 layers x 3 k = 13 variants -> padded to 16, 4 side by side.
  rows, compiles = count_compiles('eval_quant_variants', lambda: (
      report.quant_sensitivity(model, variables, split, ks=ks, batch_size=8, vmap_size=4),
      # same shapes, other values: reuses the compiled eval
      report.quant_sensitivity(model, jax.tree.map(lambda x: x * 1.5, variables), split,
                               ks=ks, batch_size=8, vmap_size=4))[0])
  assert compiles == 1
  names = list(quant.quantizable_layers(variables['params']))
  assert [(r['layer'], r['k']) for r in rows] == [(n, k) for n in names for k in ks]
  for r in rows:
    assert 0.0 <= r['accuracy'] <= 1.0 and len(r['exponents']) <= r['k']
    assert r['accuracy_drop'] == pytest.approx(r['baseline_accuracy'] - r['accuracy'])

  # One row checked against a direct evaluation: only that layer quantized with its k=2 set.
  row = rows[names.index('conv2') * len(ks) + 1]
  params = quant.quantize_params(variables['params'], {'conv2': tuple(row['exponents'])})
  logits = model.apply(dict(variables, params=params), split.images, train=False)
  expected = float(jnp.mean(jnp.argmax(logits, -1) == split.labels))
  assert row['accuracy'] == pytest.approx(expected)
  baseline = model.apply(variables, split.images, train=False)
  assert row['baseline_accuracy'] == pytest.approx(
      float(jnp.mean(jnp.argmax(baseline, -1) == split.labels)))

  md = report.write_sensitivity(rows, str(tmp_path), 'quant')
  assert '| conv2 | 2 |' in open(md).read()
  assert os.path.exists(tmp_path / 'plots' / 'sensitivity_quant.png')


def test_prune_sensitivity_rows_and_one_compile(tmp_path, lenet):
  model, variables, split = lenet
  ratios = (0.25, 0.5)
  rows, compiles = count_compiles('evaluate_candidates', lambda: report.prune_sensitivity(
      model, variables, split, ratios, batch_size=6, chunk=3))   # 5 candidates -> 2 chunks
  assert compiles <= 1  # 0 if another test compiled the same shapes already
  from qprune import prune  # pylint: disable=g-import-not-at-top
  groups = prune.derive_groups(variables)
  assert [(r['layer'], r['ratio']) for r in rows] == [(g.name, r) for g in groups for r in ratios]
  for r in rows:
    assert r['kept'] == max(1, round((1 - r['ratio']) * r['total']))
  # a pruned conv1 costs MACs
  assert rows[0]['macs'] < prune.model_cost(model, variables, SHAPE)['macs']
  results = {'mode': 'prune', 'prune_sensitivity': rows}
  text = open(report.write_report(str(tmp_path), results)).read()
  assert 'Pruning sensitivity' in text
  assert os.path.exists(tmp_path / 'plots' / 'sensitivity_prune.png')


def test_sweep_plots(tmp_path):
  results = [{'job': 'a', 'test_accuracy': 0.9, 'macs': 1e6},
             {'job': 'b', 'test_accuracy': 0.8, 'bits_per_weight': 3.0, 'macs': 5e5},
             {'job': 'c', 'stages': {'q': {'test_accuracy': 0.85, 'bits_per_weight': 4,
                                           'macs': 2e5}}}]
  assert [p for _, p, *_ in [(None, x[1]) for x in report.plots.sweep_points(results)]] == \
      [0.9, 0.8, 0.85]
  assert [x[2] for x in report.plots.sweep_points(results)] == [32.0, 3.0, 4.0]
  paths = report.sweep_plots(results, str(tmp_path / 'plots'))
  assert [os.path.basename(p) for p in paths] == ['accuracy_vs_bits.png', 'accuracy_vs_macs.png']
  assert all(os.path.getsize(p) > 1000 for p in paths)


def _fake_run(folder, **results):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'results.json'), 'w') as f:
    json.dump(results, f)


def test_collector_with_job_list(tmp_path):
  out = str(tmp_path)
  _fake_run(os.path.join(out, 'a_s0'), mode='train', model='lenet5', test_accuracy=0.98765,
            params=100, macs=2000, epochs_run=1, wall_time_s=3.21)
  _fake_run(os.path.join(out, 'b_lr-0.1_s0'), mode='quantize', model='lenet5',
            test_accuracy=0.9, bits_per_weight=3.0, params=100, macs=2000)
  os.makedirs(os.path.join(out, 'logs'))
  for name, rc in (('a_s0', 0), ('b_lr-0.1_s0', 0), ('c_s0', 3)):
    with open(os.path.join(out, 'logs', f'{name}.rc'), 'w') as f:
      f.write(f'{rc}\n')
  with open(os.path.join(out, 'jobs.tsv'), 'w') as f:
    f.write('# name\tconfig\tseed\toverrides\tworkdir\tlog\n')
    f.write(f'a_s0\tconfigs/a.py\t0\t\t{out}/a_s0\t{out}/logs/a_s0.log\n')
    f.write(f'b_lr-0.1_s0\tconfigs/b.py\t0\t--config.lr=0.1\t{out}/b_lr-0.1_s0\tx\n')
    f.write(f'c_s0\tconfigs/c.py\t0\t\t{out}/c_s0\tx\n')
  rows = collect_lib.write_summary(out)
  assert [r['status'] for r in rows] == ['ok', 'ok', 'failed (exit 3)']
  md = open(os.path.join(out, 'summary.md')).read()
  assert '| job | status | config | seed | overrides | mode | model | test_accuracy |' in md
  assert '| a_s0 | ok | configs/a.py | 0 |  | train | lenet5 | 0.9877 |' in md
  assert 'not ok: c_s0' in md
  with open(os.path.join(out, 'summary.csv')) as f:
    table = list(csv.DictReader(f))
  assert [t['job'] for t in table] == ['a_s0', 'b_lr-0.1_s0', 'c_s0']
  assert float(table[0]['test_accuracy']) == 0.98765
  assert table[1]['bits_per_weight'] == '3.0' and table[0]['bits_per_weight'] == ''
  assert table[1]['overrides'] == '--config.lr=0.1' and table[2]['test_accuracy'] == ''
  assert 'fp_test_accuracy' not in table[0]  # no row has it


def test_collector_without_job_list(tmp_path):
  _fake_run(str(tmp_path / 'x' / 'run1'), mode='train', test_accuracy=0.5)
  _fake_run(str(tmp_path / 'run2'), mode='pipeline', test_accuracy=0.6, compression_ratio=20.0,
            stages={'prune': {'macs': 10}, 'quantize': {'bits_per_weight': 3.5}})
  assert collect_lib.main([str(tmp_path)]) == 0
  with open(tmp_path / 'summary.csv') as f:
    table = {t['job']: t for t in csv.DictReader(f)}
  assert set(table) == {'x/run1', 'run2'}
  assert table['run2']['bits_per_weight'] == '3.5' and table['run2']['macs'] == '10'
  assert collect_lib.main([str(tmp_path / 'missing')]) == 2


def test_one_epoch_plots_read_on_a_whole_epoch_axis_with_labelled_points():
  """A 1-epoch run: the epoch axis is 0.5..1.5 with the one tick 1 (not 0.945-1.05), each point
  is drawn large and labelled with its value; a mask-distance plot with no distance yet says
  why instead of showing an empty -0.045..0.045 axis."""
  from qprune.report import plots  # pylint: disable=g-import-not-at-top
  history = [{'epoch': 1, 'train_loss': 0.75, 'train_accuracy': 0.79, 'test_accuracy': 0.92}]
  fig = plots.stage_curves_figure([('train', history)])
  acc, loss = fig.axes
  fig.canvas.draw()
  for ax in (acc, loss):
    assert ax.get_xlim() == (0.5, 1.5)
    assert [t for t in ax.get_xticks() if 0.5 <= t <= 1.5] == [1.0]
  assert {t.get_text() for t in acc.texts} == {'train 0.7900', 'test 0.9200'}
  assert loss.get_ylim()[0] == 0.0 and loss.get_ylim()[1] > 0.75
  assert all(line.get_markersize() >= 6 for line in acc.lines if len(line.get_xdata()))
  fig = plots.mask_distance_figure([None], threshold=0.1, window_max=[None])
  (ax,) = fig.axes
  assert ax.get_xlim() == (0.5, 1.5) and ax.get_ylim() == (0.0, pytest.approx(0.12))
  assert 'no distance yet' in ax.texts[0].get_text()
  # A long run keeps its plain lines: no value labels, small markers.
  long = [{'epoch': e, 'train_loss': 1 / e, 'train_accuracy': 0.9, 'test_accuracy': 0.9}
          for e in range(1, 161)]
  acc, _ = plots.stage_curves_figure([('train', long)]).axes
  assert acc.get_xlim() == (0.5, 160.5) and not acc.texts
