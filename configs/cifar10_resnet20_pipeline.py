"""CIFAR-10 ResNet-20, whole pipeline: prune (Early-Bird, search under a MACs budget), fine-tune,
then clustered power-of-two quantization and export."""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'cifar10_resnet20_prune')
  c.mode = 'pipeline'
  c.quant.method = 'kmeans'
  c.quant.k = 3
  c.quant.retrain_epochs = 2
  c.quant.learning_rate = 0.01
  return c
