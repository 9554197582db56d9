"""mode=prune: structured pruning decided after few pretraining epochs.

1. Pretrain (from scratch or init_from) in `pretrain/`. After every epoch the masks at the target
   ratio are computed with prune.criterion and compared with the previous ones (normalized
   Hamming distance, Early-Bird FIFO); pretraining stops at the first stable epoch
   (stop_rule=early_bird), at prune.pretrain_epochs (fixed), or after all epochs (full). The
   masks are stored in each epoch's metrics line, so the decision replays exactly on resume.
2. Search: candidates (criteria x ratios x selections) are scored on `prune.holdout` training
   examples held out from pretraining, with BatchNorm statistics re-estimated per candidate, in
   one vmapped evaluation; the best within the params/MACs budget wins (`search.json`).
3. Shrink to a genuinely smaller model and fine-tune it in `finetune/`.
"""
import os

import jax
import numpy as np

from qprune import configs, distributed, errors, files, prune
from qprune.artifacts import load_saved_model, save_model
from qprune.data import pipeline
from qprune.models import layer_cost_rows
from qprune.modes import common
from qprune.ops import compile as compile_lib
from qprune.records import PruneResults
from qprune.train import checkpoint, evaluation, loop, steps

SEARCH_JSON = 'search.json'
SNAPSHOTS = 'epochs'  # pretrain/epochs/<E>/: the model after pretraining epoch E (prune.snapshots)
# What a run replaying another's pretraining (prune.decide_from) may set differently: when to
# decide, and everything after the decision (so may its `seed`, which then drives only what
# follows the decision: the fine-tuning's example order and augmentation, a second seed of one
# decision on one pretraining). Every other field shapes the pretraining trajectory or the masks
# recorded along it.
DECISION_FIELDS = ('stop_rule', 'pretrain_epochs', 'snapshots', 'decide_from', 'search_criteria',
                   'search_ratios', 'search_selections', 'search_method', 'max_params', 'max_macs',
                   'bn_batches', 'shrink_weights',
                   'finetune_epochs', 'finetune_learning_rate', 'train_budget', 'budget_of')
# What only the recorded masks depend on, not the trajectory: free to differ too when the stop
# rule is fixed (then the decision epoch does not depend on the masks), e.g. to score several
# criteria on one pretraining; the distance to the recorded final masks is then undefined.
MASK_FIELDS = ('criterion', 'ratio', 'selection', 'aggregate', 'round_to', 'max_ratio', 'residual',
               'dense', 'ignored_layers', 'score_batches', 'eb_window', 'eb_threshold')
GATES = 'se'  # pretrain/epochs/<E>/se/: the SE gates' variables of that epoch (prune.se_gates)
_BATCH = 100  # images per batch for scoring, BN re-estimation and candidate evaluation


def encode_masks(masks) -> dict:
  return {k: ''.join('1' if b else '0' for b in np.asarray(v, bool)) for k, v in masks.items()}


def decode_masks(encoded: dict) -> dict:
  return {k: np.asarray([c == '1' for c in v], bool) for k, v in encoded.items()}


def split_holdout(data: pipeline.Data, holdout: int):
  """(data without the last `holdout` training examples, those examples)."""
  n = data.train.size
  if holdout >= n // 2:
    raise common.RunError(f'prune.holdout={holdout} leaves too little to train on '
                          f'({n} training examples); lower it or raise train_subset')
  train = pipeline.Split(data.train.images[:n - holdout], data.train.labels[:n - holdout])
  held = pipeline.Split(data.train.images[n - holdout:], data.train.labels[n - holdout:])
  return pipeline.Data(data.info, train, data.test), held


def _batches(split: pipeline.Split, count: int):
  n = min(count * _BATCH, split.size)
  return (prune.batched(split.images[:n], min(_BATCH, n)),
          prune.batched(split.labels[:n], min(_BATCH, n)))


def stops_at(pconfig, epoch: int, record: dict) -> bool:
  """Whether the stop rule ends pretraining after `epoch`, whose record is `record`."""
  return ((pconfig.stop_rule == 'early_bird' and bool(record.get('mask_stable'))) or
          (pconfig.stop_rule == 'fixed' and epoch >= pconfig.pretrain_epochs))


def plain_variables(pconfig, variables):
  """The pruned architecture's own variables (the SE gates of prune.se_gates dropped)."""
  return prune.detach_se(variables) if pconfig.se_gates else variables


def decision_callback(pconfig, model, groups, score_data, rng, snapshot_dir=None, spec=None,
                      gated_model=None):
  """on_epoch_end for pretraining: masks, their distance, the stop rule, and (with
  `snapshot_dir`) the model after every epoch. gated_model: the SE wrapper being pretrained
  (prune.se_gates); masks are computed on the plain model with its excitation."""
  rule = prune.EarlyBirdRule(pconfig.eb_window, pconfig.eb_threshold)

  def on_epoch_end(epoch, state, history):
    variables = plain_variables(pconfig, state.variables)
    if snapshot_dir is not None:
      save_model(os.path.join(snapshot_dir, str(epoch)), spec, variables)
      if gated_model is not None:
        checkpoint.save_variables(os.path.join(snapshot_dir, str(epoch), GATES),
                                  prune.gate_variables(state.variables))
    eb = prune.EarlyBirdState()
    for record in history:
      eb, _ = prune.early_bird_step(eb, decode_masks(record['mask']), rule)
    options = criterion_options(pconfig, gated_model, state.variables, groups, score_data)
    masks = prune.make_masks(variables, groups, pconfig.criterion, pconfig.ratio,
                             pconfig.selection, model=model, batches=score_data, rng=rng,
                             criterion_kwargs=options, **selection_options(pconfig))
    eb, info = prune.early_bird_step(eb, masks, rule)
    stop = stops_at(pconfig, epoch, {'mask_stable': info['stable']})
    def finite(x):
      return None if x is None or np.isnan(x) else float(x)
    full = info['step'] >= pconfig.eb_window  # before that the rule cannot fire
    return stop, {'mask': encode_masks(masks), 'mask_distance': finite(info['distance']),
                  'mask_window_max': finite(info['window_max']) if full else None,
                  'mask_stable': info['stable']}

  return on_epoch_end


def distances_to_final(history) -> list:
  """Per pretraining epoch: Hamming distance of its masks to the last epoch's masks."""
  if not history:
    return []
  final = decode_masks(history[-1]['mask'])
  return [prune.mask_distance(decode_masks(h['mask']), final) for h in history]


def replay_pretraining(config, source: str):
  """(variables, history, recorded, same_masks, seed) for prune.decide_from=`source`: the
  snapshot (with prune.se_gates, the SE wrapper's variables) and history up to the epoch this
  config's stop rule picks on the pretraining that prune run recorded, its whole recorded
  history, whether its recorded masks are the ones this config makes, and the seed it pretrained
  with; RunError if `source` is not such a run, has not finished pretraining, or pretrained
  differently from what this config asks for."""
  pconfig = config.prune
  stored = files.read_json(os.path.join(source, common.CONFIG_JSON))
  if stored is None:
    raise common.RunError(f'prune.decide_from={source!r} holds no run ({common.CONFIG_JSON} '
                          'missing): point it to the workdir of a prune run with '
                          'prune.snapshots=True')
  theirs = configs.with_new_defaults(stored)
  ours = configs.semantic_dict(config)
  differ = sorted(k for k in set(theirs) | set(ours)
                  if k not in ('prune', 'init_from', 'seed') and theirs.get(k) != ours.get(k))
  free = DECISION_FIELDS + (MASK_FIELDS if pconfig.stop_rule == 'fixed' else ())
  differ += sorted('prune.' + k for k in set(theirs['prune']) | set(ours['prune'])
                   if k not in free and theirs['prune'].get(k) != ours['prune'].get(k))
  same_masks = all(theirs['prune'].get(k) == ours['prune'].get(k) for k in MASK_FIELDS)
  if theirs.get('init_from') != ours.get('init_from'):
    differ.append('init_from')
  if theirs.get('mode') != 'prune' or not theirs['prune'].get('snapshots'):
    raise common.RunError(f'prune.decide_from={source!r} is not a prune run with '
                          'prune.snapshots=True (no pretraining snapshots to decide from)')
  if differ:
    raise common.RunError(f'prune.decide_from={source!r} pretrained with a different config '
                          f'(differs in: {", ".join(differ)}); its recorded pretraining is not '
                          'the one this run would make')
  recorded = files.read_jsonl(os.path.join(source, 'pretrain', 'metrics.jsonl'))
  if not recorded or not (recorded[-1].get('epoch') == theirs['epochs'] or
                          recorded[-1].get('stopped_early')):
    done = len(recorded or [])
    raise common.RunError(f'prune.decide_from={source!r} has recorded {done} of its '
                          f'{theirs["epochs"]} pretraining epochs; decide from it once its '
                          'pretraining has finished')
  end = next((i + 1 for i, record in enumerate(recorded)
              if stops_at(pconfig, i + 1, record)), len(recorded))
  if pconfig.stop_rule == 'fixed' and end < pconfig.pretrain_epochs:
    raise common.RunError(f'prune.decide_from={source!r} recorded {len(recorded)} pretraining '
                          f'epochs, fewer than prune.pretrain_epochs={pconfig.pretrain_epochs}')
  return (load_snapshot(pconfig, source, end), recorded[:end], recorded, same_masks,
          theirs.get('seed', 0))


def load_snapshot(pconfig, source: str, epoch: int):
  """The variables recorded after pretraining epoch `epoch` of the prune run in `source` (with
  prune.se_gates, the SE wrapper's); RunError if that snapshot is missing."""
  snapshot = os.path.join(source, 'pretrain', SNAPSHOTS, str(epoch))
  try:
    _, variables = load_saved_model(snapshot)
  except errors.UserError as e:
    raise common.RunError(f'prune.decide_from={source!r}: no snapshot of pretraining epoch '
                          f'{epoch} ({e})') from None
  if pconfig.se_gates:
    gates = os.path.join(snapshot, GATES)
    if not os.path.isdir(gates):
      raise common.RunError(f'prune.decide_from={source!r}: the snapshot of epoch {epoch} holds '
                            'no SE gates')
    variables = prune.with_gates(variables, checkpoint.load_variables(gates))
  return variables


def budget_macs(pconfig) -> int | None:
  """prune.train_budget x the training MACs prune.budget_of recorded (None without a budget);
  RunError where budget_of is not a finished prune run."""
  if not pconfig.train_budget:
    return None
  recorded = files.read_json(os.path.join(pconfig.budget_of, common.RESULTS_JSON)) or {}
  if recorded.get('mode') not in ('prune', 'pipeline') or not recorded.get('train_macs'):
    raise common.RunError(f'prune.budget_of={pconfig.budget_of!r} is not a finished prune run '
                          f'(its {common.RESULTS_JSON} records no train_macs): point it to the '
                          'workdir or published folder of one')
  return int(pconfig.train_budget * recorded['train_macs'])


def budget_epochs(budget: int, spent: int, epoch_macs: int, pconfig, decided_at: int) -> int:
  """The whole fine-tuning epochs of `epoch_macs` each that fit in `budget` after `spent`;
  RunError where not one does."""
  epochs = (budget - spent) // epoch_macs
  if epochs < 1:
    raise common.RunError(
        f'prune.train_budget={pconfig.train_budget} of {pconfig.budget_of!r} '
        f'({budget / 1e12:.2f} TMAC) leaves no fine-tuning epoch ({epoch_macs / 1e12:.2f} TMAC '
        f'each) after {decided_at} pretraining epochs ({spent / 1e12:.2f} TMAC): raise the '
        'budget or decide earlier')
  return int(epochs)


def decides_from_init(config) -> bool:
  """Whether the masks come straight from init_from's trained model: a stop rule that watches
  pretraining (early_bird, full) has nothing to watch there; stop_rule=fixed trains its
  pretrain_epochs first."""
  return bool(config.init_from) and config.prune.stop_rule != 'fixed'


def pretrain(config, workdir, mesh, data, model, spec, variables, groups, score_data, rng,
             gated_model=None):
  """(variables, history) after pretraining; with prune.se_gates, `variables` are the SE
  wrapper's (`gated_model`), which is what is trained."""
  pconfig = config.prune
  if pconfig.stop_rule == 'fixed' and pconfig.pretrain_epochs == 0:
    return variables, []
  if decides_from_init(config):
    print('prune: init_from holds a trained model: its masks are decided without pretraining '
          '(prune.stop_rule=fixed with prune.pretrain_epochs=N trains N epochs first)',
          flush=True)
    return variables, []
  hooks = steps.StepHooks()
  if pconfig.slimming_lambda:
    hooks = steps.StepHooks(extra_loss=lambda params, aux: prune.l1_gamma_penalty(
        params, pconfig.slimming_lambda))
  result = loop.fit(gated_model or model, variables, data, common.train_options(config),
                    os.path.join(workdir, 'pretrain'), hooks=hooks, mesh=mesh,
                    on_epoch_end=decision_callback(
                        pconfig, model, groups, score_data, rng, spec=spec,
                        snapshot_dir=(os.path.join(workdir, 'pretrain', SNAPSHOTS)
                                      if pconfig.snapshots else None),
                        gated_model=gated_model),
                    label='pretrain')
  return result.state.variables, result.history


def criterion_options(pconfig, gated_model=None, gated_variables=None, groups=None,
                      score_data=None) -> dict:
  """Options every criterion gets: group aggregation (prune.aggregate) and, with
  prune.se_gates, the SE gates' mean excitation on the scoring batches."""
  options = {'aggregate': pconfig.aggregate} if pconfig.aggregate != 'none' else {}
  if gated_model is not None:
    options['excitation'] = prune.mean_excitation(gated_model, gated_variables, tuple(groups),
                                                  score_data[0])
  return options


def selection_options(pconfig) -> dict:
  """Per-layer controls of every selection (prune.round_to, prune.max_ratio)."""
  return {'round_to': int(pconfig.round_to),
          'max_ratio': float(pconfig.max_ratio) if pconfig.max_ratio else None}


def candidates(pconfig):
  return prune.candidate_grid(pconfig.search_criteria or (pconfig.criterion,),
                              pconfig.search_ratios or (pconfig.ratio,),
                              pconfig.search_selections or (pconfig.selection,))


def run_search(config, workdir, model, spec, variables, groups, score_data, bn_images, holdout,
               rng, options):
  """The chosen masks and the search table; computed once, then read from search.json."""
  path = os.path.join(workdir, SEARCH_JSON)
  saved = files.read_json(path)
  if saved is not None:
    return decode_masks(saved['masks']), saved['rows'], saved['best']
  pconfig = config.prune
  cost = prune.model_cost(model, variables, spec['input_shape'])
  # Every held-out example counts (the last batch padded, its padding masked).
  eval_images, eval_labels, eval_valid = evaluation.pad_to_batches(holdout.images,
                                                                   holdout.labels, _BATCH)
  found = prune.search(
      model, variables, groups, candidates(pconfig), spec['input_shape'], bn_images,
      eval_images, eval_labels, eval_valid=eval_valid,
      max_params=int(pconfig.max_params * cost['params']) if pconfig.max_params else None,
      max_macs=int(pconfig.max_macs * cost['macs']) if pconfig.max_macs else None,
      batches=score_data, rng=rng, criterion_kwargs=options,
      selection_kwargs=selection_options(pconfig), method=pconfig.search_method)
  if distributed.is_primary():  # one writer on a multi-process job's shared workdir
    files.write_json_atomic(path, {'best': found.best, 'rows': found.rows,
                                   'masks': encode_masks(found.best_masks)})
  return found.best_masks, found.rows, found.best


def prune_model(config, workdir, mesh, data, spec, variables) -> PruneResults:
  """The whole prune stage; writes the shrunk, fine-tuned model into `workdir`."""
  pconfig = config.prune
  data, holdout = split_holdout(data, pconfig.holdout)
  model = common.build(spec, config)
  # Groups traced from the model's data flow (identical to the zoo's name-based rules).
  example = jax.ShapeDtypeStruct((1, *spec['input_shape']), np.uint8)
  try:
    groups = prune.derive_groups(variables, model=model, example_input=example,
                                 residual=pconfig.residual, dense=pconfig.dense,
                                 ignored_layers=tuple(pconfig.ignored_layers))
  except ValueError as e:  # (the binary names unknown layers before any work: configs, preflight)
    if 'ignored_layers' not in str(e):
      raise
    raise common.RunError(f'prune.{e}') from None
  score_data = _batches(data.train, pconfig.score_batches)
  bn_images, _ = _batches(data.train, pconfig.bn_batches)
  rng = jax.random.PRNGKey(config.seed)
  before = prune.model_cost(model, variables, spec['input_shape'])
  budget = budget_macs(pconfig)  # (a bad budget_of fails before any training)

  if (pconfig.stop_rule == 'early_bird' and pconfig.eb_window > config.epochs and
      not decides_from_init(config)):
    # printed once, and kept in results.json `warnings` by the binary
    errors.warn(f'prune.eb_window={pconfig.eb_window} > epochs={config.epochs}: the Early-Bird '
                'rule can never fire, pretraining runs all epochs')
  gated_model = None
  if pconfig.se_gates:
    gated_model, variables = prune.attach_se(model, variables, groups, jax.random.fold_in(rng, 1),
                                             reduction=pconfig.se_reduction,
                                             example=np.zeros(example.shape, np.uint8))
  if pconfig.decide_from:
    variables, history, recorded, same_masks, pretrain_seed = replay_pretraining(
        config, pconfig.decide_from)
  else:
    pretrain_seed = config.seed
    variables, history = pretrain(config, workdir, mesh, data, model, spec, variables, groups,
                                  score_data, rng, gated_model=gated_model)
    recorded, same_masks = history, True
  scoring = criterion_options(pconfig, gated_model, variables, groups, score_data)
  variables = plain_variables(pconfig, variables)  # the gates go before the search and shrink
  masks, rows, best = run_search(config, workdir, model, spec, variables, groups, score_data,
                                 bn_images, holdout, rng, scoring)
  shrunk_epoch = len(history)
  pretrained = history[-1].get('test_accuracy') if history else None
  if not history and not pconfig.decide_from:  # decided on the model it started from
    pretrained = loop.evaluate(model, variables, data.test, config.eval_batch_size,
                               mesh)['accuracy']
  if pconfig.shrink_weights == 'final':  # the control: the decided masks on the trained weights
    shrunk_epoch = len(recorded)
    pretrained = recorded[-1].get('test_accuracy')
    variables = plain_variables(pconfig, load_snapshot(pconfig, pconfig.decide_from,
                                                       shrunk_epoch))
  small_model, small_variables = prune.shrink(model, variables, groups, masks)
  # Pruning shifts every downstream activation distribution: re-estimate BN statistics (as the
  # search did per candidate) so the pruned model is evaluated and fine-tuned from sane ones.
  reestimate = compile_lib.jit(prune.reestimate_bn_stats, static_argnums=(0, 1))
  small_variables = {'params': small_variables['params'],
                     'batch_stats': reestimate(small_model, (), small_variables, None, bn_images)}
  small_spec = dict(spec, channels={**spec['channels'], **prune.shrunk_widths(groups, masks)})
  costs = layer_cost_rows(model, variables, small_model, small_variables, spec['input_shape'])
  pruned = loop.evaluate(small_model, small_variables, data.test, config.eval_batch_size, mesh)
  # Training compute to the pruned model, in forward MACs x training images seen.
  images = data.train.size
  spent = shrunk_epoch * images * before['macs']
  counts = prune.model_cost(small_model, small_variables, spec['input_shape'])  # (fine-tuning
  # keeps every shape: the shrunk model's params and MACs are known before it)
  epoch_macs = images * counts['macs']
  finetune_epochs = (pconfig.finetune_epochs if budget is None else
                     budget_epochs(budget, spent, epoch_macs, pconfig, shrunk_epoch))
  options = common.train_options(config, epochs=finetune_epochs,
                                 learning_rate=pconfig.finetune_learning_rate)
  finetuned = loop.fit(common.build(small_spec, config), small_variables, data, options,
                       os.path.join(workdir, 'finetune'), mesh=mesh, label='finetune')
  variables = finetuned.state.variables
  common.save_model(workdir, small_spec, variables)
  sizes = prune.group_sizes(groups)
  fired = bool(history and history[-1].get('mask_stable')) and pconfig.stop_rule == 'early_bird'
  train_macs = spent + finetuned.epochs_run * epoch_macs
  return PruneResults(
      test_accuracy=finetuned.test_accuracy,
      pretrained_test_accuracy=pretrained,
      pruned_test_accuracy=pruned['accuracy'],
      params_before=before['params'], macs_before=before['macs'], **counts,
      params_removed=1 - counts['params'] / before['params'],
      macs_removed=1 - counts['macs'] / before['macs'],
      pretrain_epochs=len(history), stop_rule=pconfig.stop_rule, stop_rule_fired=fired,
      stopped_early=bool(history and history[-1].get('stopped_early')),
      eb_window=pconfig.eb_window, eb_threshold=pconfig.eb_threshold,
      # (replayed with other mask settings, the recorded masks are not this run's: left out)
      mask_distance=[h.get('mask_distance') for h in history] if same_masks else [],
      mask_window_max=[h.get('mask_window_max') for h in history] if same_masks else [],
      mask_distance_to_final=distances_to_final(history) if same_masks else [],
      # (to the masks after the source's whole schedule: none where its pretraining stopped
      # early, e.g. a replay of a longer run's first epochs)
      final_mask_distance=(prune.mask_distance(masks, decode_masks(recorded[-1]['mask']))
                           if same_masks and recorded and 'mask' in recorded[-1] and
                           not recorded[-1].get('stopped_early') else None),
      decided_from=pconfig.decide_from or None, pretrain_seed=pretrain_seed,
      shrunk_epoch=shrunk_epoch,
      train_macs=train_macs,
      criterion=rows[best]['criterion'], prune_ratio=rows[best]['ratio'],
      selection=rows[best]['selection'], search=rows, search_best=best,
      prune_layers=[{'name': name, 'kept': int(np.sum(masks[name])), 'total': sizes[name]}
                    for name in sorted(masks)],
      layer_costs=costs,
      finetune_epochs=finetuned.epochs_run, epochs_run=shrunk_epoch + finetuned.epochs_run,
      pretrain_history=[_curve(h) for h in history], finetune_history=finetuned.history)


def _curve(record: dict) -> dict:
  """A pretraining epoch's record without its masks (they are in pretrain/metrics.jsonl)."""
  return {k: v for k, v in record.items() if k != 'mask'}


def run(config, workdir: str, mesh) -> PruneResults:
  spec, variables = common.initial_model(config)  # before the data: a bad init_from fails fast
  data = common.load_data(config, mesh)
  return prune_model(config, workdir, mesh, data, spec, variables)
