"""AlexNet-style network for 32x32 inputs (CIFAR), with BatchNorm after every conv.

Five convs (5x5x64, 5x5x192, 3x3x384, 3x3x256, 3x3x256; max-pool after conv1, conv2 and conv5),
then fc1 1024 -> fc2 512 -> fc3 (classes), as in the CIFAR AlexNet variants of the compression
literature; BN is what makes it converge from scratch.
"""
import flax.linen as nn

from qprune.models.base import ZooModel

_CONVS = ((64, 5, True), (192, 5, True), (384, 3, False), (256, 3, False), (256, 3, True))


class AlexNet(ZooModel):

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = self.normalize(images)
    for i, (c, k, pool) in enumerate(_CONVS, start=1):
      x = self.conv(f'conv{i}', self.ch(f'conv{i}', c), (k, k))(x)
      x = nn.relu(self.bn(f'bn{i}', train)(x))
      if pool:
        x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(self.dense('fc1', self.ch('fc1', 1024))(x))
    x = nn.relu(self.dense('fc2', self.ch('fc2', 512))(x))
    return self.logits(self.dense('fc3', self.num_classes)(x))
