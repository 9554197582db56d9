"""Normalization layers that couple channels: LayerNorm, RMSNorm, GroupNorm.

The channels they normalize are pruned with their group; the masked model (apply_with_gates,
what the vmapped search evaluates) computes what the shrunk one does; GroupNorm channels go in
whole groups. What the trace cannot follow is said in a few lines.
"""
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune import prune

X = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))


class ConvNeXtBlock(nn.Module):
  dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.dim, (3, 3), feature_group_count=self.dim)(x)
    y = nn.gelu(nn.Dense(2 * self.dim)(nn.LayerNorm()(y)))
    return x + nn.Dense(self.dim)(y)


class TinyConvNeXt(nn.Module):
  """Stem conv + LayerNorm, a ConvNeXt block, LayerNorm'd head: the stream is LN-normalized."""

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvNeXtBlock(8)(nn.LayerNorm()(nn.Conv(8, (2, 2), strides=2)(x)))
    return nn.Dense(5)(nn.LayerNorm()(x.mean((1, 2))))


class GroupNormNet(nn.Module):
  """GroupNorm after every conv (by number of groups and by group size), a depthwise conv."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(8, (3, 3))(x)))
    x = nn.relu(nn.GroupNorm(num_groups=None, group_size=2)(
        nn.Conv(8, (3, 3), feature_group_count=8)(x)))
    x = nn.RMSNorm()(nn.Conv(6, (1, 1))(x))
    return nn.Dense(5)(x.mean((1, 2)))


class HandGroupNorm(nn.Module):
  """A GroupNorm written in plain jnp: the trace cannot follow it."""

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, 2, c // 2)
    g = (g - g.mean((1, 2, 4), keepdims=True)) / jnp.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-5)
    return g.reshape(n, h, w, c) * self.param('scale', nn.initializers.ones, (c,))


class HandNormNet(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(HandGroupNorm()(nn.Conv(8, (3, 3))(x)))
    return nn.Dense(5)(x.mean((1, 2)))


def _prune(model_cls, ratio=0.5):
  model = model_cls()
  variables = model.init(jax.random.PRNGKey(0), X)
  with warnings.catch_warnings():
    warnings.simplefilter('error', prune.PruningTraceWarning)
    groups = prune.derive_groups(variables, model=model, example_input=X)
  masks = prune.make_masks(variables, groups, 'l1', ratio)
  small, small_vars = prune.shrink(model, variables, groups, masks)
  return model, variables, groups, masks, small, small_vars


def test_layernorm_stream_is_pruned_and_masked_equals_shrunk():
  model, variables, groups, masks, small, small_vars = _prune(TinyConvNeXt)
  stream = next(g for g in groups if g.name == 'Conv_0')
  assert {s.path for s in stream.norms} == {'LayerNorm_0', 'ConvNeXtBlock_0/LayerNorm_0',
                                           'LayerNorm_1'}
  assert {n[1] for n in stream.channel_norms} == {'layer'}
  assert small_vars['params']['LayerNorm_0']['scale'].shape == (4,)
  gated = prune.apply_with_gates(model, variables, X, groups, masks)
  np.testing.assert_allclose(small.apply(small_vars, X, train=False), gated, atol=1e-5)
  # zeroed weights alone are not the shrunk model here: the LayerNorm statistics see the zeros
  plain = model.apply(prune.apply_masks(variables, groups, masks), X, train=False)
  assert not np.allclose(plain, gated, atol=1e-3)


def test_groupnorm_prunes_whole_groups_and_masked_equals_shrunk():
  model, variables, groups, masks, small, small_vars = _prune(GroupNormNet)
  blocks = {g.name: g.block for g in groups}
  assert blocks == {'Conv_0': 2, 'Conv_2': 1}  # num_groups=4 of 8 and group_size=2, RMSNorm
  keep = np.asarray(masks['Conv_0'])
  assert (keep.reshape(-1, 2) == keep.reshape(-1, 2)[:, :1]).all()
  assert small.overrides_dict()['GroupNorm_0'] == {'group_size': 2, 'num_groups': 2}
  gated = prune.apply_with_gates(model, variables, X, groups, masks)
  np.testing.assert_allclose(small.apply(small_vars, X, train=False), gated, atol=1e-5)
  partial = {**masks, 'Conv_0': jnp.asarray([True, False] * 4)}
  with pytest.raises(prune.MaskError, match='keeps part of a GroupNorm group'):
    prune.shrink(model, variables, groups, partial)


def test_unfollowable_norm_is_one_short_error():
  model = HandNormNet()
  variables = model.init(jax.random.PRNGKey(0), X)
  with pytest.raises(prune.NoPrunableChannelsError) as caught:
    prune.derive_groups(variables, model=model, example_input=X)
  message = str(caught.value)
  assert message.count('HandGroupNorm_0') == 1, message
  assert len(message.splitlines()) <= 4 and len(message) < 700, message
  assert 'left unpruned: channels of Conv_0' in message and 'layers the trace knows' in message
