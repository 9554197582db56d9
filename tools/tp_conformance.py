"""Peer conformance: qprune's traced channel groups against Torch-Pruning's DependencyGraph.

  pip install -e '.[bench]'   # torch (CPU wheels) and torch-pruning (Fang et al. 2023)
  python tools/tp_conformance.py [--json]

One network is written twice, in Flax Linen and in PyTorch, with the same layer names: a stem, an
identity residual block, a strided block with a 1x1 projection shortcut, two 1x1 branches joined by
a concatenation, global average pooling and a classifier. qprune traces its groups
(`prune.derive_groups`); Torch-Pruning builds its DependencyGraph and lists every group rooted at
a conv or linear layer (`DependencyGraph.get_all_groups`), the classifier's outputs ignored in
both. Each group is written as the layers whose output channels it cuts (convs, BatchNorms) and
the layers whose input channels it cuts, side by side; the exit status is 1 when any group
differs.
"""
import argparse
import json
import sys

NAMES = ('stem', 'bn_stem', 'b1_conv1', 'b1_bn1', 'b1_conv2', 'b1_bn2', 'b2_conv1', 'b2_bn1',
         'b2_conv2', 'b2_bn2', 'b2_proj', 'b2_bnp', 'branch_a', 'bn_a', 'branch_b', 'bn_b', 'fc')


def flax_groups():
  """[(outputs, inputs)] of qprune's traced groups, as sorted name tuples."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from qprune import prune

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      def conv(name, features, kernel=3, stride=1):
        return nn.Conv(features, (kernel, kernel), (stride, stride), use_bias=False, name=name)

      def bn(name):
        return nn.BatchNorm(use_running_average=not train, name=name)

      x = nn.relu(bn('bn_stem')(conv('stem', 16)(x)))
      y = nn.relu(bn('b1_bn1')(conv('b1_conv1', 16)(x)))
      x = nn.relu(x + bn('b1_bn2')(conv('b1_conv2', 16)(y)))
      y = nn.relu(bn('b2_bn1')(conv('b2_conv1', 32, stride=2)(x)))
      y = bn('b2_bn2')(conv('b2_conv2', 32)(y))
      x = nn.relu(y + bn('b2_bnp')(conv('b2_proj', 32, kernel=1, stride=2)(x)))
      a = bn('bn_a')(conv('branch_a', 8, kernel=1)(x))
      b = bn('bn_b')(conv('branch_b', 8, kernel=1)(x))
      x = nn.relu(jnp.concatenate([a, b], axis=-1))
      return nn.Dense(10, name='fc')(x.mean(axis=(1, 2)))

  net = Net()
  x = jnp.zeros((1, 16, 16, 3))
  variables = net.init(jax.random.PRNGKey(0), x)
  groups = prune.derive_groups(variables, model=net, example_input=x)
  return sorted((tuple(sorted({s.path for s in g.producers} | {s.path for s in g.norms})),
                 tuple(sorted({s.path for s in g.consumers}))) for g in groups)


def torch_groups():
  """[(outputs, inputs)] of Torch-Pruning's groups, as sorted name tuples."""
  import torch
  import torch_pruning as tp
  from torch import nn

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      conv = lambda i, o, k=3, s=1: nn.Conv2d(i, o, k, s, padding=k // 2, bias=False)
      self.stem, self.bn_stem = conv(3, 16), nn.BatchNorm2d(16)
      self.b1_conv1, self.b1_bn1 = conv(16, 16), nn.BatchNorm2d(16)
      self.b1_conv2, self.b1_bn2 = conv(16, 16), nn.BatchNorm2d(16)
      self.b2_conv1, self.b2_bn1 = conv(16, 32, s=2), nn.BatchNorm2d(32)
      self.b2_conv2, self.b2_bn2 = conv(32, 32), nn.BatchNorm2d(32)
      self.b2_proj, self.b2_bnp = conv(16, 32, k=1, s=2), nn.BatchNorm2d(32)
      self.branch_a, self.bn_a = conv(32, 8, k=1), nn.BatchNorm2d(8)
      self.branch_b, self.bn_b = conv(32, 8, k=1), nn.BatchNorm2d(8)
      self.fc = nn.Linear(16, 10)

    def forward(self, x):
      relu = torch.relu
      x = relu(self.bn_stem(self.stem(x)))
      y = relu(self.b1_bn1(self.b1_conv1(x)))
      x = relu(x + self.b1_bn2(self.b1_conv2(y)))
      y = relu(self.b2_bn1(self.b2_conv1(x)))
      y = self.b2_bn2(self.b2_conv2(y))
      x = relu(y + self.b2_bnp(self.b2_proj(x)))
      x = relu(torch.cat([self.bn_a(self.branch_a(x)), self.bn_b(self.branch_b(x))], dim=1))
      return self.fc(x.mean(dim=(2, 3)))

  net = Net().eval()
  names = {module: name for name, module in net.named_modules()}
  graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, 3, 16, 16))
  result = []
  for group in graph.get_all_groups(ignored_layers=[net.fc],
                                    root_module_types=(nn.Conv2d, nn.Linear)):
    outputs, inputs = set(), set()
    for item in group:
      module, handler = item.dep.target.module, item.dep.handler
      if module not in names:
        continue  # functional nodes (the add, the concatenation, ...)
      in_channels = getattr(handler, '__name__', '') in ('prune_in_channels',
                                                        'prune_in_features')
      (inputs if in_channels else outputs).add(names[module])
    result.append((tuple(sorted(outputs)), tuple(sorted(inputs))))
  return sorted(set(result))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--json', action='store_true', help='print the groups as JSON')
  args = parser.parse_args(argv)
  ours, theirs = flax_groups(), torch_groups()
  if args.json:
    print(json.dumps({'qprune': ours, 'torch_pruning': theirs}))
  else:
    print('| output channels cut | input channels cut (qprune) | input channels cut '
          '(Torch-Pruning) | agree |')
    print('|---|---|---|---|')
    theirs_by_outputs = dict(theirs)
    for outputs, inputs in ours:
      other = theirs_by_outputs.get(outputs)
      print(f'| {", ".join(outputs)} | {", ".join(inputs)} | '
            f'{", ".join(other) if other is not None else "(no such group)"} | '
            f'{"yes" if other == inputs else "NO"} |')
    for outputs, inputs in theirs:
      if outputs not in dict(ours):
        print(f'| {", ".join(outputs)} | (no such group) | {", ".join(inputs)} | NO |')
  agree = ours == theirs
  print(f'{len(ours)} qprune groups, {len(theirs)} Torch-Pruning groups: '
        f'{"the same" if agree else "they differ"}')
  return 0 if agree else 1


if __name__ == '__main__':
  sys.exit(main())
