"""mode=quantize: power-of-two weights with per-layer target sets, applied INQ-style.

1. Target sets are fixed from the pretrained (init_from) weights: INQ's rule, k-means on log2|w|
   or the exactly error-optimal sets, with quant.bits bits a weight (every method), a fixed k, an
   L1-error tolerance, or a bit budget.
2. For each fraction of quant.schedule the largest-|w| weights are snapped to their targets and
   frozen (optax-level: exactly zero update); the rest is retrained for quant.retrain_epochs with
   the common training loop, each step in its own resumable folder `inq_step<i>/`.
   After the last snap, quant.final_epochs train only what stays float (BN, biases), folder
   `inq_final/`.
   With quant.distill_weight > 0 every retraining epoch also fits the soft outputs of the model
   quantization started from (the teacher; `qprune.train.distill`).
3. The result is exported bit-packed (`qprune.load_quantized` reads it) and also saved as the
   run's model (dequantized float weights) for `qprune.load_model`.
"""
import os

import jax

from qprune import configs, distributed, quant
from qprune.modes import common
from qprune.records import InqStep, QuantizeResults
from qprune.train import distill, loop, steps


def choose_targets(qconfig, params) -> quant.Targets:
  """Target sets of every quantizable layer not in quant.exclude (those stay float32)."""
  layers = quant.quantizable_layers(params)
  unknown = sorted(set(qconfig.exclude) - set(layers))
  if unknown:
    raise common.RunError(f'quant.exclude names {", ".join(unknown)}, which the model does not '
                          f'have; its quantizable layers are {", ".join(layers)}')
  layers = {name: w for name, w in layers.items() if name not in qconfig.exclude}
  if not layers:
    raise common.RunError(f'quant.exclude names every quantizable layer '
                          f'({", ".join(sorted(qconfig.exclude))}): nothing would be quantized; '
                          f'keep at least one out of it')
  # quant.bits is the codes' width for every method (configs.effective_k for kmeans/optimal).
  k = configs.effective_k(qconfig)
  return quant.choose_targets(layers, qconfig.method,
                              bits=qconfig.bits or configs.INQ_DEFAULT_BITS, k=k,
                              k_max=max(qconfig.k_max, k), tolerance=qconfig.tolerance,
                              bits_budget=qconfig.bits_budget, objective=qconfig.objective,
                              zero=qconfig.zero_code)


def float_weights(params, exclude) -> int:
  """Number of weights in the quantizable layers that quant.exclude keeps in float32."""
  return sum(int(w.size) for name, w in quant.quantizable_layers(params).items()
             if name in exclude)


def quantize_model(config, workdir, mesh, data, spec, variables) -> QuantizeResults:
  """The INQ stage on `variables`; writes the export and the model in `workdir`."""
  qconfig = config.quant
  model = common.build(spec, config)
  fp = loop.evaluate(model, variables, data.test, config.eval_batch_size, mesh)
  targets = choose_targets(qconfig, variables['params'])
  zero = qconfig.zero_code
  fp_rows = quant.layer_report(variables['params'], targets, zero=zero)
  print(quant.format_table(fp_rows), flush=True)

  options = common.train_options(config, epochs=qconfig.retrain_epochs,
                                 learning_rate=qconfig.learning_rate)
  batch_stats = variables['batch_stats']
  steps_done = []
  hooks, teacher = steps.StepHooks(), {}
  if qconfig.distill_weight:
    hooks = distill.Distillation(model, qconfig.distill_weight,
                                 qconfig.distill_temperature).hooks()
    teacher = {distill.TEACHER: {'params': variables['params'],
                                 'batch_stats': variables['batch_stats']}}

  def retrain(params, freeze_mask):
    nonlocal batch_stats
    step, fraction = len(steps_done) + 1, qconfig.schedule[len(steps_done)]
    result = loop.fit(model, {'params': params, 'batch_stats': batch_stats}, data, options,
                      os.path.join(workdir, f'inq_step{step}'), hooks=hooks,
                      aux={'freeze_mask': freeze_mask, **teacher}, mesh=mesh,
                      label=f'inq {step}/{len(qconfig.schedule)} ({100 * fraction:g}% frozen)')
    batch_stats = result.state.batch_stats
    steps_done.append(InqStep(step=step, frozen_fraction=fraction,
                              test_accuracy=result.test_accuracy, epochs=result.epochs_run,
                              history=result.history))
    return result.state.params

  params, final_mask = quant.run_inq(variables['params'], targets, retrain,
                                     tuple(qconfig.schedule), zero=zero)
  final_epochs, final_history = 0, []
  if qconfig.final_epochs:
    # Every quantized weight is frozen now; BN and biases adapt to the snapped weights (and BN
    # statistics are re-estimated on the way).
    final = loop.fit(model, {'params': params, 'batch_stats': batch_stats}, data,
                     common.train_options(config, epochs=qconfig.final_epochs,
                                          learning_rate=qconfig.learning_rate),
                     os.path.join(workdir, 'inq_final'), hooks=hooks,
                     aux={'freeze_mask': final_mask, **teacher}, mesh=mesh,
                     label='inq final (BN, biases)')
    params, batch_stats = final.state.params, final.state.batch_stats
    final_epochs, final_history = final.epochs_run, final.history
  variables = {'params': jax.device_get(params), 'batch_stats': jax.device_get(batch_stats)}
  test = loop.evaluate(model, variables, data.test, config.eval_batch_size, mesh)

  export_path = os.path.join(workdir, qconfig.export_name)
  export_bytes = None
  if distributed.is_primary():  # one writer on a multi-process job's shared workdir
    export_bytes = quant.save_quantized(export_path, variables, targets, spec,
                                        entropy_coding=qconfig.entropy_coding, zero=zero)
  export_bytes = distributed.share(export_bytes, 'export_bytes')
  common.save_model(workdir, spec, variables)
  return QuantizeResults(
      test_accuracy=test['accuracy'], fp_test_accuracy=fp['accuracy'], method=qconfig.method,
      bits_per_weight=quant.average_bits(fp_rows, float_weights=float_weights(variables['params'],
                                                                              qconfig.exclude)),
      export_path=qconfig.export_name,  # relative to the run: a copied run exports its own
      export_bytes=export_bytes, fp32_bytes=quant.float32_nbytes(variables),
      epochs_run=sum(s.epochs for s in steps_done) + final_epochs, final_epochs=final_epochs,
      inq_steps=steps_done, final_history=final_history, float_layers=list(qconfig.exclude),
      layers=fp_rows, **common.model_counts(spec, variables, config))


def run(config, workdir: str, mesh) -> QuantizeResults:
  spec, variables = common.initial_model(config)  # before the data: a bad init_from fails fast
  data = common.load_data(config, mesh)
  return quantize_model(config, workdir, mesh, data, spec, variables)
