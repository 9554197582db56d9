"""mode=pipeline: prune (pretrain until the decision is stable, search, shrink, fine-tune), then
quantize the pruned model (clustered power-of-two targets, INQ schedule), export and report.

Each stage runs in its own folder (`prune/`, `quantize/`) and writes its own results.json when
done; a rerun skips finished stages and resumes the unfinished one from its checkpoints.
"""
import os

from qprune import distributed, files, quant, records
from qprune.modes import common
from qprune.modes.prune import prune_model
from qprune.modes.quantize import quantize_model

# What the pipeline reads from each finished stage's results.json (a damaged one is named).
STAGE_KEYS = {'prune': ('test_accuracy', 'params', 'macs', 'params_before', 'macs_before',
                        'epochs_run'),
              'quantize': ('test_accuracy', 'params', 'macs', 'export_path', 'export_bytes',
                           'bits_per_weight', 'epochs_run')}


def run_stage(name, stage_fn, config, workdir, mesh, data, spec, variables) -> records.Results:
  stage_dir = os.path.join(workdir, name)
  results_path = os.path.join(stage_dir, common.RESULTS_JSON)
  done = files.read_json(results_path, required=STAGE_KEYS[name])
  if done is not None:
    print(f'stage {name}: finished earlier, skipped', flush=True)
    return records.RECORDS[name].from_json(done)  # older stage files carry no `mode`
  print(f'stage {name}: running in {stage_dir}', flush=True)
  result = common.stamp(stage_fn(config, stage_dir, mesh, data, spec, variables), config, name)
  if distributed.is_primary():  # one writer on a multi-process job's shared workdir
    files.write_json_atomic(results_path, result.to_json())
  return result


def run(config, workdir: str, mesh) -> records.PipelineResults:
  spec, variables = common.initial_model(config)  # before the data: a bad init_from fails fast
  data = common.load_data(config, mesh)
  fp32_bytes = quant.float32_nbytes(variables)
  pruned = run_stage('prune', prune_model, config, workdir, mesh, data, spec, variables)
  assert isinstance(pruned, records.PruneResults)
  spec, variables = common.load_saved_model(os.path.join(workdir, 'prune'))
  quantized = run_stage('quantize', quantize_model, config, workdir, mesh, data, spec, variables)
  assert isinstance(quantized, records.QuantizeResults)
  spec, variables = common.load_saved_model(os.path.join(workdir, 'quantize'))
  common.save_model(workdir, spec, variables)
  # Set by a finished stage (STAGE_KEYS: its results.json has them).
  assert quantized.export_path is not None and quantized.export_bytes is not None
  assert pruned.epochs_run is not None and quantized.epochs_run is not None
  return records.PipelineResults(
      test_accuracy=quantized.test_accuracy,
      pretrained_test_accuracy=pruned.pretrained_test_accuracy,
      pruned_test_accuracy=pruned.pruned_test_accuracy,
      finetuned_test_accuracy=pruned.test_accuracy,
      export_path=os.path.join('quantize', quantized.export_path),  # relative to the run
      export_bytes=quantized.export_bytes,
      fp32_bytes_original=fp32_bytes, compression_ratio=fp32_bytes / quantized.export_bytes,
      bits_per_weight=quantized.bits_per_weight,
      params_before=pruned.params_before, macs_before=pruned.macs_before,
      params=quantized.params, macs=quantized.macs, pretrain_epochs=pruned.pretrain_epochs,
      epochs_run=pruned.epochs_run + quantized.epochs_run,
      stages={'prune': pruned, 'quantize': quantized})
