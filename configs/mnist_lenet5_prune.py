"""Prune LeNet-5 on MNIST: masks decided during pretraining (Early-Bird), 8 candidates searched."""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'mnist_lenet5')
  c.mode = 'prune'
  c.prune.criterion = 'l1'
  c.prune.ratio = 0.5
  c.prune.dense = True
  c.prune.stop_rule = 'early_bird'
  c.prune.eb_window = 3
  c.prune.search_criteria = ('l1', 'attention')
  c.prune.search_ratios = (0.5, 0.7)
  c.prune.search_selections = ('uniform', 'global')
  c.prune.max_params = 0.4  # the best candidate with at most 40% of the params
  c.prune.finetune_epochs = 2
  return c
