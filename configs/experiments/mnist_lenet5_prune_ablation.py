"""Experiment: `attention` against its base criterion `l1` at an equal ratio, over seeds.

Run with --config.prune.criterion=l1 and =attention, --config.seed=0,1,2. One candidate (no
search), masks taken after 2 pretraining epochs, 80% of channels removed (incl. fc1 units) so
the criterion matters; compare pruned_test_accuracy (before fine-tuning, BN re-estimated) and
test_accuracy (after 1 fine-tuning epoch).
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'mnist_lenet5_prune_decision')  # one candidate, no search
  c.epochs = 4
  c.prune.ratio = 0.8
  c.prune.stop_rule = 'fixed'
  c.prune.pretrain_epochs = 2
  c.prune.finetune_epochs = 1
  return c
