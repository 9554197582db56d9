"""Learned channel attention for pruning: squeeze-and-excitation gates trained during pretraining.

Hu et al. 2018 (squeeze-and-excitation) learn, per layer, how much each channel should pass:
    e = sigmoid(W2 relu(W1 GAP(y) + b1) + b2),   y <- y * e
with GAP the global average over positions and W1 reducing C channels to C / r. Channel
attention is expected to improve an existing pruning criterion, but no formula is given for
how; the training-free `attention` criterion (criteria.py) approximates the excitation from
activity statistics, and it lost to plain L1. This module learns it instead:

* `attach_se` wraps any Flax model so that every group's gate point (the BatchNorm output of a
  channel's producers, `masks.gate_points`; in a ResNet the residual branch before the add, as in
  SE-ResNet) is multiplied by its own SE block's excitation. Pretraining trains the gates jointly
  with the network; the base model's variables are untouched in structure (under 'model').
* `mean_excitation` averages each channel's excitation over a few training batches (eval mode):
  how much the trained network chose to let the channel through, averaged over inputs.
* `se_<base>` criteria score_c = base_c / max(base) * mean_excitation_c: a heavy filter the
  network learned to suppress ranks below one it keeps open. Why a product: the excitation is
  in (0, 1) and input-averaged, so it re-weights the base ranking instead of replacing it (the
  base knows the weights, the excitation what the network routes through them).
* `detach_se` drops the gates before shrinking: the pruned model is the plain architecture
  (downstream BatchNorm statistics are re-estimated and fine-tuning adapts to the missing scale).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from qprune.ops import compile as compile_lib
from qprune.prune import criteria
from qprune.prune.group_types import Groups
from qprune.prune.masks import gate_points

BASE = 'model'  # where the wrapped model's variables live inside the wrapper's


class SqueezeExcite(nn.Module):
  """One SE block: x [N, ..., C] -> excitation [N, C] in (0, 1)."""
  channels: int
  hidden: int

  @nn.compact
  def __call__(self, x):
    squeezed = x.astype(jnp.float32).mean(axis=tuple(range(1, x.ndim - 1)))
    hidden = nn.relu(nn.Dense(self.hidden, name='reduce')(squeezed))
    return nn.sigmoid(nn.Dense(self.channels, name='expand')(hidden))


def _block_name(path: str) -> str:
  return 'se_' + path.replace('/', '__')


def _sown_name(path: str) -> str:
  return _block_name(path) + '_excitation'


class WithSqueezeExcite(nn.Module):
  """`model` with an SE block on the output of each module in `points` ((path, channels), ...).

  The excitation of each block is sown into 'intermediates' as '<block name>_excitation' (a mean
  over the batch), read by `mean_excitation`.
  """
  model: nn.Module
  points: tuple[tuple[str, int], ...]
  reduction: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    blocks = {path: SqueezeExcite(channels, max(channels // self.reduction, 1),
                                  name=_block_name(path))
              for path, channels in self.points}

    def intercept(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module_path = context.module.path
      if context.method_name != '__call__' or module_path[:1] != (BASE,):
        return out
      path = '/'.join(module_path[1:])
      if path not in blocks:
        return out
      excitation = blocks[path](out)
      self.sow('intermediates', _sown_name(path), excitation.mean(axis=0))
      shape = (excitation.shape[0],) + (1,) * (out.ndim - 2) + (excitation.shape[1],)
      return out * excitation.reshape(shape).astype(out.dtype)

    with nn.intercept_methods(intercept):
      return self.model(x, train=train)


def _point_widths(variables, groups: Groups) -> tuple[tuple[str, int], ...]:
  """(path, output channels) of every gate point, read from its parameters' shapes."""
  flat = traverse_util.flatten_dict(variables['params'], sep='/')
  widths = []
  for path in sorted(gate_points(groups)):
    for leaf in ('scale', 'bias', 'kernel'):
      if f'{path}/{leaf}' in flat:
        widths.append((path, int(flat[f'{path}/{leaf}'].shape[-1])))
        break
    else:
      raise ValueError(f'gate point {path!r} has no parameters to read its width from')
  return tuple(widths)


def attach_se(model: nn.Module, variables, groups: Groups, rng, *, reduction: int = 4,
              example=None):
  """(wrapper, its variables): `model` with SE blocks at every group's gate point, the SE blocks
  freshly initialized from `rng` and the model's own variables kept as they are.

  example: an input batch (e.g. uint8 [1, H, W, C]) to initialize the blocks with.
  """
  if example is None:
    raise ValueError('attach_se needs example= (an input batch) to initialize the SE blocks')
  wrapper = WithSqueezeExcite(model, _point_widths(variables, groups), reduction)
  return wrapper, with_gates(variables, gate_variables(wrapper.init(rng, example, train=False)))


def detach_se(variables) -> dict:
  """The wrapped model's own variables (the SE blocks dropped)."""
  return {collection: value[BASE] for collection, value in variables.items() if BASE in value}


def gate_variables(variables) -> dict:
  """The SE blocks' variables of a wrapper's (what `detach_se` drops)."""
  return {'params': {k: v for k, v in variables['params'].items() if k != BASE}}


def with_gates(variables, gates) -> dict:
  """A wrapper's variables from the model's own and `gate_variables`' (the inverse split)."""
  out = {collection: {BASE: value} for collection, value in variables.items()}
  out['params'] = {**out.get('params', {}), **gates['params']}
  return out


@compile_lib.jit(static_argnums=(0, 2))
def _mean_block_excitation(wrapper, variables, names, images):
  """{sown name: f32[C]}: excitation averaged over batches and images (eval mode)."""

  def one(x):
    _, state = wrapper.apply(variables, x, train=False, mutable=['intermediates'])
    sown = state['intermediates']
    return {name: sown[name][0] for name in names}

  per_batch = jax.lax.map(one, images)
  return {name: value.mean(axis=0) for name, value in per_batch.items()}


def mean_excitation(wrapper: WithSqueezeExcite, variables, groups: Groups,
                    images) -> dict[str, jax.Array]:
  """{group: f32[C]}: each channel's SE excitation averaged over `images` (uint8 [B, N, ...],
  B batches) and over the group's gated members (prefix-aligned, like the scores)."""
  names = tuple(_sown_name(path) for path, _ in wrapper.points)
  by_block = _mean_block_excitation(wrapper, variables, names, images)
  out = {}
  for g in groups:
    parts = [criteria._part(by_block[_sown_name(s.path)], s) for s in g.gates]  # pylint: disable=protected-access
    out[g.name] = criteria.prefix_mean(g.size, parts)
  return out


def learned_attention_scores(variables, groups: Groups, *, base: str = 'l1',
                             excitation: dict[str, jax.Array] | None = None, model=None,
                             batches=None, rng=None, aggregate: str | None = None,
                             **_) -> criteria.Scores:
  """score_c = base_c / max(base) * mean_excitation_c (see the module docstring).

  variables/model: the plain model (`detach_se`); excitation: `mean_excitation`'s output.
  """
  if excitation is None:
    raise ValueError(f'criterion se_{base} needs excitation= (the mean excitation of SE gates '
                     'trained during pretraining: prune.se_gates=True, or attach_se + '
                     'mean_excitation)')
  base_scores = criteria.score(base, variables, groups, model=model, batches=batches, rng=rng,
                               aggregate=aggregate)
  return {g.name: base_scores[g.name] / (base_scores[g.name].max() + 1e-12) *
          excitation[g.name] for g in groups}


SE_CRITERIA = ('se_l1', 'se_bn_gamma', 'se_taylor')
for _name in SE_CRITERIA:
  criteria.CRITERIA[_name] = functools.partial(learned_attention_scores, base=_name[3:])
