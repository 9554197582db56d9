"""ResNet-20 on CIFAR-10 on a CPU budget: 30 epochs of cosine LR (about 1.5 hours on 2 cores).

The short schedule takes a stronger weight decay (5e-4) than He et al.'s 160-epoch recipe
(1e-4, `cifar10_resnet20.py`); it is the full-precision model the committed CIFAR-10 results
quantize and prune.
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'cifar10_resnet20')
  c.epochs = 30
  c.weight_decay = 5e-4
  c.warmup_epochs = 1.0
  return c
