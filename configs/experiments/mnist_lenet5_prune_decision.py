"""Experiment: is a pruning decision made after few epochs as good as one after full training?

One candidate (l1, 70% of channels removed incl. fc1 units, uniform per layer), no Early-Bird
stop: run with --config.prune.stop_rule=fixed --config.prune.pretrain_epochs=E for E = 1, 2, ...
and with stop_rule=full. All runs share the pretraining trajectory (same seed and LR schedule),
so they differ only in when the masks are taken. results.json: mask_distance_to_final (from the
full run), params, macs, test_accuracy after fine-tuning.
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, '../mnist_lenet5_prune')
  c.epochs = 6
  c.prune.criterion = 'l1'
  c.prune.ratio = 0.7
  c.prune.selection = 'uniform'
  c.prune.search_criteria = None
  c.prune.search_ratios = None
  c.prune.search_selections = None
  c.prune.max_params = None
  c.prune.stop_rule = 'full'
  c.prune.finetune_epochs = 2
  return c
