"""AlexNet-style CIFAR net (with BatchNorm) on CIFAR-10."""
from qprune.configs import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar10'
  c.model = 'alexnet'
  c.epochs = 100
  c.batch_size = 128
  c.learning_rate = 0.05
  c.weight_decay = 5e-4
  c.augment = 'crop_flip'
  return c
