"""Prune LeNet-5 on MNIST: 50 % of every layer's channels (and fc1's units) by L1 norm, decided
during pretraining (Early-Bird), shrunk and fine-tuned.

It does what it says: prune.criterion at prune.ratio with prune.selection, no search. To search,
ask for it: e.g. --config.prune.search_criteria="('l1', 'attention')"
--config.prune.search_ratios="(0.5, 0.7)" --config.prune.search_selections="('uniform', 'global')"
--config.prune.max_params=0.4 scores those 8 candidates on held-out training images and keeps the
most accurate with at most 40 % of the params (report.md says what it chose and why; the
pipeline config does this). From a trained model: --config.init_from=<workdir of
configs/mnist_lenet5.py> decides the masks on it without pretraining.
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'mnist_lenet5')
  c.mode = 'prune'
  c.prune.criterion = 'l1'
  c.prune.ratio = 0.5
  c.prune.selection = 'uniform'
  c.prune.dense = True
  c.prune.stop_rule = 'early_bird'
  c.prune.eb_window = 3
  c.prune.finetune_epochs = 2
  return c
