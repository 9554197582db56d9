"""Network-Slimming-style pruning of VGG-16 on CIFAR-10 (L1 on BN gamma, global threshold)."""
from qprune.configs import base_config


def get_config():
  c = base_config()
  c.mode = 'prune'
  c.dataset = 'cifar10'
  c.model = 'vgg16'
  c.epochs = 160
  c.batch_size = 128
  c.learning_rate = 0.1
  c.weight_decay = 1e-4
  c.augment = 'crop_flip'
  c.prune.criterion = 'bn_gamma'
  c.prune.slimming_lambda = 1e-4
  c.prune.ratio = 0.7
  c.prune.selection = 'global'
  c.prune.stop_rule = 'early_bird'
  c.prune.search_criteria = ('bn_gamma', 'l1', 'attention_bn_gamma')
  c.prune.search_ratios = (0.5, 0.6, 0.7)
  c.prune.finetune_epochs = 40
  return c
