"""ResNet-56 on CIFAR-100 (TFDS download, or an offline copy from `python -m
qprune.data.make_folders --from_tfds=cifar100 --out=DATA`)."""
from qprune.configs import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar100'
  c.model = 'resnet56'
  c.epochs = 160
  c.batch_size = 128
  c.learning_rate = 0.1
  c.weight_decay = 2e-4
  c.augment = 'crop_flip'
  return c
