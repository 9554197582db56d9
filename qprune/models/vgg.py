"""VGG-11/16/19 for CIFAR (BN after every conv; Network Slimming variant).

Convs are named conv1..convN in order; 'M' is a 2x2 max-pool. After the last conv block a global
average pool feeds a single linear classifier `fc` (VGG-16: 14.7M params, 313M MACs at 32x32).
"""

import flax.linen as nn

from qprune.models.base import ZooModel

CONFIGS = {
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
    19: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M',
         512, 512, 512, 512, 'M'),
}


class VGG(ZooModel):
  depth: int = 16

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = self.normalize(images)
    i = 0
    for item in CONFIGS[self.depth]:
      if item == 'M':
        x = self.max_pool(x, (2, 2))
        continue
      i += 1
      x = self.conv(f'conv{i}', self.ch(f'conv{i}', int(item)))(x)
      x = nn.relu(self.bn(f'bn{i}', train)(x))
    x = x.mean(axis=(1, 2))
    return self.logits(self.dense('fc', self.num_classes)(x))
