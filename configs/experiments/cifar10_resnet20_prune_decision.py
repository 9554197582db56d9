"""Experiment: ResNet-20 / CIFAR-10, is a pruning decision made after few epochs as good as one
after full training? (the Early-Bird setting, You et al. 2020, arXiv:1909.11957)

One mask setting (prune.criterion at 30 % of the channels of every group, the residual stream
included: about half of the MACs removed, results.json `macs_removed`), one pretraining run from
scratch with stop_rule=full and a snapshot after every epoch; decision runs replay it with
prune.decide_from and differ only in when the masks are taken (stop_rule=fixed at E epochs, or
the Early-Bird rule). Every decision is shrunk, its BatchNorm statistics re-estimated, and
fine-tuned with the same budget. `python -m reproduce.sweeps.prune_decision` runs the
whole study.

This file is the CPU budget: 10 pretraining epochs (cosine LR, about 35 minutes on 2 cores) and
2 fine-tuning epochs. The Early-Bird window is 2 (consecutive masks within 10 % Hamming
distance) because a window of 5 could not fire before half of a 10-epoch run; on the paper's
schedule (the sweep's `gpu` kind: 160 epochs) it is 5, as in You et al.
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, '../cifar10_resnet20_prune')
  c.epochs = 10
  c.weight_decay = 5e-4  # as configs/cifar10_resnet20_cpu.py: the short schedule takes more
  c.warmup_epochs = 1.0
  c.prune.criterion = 'l1'
  c.prune.ratio = 0.3
  c.prune.residual = True
  c.prune.selection = 'uniform'
  c.prune.search_criteria = None
  c.prune.search_ratios = None
  c.prune.search_selections = None
  c.prune.max_macs = None
  c.prune.stop_rule = 'full'
  c.prune.snapshots = True
  c.prune.eb_window = 2
  c.prune.eb_threshold = 0.1
  c.prune.finetune_epochs = 2
  c.prune.finetune_learning_rate = 0.01
  return c
