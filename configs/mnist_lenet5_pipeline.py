"""LeNet-5 on MNIST, whole pipeline: Early-Bird pruning decision, search, shrink, fine-tune, then
clustered power-of-two quantization (k = 3 per layer: 3 bits per weight) and a bit-packed export."""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'mnist_lenet5_prune')
  c.mode = 'pipeline'
  c.quant.method = 'kmeans'
  c.quant.k = 3
  c.quant.retrain_epochs = 1
  c.quant.learning_rate = 0.01
  return c
