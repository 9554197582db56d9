"""Experiment: channel attention against its base criterion on ResNet-20 / CIFAR-10, over seeds.

The decision study's schedule (configs/experiments/cifar10_resnet20_prune_decision.py: 10
pretraining epochs on the CPU), with the masks taken early, after 2 epochs (20 %), where a
better criterion has the most to give, and 1 fine-tuning epoch at lr 0.01 so the criterion still
shows after it.

Only the block-internal channels are pruned (prune.residual=False): the residual stream is one
group across all stages whose channel j < 16 spans three stages, so which channels a criterion
keeps there changes the pruned model's size (on a short test run, two criteria at the same
ratio differed by 12 % in params); block-internal groups keep exactly round((1 - ratio) * C)
channels each, so every criterion at a ratio yields the same architecture and the comparison is
of the choice alone.
Ratio 0.5 removes 49.5 % of the MACs, 0.7 68.5 %.
`python -m reproduce.sweeps.attention_ablation DATA OUT cifar` runs the ablation (about 45 minutes
per seed on 2 cores with its default criteria).
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'cifar10_resnet20_prune_decision')
  c.prune.residual = False
  c.prune.ratio = 0.5
  c.prune.stop_rule = 'fixed'
  c.prune.pretrain_epochs = 2
  c.prune.snapshots = False
  c.prune.finetune_epochs = 1
  return c
