"""Quantize a trained CIFAR-10 ResNet-20 (--config.init_from=<workdir of cifar10_resnet20.py>)."""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'cifar10_resnet20')
  c.mode = 'quantize'
  c.quant.method = 'kmeans'
  c.quant.k = 3
  c.quant.retrain_epochs = 2
  c.quant.learning_rate = 0.01
  return c
