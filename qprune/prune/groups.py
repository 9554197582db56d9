"""Channel groups: the sets of coupled tensor slices that must be pruned together.

Removing output channel c of a conv means removing, in one go, the filter `kernel[..., c]`, the
BatchNorm entries `scale[c], bias[c], mean[c], var[c]` that follow it, and the input slices of
every consumer that reads channel c (`kernel[:, :, c, :]` of the next conv, or the rows of a dense
kernel that the flatten maps from channel c). A `ChannelGroup` lists those slices; a mask is one
bool[C] vector per group (see `qprune.prune.masks`).

Groups are derived from the variables' structure with a rule per model family:

* chain models (lenet5, alexnet, vgg*): `conv{i}` + `bn{i}` feed `conv{i+1}`; the last conv feeds
  the first dense layer. After a flatten (LeNet-5, AlexNet) a conv channel c owns the dense rows
  `(h * W + w) * C + c` for every spatial position, so the consumer mask is the channel mask tiled
  `repeat = rows // C` times; after VGG's global average pool `repeat == 1`. With `dense=True`
  the hidden units of every dense layer but the last form groups too (`fc1` -> `fc2` ...).
* resnet*: block-internal groups `stage{s}_block{b}/conv1` (conv1 out, bn1, conv2 in). With
  `residual=True` also one group `residual` for the residual stream, see below.

The residual stream. Option-A shortcuts add `x` positionally (channel j to channel j), and at a
stage change zero-pad it from C_s to C_{s+1} channels, so channel j of stage s is tied to channel j
of every later stage. One consistent group therefore spans all stages: it has C_last channels and
each member uses the prefix `mask[:C_s]` of its stage. Its kept channels in stage s are then
`kept ∩ [0, C_s)`, which in sorted order are a prefix of the kept channels of stage s+1 — exactly
what the shrunk model's positional pad does. (Per-stage groups cannot be pruned independently: a
channel kept in stage s but dropped in s+1 would still flow through the shortcut.)
"""
import re
from collections.abc import Sequence

from flax import traverse_util

from qprune.models import interop
from qprune.prune import trace
from qprune.prune.group_types import (
  RESIDUAL,
  ChannelGroup,
  Groups,
  IgnoredLayersError,
  Slot,
  ignore_layers,
)

__all__ = ['RESIDUAL', 'ChannelGroup', 'Groups', 'Slot', 'derive_groups', 'ignore_layers',
           'IgnoredLayersError',
           'group_sizes', 'chain_groups', 'resnet_groups']



def _numbered(names, prefix):
  """Names `prefix{i}` sorted by i (conv2 before conv10)."""
  pattern = re.compile(rf'^{prefix}(\d+)$')
  found = [(int(m.group(1)), n) for n in names if (m := pattern.match(n))]
  return [n for _, n in sorted(found)]


def _out_size(params, path) -> int:
  return int(params[path]['kernel'].shape[-1])


def _in_rows(params, path) -> int:
  kernel = params[path]['kernel']
  return int(kernel.shape[-2])


def chain_groups(params, *, dense: bool = False) -> Groups:
  """Groups of a plain feed-forward CNN: conv{i}[+bn{i}] ... fc{j} (LeNet-5, AlexNet, VGG)."""
  names = list(params)
  convs = _numbered(names, 'conv')
  denses = _numbered(names, 'fc') or [n for n in names if n == 'fc']
  layers = convs + denses
  groups = []
  for i, conv in enumerate(convs):
    c = _out_size(params, conv)
    consumer = layers[i + 1]
    repeat = _in_rows(params, consumer) // c
    bn = f'bn{conv[len("conv"):]}'
    norms = (Slot(bn, c),) if bn in params else ()
    groups.append(ChannelGroup(conv, c, (Slot(conv, c),), norms,
                               (Slot(consumer, c, repeat),), ((conv, c),)))
  if dense:
    for fc, consumer in zip(denses[:-1], denses[1:]):
      c = _out_size(params, fc)
      groups.append(ChannelGroup(fc, c, (Slot(fc, c),), (), (Slot(consumer, c),), ((fc, c),)))
  return tuple(groups)


def _blocks(params):
  """{stage: [block names in order]} for 'stage{s}_block{b}' entries."""
  pattern = re.compile(r'^stage(\d+)_block(\d+)$')
  names = {n.split('/')[0] for n in params}
  found = sorted((int(m.group(1)), int(m.group(2)), n) for n in names if (m := pattern.match(n)))
  stages: dict[int, list] = {}
  for s, _, name in found:
    stages.setdefault(s, []).append(name)
  return stages


def resnet_groups(params, *, residual: bool = False) -> Groups:
  """Groups of a CIFAR ResNet with option-A shortcuts (see the module docstring)."""
  stages = _blocks(params)
  groups = []
  for blocks in stages.values():
    for block in blocks:
      c = _out_size(params, f'{block}/conv1')
      groups.append(ChannelGroup(
          f'{block}/conv1', c, (Slot(f'{block}/conv1', c),), (Slot(f'{block}/bn1', c),),
          (Slot(f'{block}/conv2', c),), ((f'{block}/conv1', c),)))
  if residual:
    groups.append(_residual_group(params, stages))
  return tuple(groups)


def _residual_group(params, stages) -> ChannelGroup:
  stem = _out_size(params, 'stem_conv')
  widths = {s: _out_size(params, f'{blocks[0]}/conv2') for s, blocks in stages.items()}
  ordered = [stem] + [widths[s] for s in sorted(widths)]
  if any(a > b for a, b in zip(ordered, ordered[1:])):
    raise ValueError(f'residual pruning needs non-decreasing stage widths, got {ordered}')
  producers, norms, consumers = [Slot('stem_conv', stem)], [Slot('stem_bn', stem)], []
  previous = stem  # width of the stream entering the next block
  for s in sorted(stages):
    for block in stages[s]:
      consumers.append(Slot(f'{block}/conv1', previous))
      producers.append(Slot(f'{block}/conv2', widths[s]))
      norms.append(Slot(f'{block}/bn2', widths[s]))
      previous = widths[s]
  consumers.append(Slot('fc', previous))
  keys = tuple((f'stage{s}', widths[s]) for s in sorted(stages))
  return ChannelGroup(RESIDUAL, previous, tuple(producers), tuple(norms), tuple(consumers), keys)


def _module_tree(params):
  """Nested params -> {'a/b': {'kernel': ..., ...}} for every module that owns leaves."""
  flat = traverse_util.flatten_dict(params)
  modules: dict[str, dict] = {}
  for path, leaf in flat.items():
    modules.setdefault('/'.join(path[:-1]), {})[path[-1]] = leaf
  return modules


def derive_groups(variables, *, model=None, example_input=None, residual: bool | None = None,
                  dense: bool | None = None, ignored_layers: Sequence[str] = ()) -> Groups:
  """Channel groups of a model.

  variables: the model's variables ({'params', 'batch_stats'}; bare params are accepted), or a
  Flax NNX module (its state inside; then `model=` is not needed, `example_input=` is).
  With `model=` and `example_input=` (an array or `jax.ShapeDtypeStruct` with a batch axis, what
  `model.apply(variables, x, train=False)` takes): traced from the model's data flow, for any Flax
  model built from nn.Conv / nn.Dense / nn.BatchNorm (see `qprune.prune.trace`); residual and
  dense default to True (every prunable group). Without a model: the zoo's name-based rules
  (lenet5, alexnet, vgg*, resnet*), residual and dense default to False.

  residual: also prune residual streams (ResNets; one group tied across every member of the adds).
  dense: also prune hidden units of dense layers.
  ignored_layers: layer paths (or path prefixes ending in '/') whose outputs are never pruned:
    every group with such a producer is dropped (Torch-Pruning's `ignored_layers`).
  """
  if interop.is_nnx(variables) or interop.is_nnx(model):
    model, variables = interop.split(variables if interop.is_nnx(variables) else model)
    if example_input is None:
      raise trace.TraceError('derive_groups(nnx_module) needs example_input= (an array or '
                             'jax.ShapeDtypeStruct with a batch axis, what module(x) takes)')
  variables = interop.as_variables(variables, 'variables')
  if model is not None:
    if example_input is None:
      raise trace.TraceError('derive_groups(model=...) needs example_input= (an array or '
                             'jax.ShapeDtypeStruct with a batch axis)')
    return trace.traced_groups(model, variables, example_input,
                               residual=True if residual is None else residual,
                               dense=True if dense is None else dense,
                               ignored_layers=ignored_layers)
  params = _module_tree(variables['params'])
  if 'stem_conv' in params:
    groups = resnet_groups(params, residual=bool(residual))
  else:
    groups = chain_groups(params, dense=bool(dense))
  if not groups:
    raise trace.TraceError(
        "derive_groups without model= knows only the model zoo's layer names (conv1, fc1, "
        "stage1_block1/...), and these variables have none; pass model= and example_input= to "
        'trace any Flax model')
  return ignore_layers(groups, ignored_layers)


def group_sizes(groups: Groups) -> dict[str, int]:
  return {g.name: g.size for g in groups}
