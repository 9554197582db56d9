"""Quantize a trained LeNet-5 (pass --config.init_from=<workdir of configs/mnist_lenet5.py>, e.g.
the committed results/mnist_lenet5/fp).

Default: the error-optimal target sets, k = 3 exponents per layer (7 codes with zero and sign:
3 bits), INQ schedule 50/75/87.5/100 %, one retraining epoch per step (cosine LR within it),
then one epoch training only BN and biases: 99.37 % against 99.44 % full precision (RESULTS.md).
For 2 bits use --config.quant.k=1 --config.quant.retrain_epochs=2 (98.92 %, the values {0, ±2^e}),
or the zero-free sets --config.quant.k=2 --config.quant.zero_code=False (99.31 %, four values
{±2^a, ±2^b} in the same 2 bits; k=4 zero-free is 3 bits, 99.40 %); for INQ's rule
--config.quant.method=inq --config.quant.bits=5 (Zhou et al. 2017); for k-means on log2|w|
(clustered targets) --config.quant.method=kmeans.
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'mnist_lenet5')
  c.mode = 'quantize'
  c.quant.method = 'optimal'
  c.quant.k = 3
  c.quant.retrain_epochs = 1
  c.quant.final_epochs = 1
  c.quant.learning_rate = 0.01
  return c
