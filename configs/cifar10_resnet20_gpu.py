"""ResNet-20 on CIFAR-10 at the paper's length (160 epochs) sized for one GPU: batch 256 with the
learning rate scaled linearly (0.2), 2 warm-up epochs, test accuracy every 10 epochs."""
from qprune.configs import sibling_config


def get_config():
  c = sibling_config(__file__, 'cifar10_resnet20')
  c.epochs = 160
  c.batch_size = 256
  c.learning_rate = 0.2
  c.warmup_epochs = 2.0
  c.eval_every = 10
  return c
