"""Quantize a trained LeNet-5 (pass --config.init_from=<workdir of configs/mnist_lenet5.py>).

Default: clustered targets, k = 3 exponents per layer (7 codes with zero and sign: 3 bits),
INQ schedule 50/75/87.5/100 %, one retraining epoch per step. For INQ's rule use
--config.quant.method=inq --config.quant.bits=5.
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'mnist_lenet5')
  c.mode = 'quantize'
  c.quant.method = 'kmeans'
  c.quant.k = 3
  c.quant.retrain_epochs = 1
  c.quant.learning_rate = 0.01
  return c
