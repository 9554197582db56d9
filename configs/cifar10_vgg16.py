"""VGG-16 (BN, CIFAR variant) on CIFAR-10."""
from qprune.configs import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar10'
  c.model = 'vgg16'
  c.epochs = 160
  c.batch_size = 128
  c.learning_rate = 0.1
  c.weight_decay = 5e-4
  c.augment = 'crop_flip'
  return c
