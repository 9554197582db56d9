"""LeNet-5 on MNIST: one epoch reaches ~99% test accuracy."""
from qprune.configs import base_config


def get_config():
  c = base_config()
  c.dataset = 'mnist'
  c.model = 'lenet5'
  c.epochs = 10
  c.batch_size = 128
  c.learning_rate = 0.05
  c.weight_decay = 5e-4
  return c
