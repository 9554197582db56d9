"""Network-Slimming-style pruning of VGG-16 on CIFAR-10 (L1 on BN gamma, global threshold)."""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'cifar10_vgg16')
  c.mode = 'prune'
  c.weight_decay = 1e-4
  c.prune.criterion = 'bn_gamma'
  c.prune.slimming_lambda = 1e-4
  c.prune.ratio = 0.7
  c.prune.selection = 'global'
  c.prune.stop_rule = 'early_bird'
  c.prune.search_criteria = ('bn_gamma', 'l1', 'attention_bn_gamma')
  c.prune.search_ratios = (0.5, 0.6, 0.7)
  c.prune.finetune_epochs = 40
  return c
