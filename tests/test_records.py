"""Typed results records: JSON round trip, old results.json files, unknown keys, summaries."""
import glob
import json
import os
import subprocess
import sys

import pytest

from qprune import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_round_trip_keeps_every_key_and_nested_records():
  data = {'mode': 'quantize', 'model': 'lenet5', 'dataset': 'mnist', 'test_accuracy': 0.99,
          'export_bytes': 1000, 'fp32_bytes': 32000,
          'inq_steps': [{'step': 1, 'frozen_fraction': 0.5, 'epochs': 1, 'test_accuracy': 0.98,
                         'a_future_key': 3}],
          'quant_sensitivity': [{'layer': 'conv1'}]}   # a key no record declares
  record = records.from_json(data)
  assert isinstance(record, records.QuantizeResults)
  assert isinstance(record.inq_steps[0], records.InqStep)
  assert record.compression_ratio == 32.0           # derived when absent
  assert record.fp_test_accuracy is None            # written before the field existed
  out = record.to_json()
  assert out['quant_sensitivity'] == [{'layer': 'conv1'}]
  assert out['inq_steps'][0]['a_future_key'] == 3
  assert {k: out[k] for k in data} == {**data, 'inq_steps': out['inq_steps']}
  assert records.from_json(json.loads(json.dumps(out))).to_json() == out


def test_unknown_mode_reads_as_base_record_and_bad_shape_is_named():
  record = records.from_json({'mode': 'distill', 'test_accuracy': 0.5, 'teacher': 'x'})
  assert type(record) is records.Results and record.extra == {'teacher': 'x'}
  with pytest.raises(TypeError, match='expected a JSON object'):
    records.from_json([1, 2])


def test_headline_and_summary_block_are_mode_specific():
  pruned = records.PruneResults(mode='prune', model='lenet5', dataset='mnist',
                                test_accuracy=0.99, pretrained_test_accuracy=0.995,
                                pruned_test_accuracy=0.9, params_before=1000, params=200,
                                macs_before=5000, macs=1000, criterion='l1', prune_ratio=0.8,
                                selection='uniform', pretrain_epochs=1, stop_rule='early_bird',
                                stop_rule_fired=True, wall_time_s=3.0)
  head = pruned.headline()
  assert head['params_before'] == 1000 and head['criterion'] == 'l1'
  assert 'bits_per_weight' not in head
  text = '\n'.join(pruned.summary_lines())
  assert 'params: 1,000 → 200  (-80.0%)' in text
  assert 'test accuracy, pretrained → right after shrinking: 99.50% → 90.00%' in text
  assert 'l1 at ratio 0.8 (uniform) after 1 pretraining epoch, Early-Bird rule fired' in text
  quantized = records.QuantizeResults(mode='quantize', bits_per_weight=2.5, export_bytes=10_000,
                                      fp32_bytes=320_000)
  text = '\n'.join(quantized.summary_lines())
  assert 'bits per weight: 32.00 → 2.50' in text and 'compression: 32.0x' in text
  assert 'bytes: 320 kB (320,000 B) → 10 kB (10,000 B)' in text


def test_every_column_and_label_is_declared_once():
  assert len(records.COLUMNS) == len(set(records.COLUMNS))
  assert records.COLUMNS[-1] == 'wall_time_s'
  for key in ('test_accuracy', 'params', 'macs', 'bits_per_weight', 'compression_ratio',
              'export_bytes'):
    assert key in records.COLUMNS


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'results', '**',
                                                              'results.json'), recursive=True)))
def test_committed_results_read_as_their_mode(path):
  data = json.load(open(path))
  record = records.from_json(data)
  assert type(record) is records.RECORDS[data['mode']]
  assert record.to_json() == {**data, **record.to_json()}  # nothing lost, derived keys added
  if isinstance(record, records.PipelineResults):
    assert {type(s) for s in record.stages.values()} == {records.PruneResults,
                                                        records.QuantizeResults}


def test_records_import_without_jax():
  code = 'import sys, qprune.records; print("jax" in sys.modules)'
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == 'False'
