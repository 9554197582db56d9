"""LeNet-5 for MNIST, in the Caffe form used by Deep Compression (Han et al. 2016): 431k params.

conv1 5x5x20 -> BN -> ReLU -> maxpool 2 -> conv2 5x5x50 -> BN -> ReLU -> maxpool 2
-> fc1 500 -> ReLU -> fc2 (classes).
"""
import flax.linen as nn

from qprune.models.base import ZooModel


class LeNet5(ZooModel):

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = self.normalize(images)
    for i, c in ((1, 20), (2, 50)):
      x = self.conv(f'conv{i}', self.ch(f'conv{i}', c), (5, 5), padding='VALID')(x)
      x = nn.relu(self.bn(f'bn{i}', train)(x))
      x = self.max_pool(x, (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(self.dense('fc1', self.ch('fc1', 500))(x))
    return self.logits(self.dense('fc2', self.num_classes)(x))
