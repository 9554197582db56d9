"""LeNet-5 on MNIST, whole pipeline: Early-Bird pruning decision, search, shrink, fine-tune, then
power-of-two quantization with the error-optimal target sets (k = 3 per layer: 3 bits per
weight), BN/bias retraining after the last snap, and an entropy-coded export.

Goal (Deep Compression, Han et al. 2016: 39x at 99.26 %): >= 50x smaller than FP32 at >= 99.2 %.
About 6x comes from pruning (at most 20 % of the params kept, fine-tuned 8 epochs), 10.7x
from 3-bit codes.
"""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'mnist_lenet5_prune')
  c.mode = 'pipeline'
  # The search: 8 candidates scored on held-out images, the most accurate with <= 20 % params.
  c.prune.search_criteria = ('l1', 'attention')
  c.prune.search_ratios = (0.6, 0.7)
  c.prune.search_selections = ('uniform', 'global')
  c.prune.max_params = 0.2
  c.prune.finetune_epochs = 8
  c.prune.finetune_learning_rate = 0.05
  c.quant.method = 'optimal'
  c.quant.k = 3
  c.quant.retrain_epochs = 1
  c.quant.final_epochs = 1
  c.quant.learning_rate = 0.01
  c.quant.entropy_coding = True
  return c
