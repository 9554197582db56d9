"""ResNet-20 on CIFAR-10 (He et al. 2016 recipe, cosine LR): ~92% after 160-200 epochs."""
from qprune.configs import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar10'
  c.model = 'resnet20'
  c.epochs = 160
  c.batch_size = 128
  c.learning_rate = 0.1
  c.weight_decay = 1e-4
  c.augment = 'crop_flip'
  return c
