"""Quantize a trained CIFAR-10 ResNet-20 (--config.init_from=<workdir of cifar10_resnet20.py>)."""
from qprune.configs import base_config


def get_config():
  c = base_config()
  c.mode = 'quantize'
  c.dataset = 'cifar10'
  c.model = 'resnet20'
  c.batch_size = 128
  c.weight_decay = 1e-4
  c.augment = 'crop_flip'
  c.quant.method = 'kmeans'
  c.quant.k = 3
  c.quant.retrain_epochs = 2
  c.quant.learning_rate = 0.01
  return c
