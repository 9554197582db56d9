"""Prune CIFAR-10 ResNet-20 block-internal channels; Early-Bird decision during pretraining."""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'cifar10_resnet20')
  c.mode = 'prune'
  c.prune.criterion = 'l1'
  c.prune.ratio = 0.4
  c.prune.residual = False
  c.prune.stop_rule = 'early_bird'
  c.prune.search_criteria = ('l1', 'bn_gamma', 'attention')
  c.prune.search_ratios = (0.3, 0.4, 0.5)
  c.prune.search_selections = ('uniform', 'global')
  c.prune.max_macs = 0.6
  c.prune.finetune_epochs = 40
  return c
