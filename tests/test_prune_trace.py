"""Traced channel groups, generic shrink and counting on plain Flax models (not from the zoo)."""
import json
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import qprune
from qprune import prune
from qprune.models import create_model, init_variables, layer_macs

SHAPE = (1, 12, 12, 3)


# ---- four architectures written with standard Flax layers, default auto names ------------------

class PlainCNN(nn.Module):
  """conv -> relu -> max pool -> conv -> BN -> relu -> avg pool -> flatten -> dense -> dense."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.Conv(8, (3, 3), padding='VALID')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(12)(x))
    return nn.Dense(5)(x)


class ResNetBlock(nn.Module):
  """flax/examples/imagenet's block: projection shortcut when the shape changes."""
  filters: int
  strides: tuple = (1, 1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    residual = x
    y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
    y = norm()(y)
    if residual.shape != y.shape:
      residual = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False)(residual)
      residual = norm()(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    for filters, strides in ((4, (1, 1)), (6, (2, 2)), (6, (1, 1))):
      x = ResNetBlock(filters, strides)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(5)(x)


class DenseBlockNet(nn.Module):
  """DenseNet-style: BN-ReLU-conv layers whose outputs are concatenated onto their input."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(6, (3, 3))(x)
    for _ in range(2):
      y = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
      y = nn.Conv(4, (3, 3))(y)
      x = jnp.concatenate([x, y], axis=-1)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.Conv(6, (1, 1))(x)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(5)(x)


class MobileNetBlock(nn.Module):
  """MobileNet-style: conv -> depthwise 3x3 -> pointwise 1x1, each with BN + ReLU6."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    x = nn.relu6(norm()(nn.Conv(8, (3, 3), (2, 2), use_bias=False)(x)))
    x = nn.Conv(8, (3, 3), feature_group_count=8, use_bias=False)(x)
    x = nn.relu6(norm()(x))
    x = nn.relu6(norm()(nn.Conv(10, (1, 1), use_bias=False)(x)))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(5)(x)


ARCHS = {'plain': PlainCNN, 'resnet': ResNet, 'densenet': DenseBlockNet,
         'mobilenet': MobileNetBlock}


def _init(cls, seed=0):
  """Variables with non-trivial BN params and statistics, so masking is really tested."""
  model = cls()
  x = jnp.zeros(SHAPE, jnp.float32)
  variables = model.init(jax.random.PRNGKey(seed), x, train=False)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 1000))
  variables = jax.tree_util.tree_map(
      lambda v: v + 0.3 * jax.random.normal(next(keys), v.shape) if v.ndim == 1 else v,
      variables)
  if 'batch_stats' in variables:
    variables['batch_stats'] = jax.tree_util.tree_map(jnp.abs, variables['batch_stats'])
  return model, variables


def _x(n=3, seed=5):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, *SHAPE[1:]))


def _masks(groups, seed=3):
  rng = np.random.default_rng(seed)
  masks = {g.name: rng.random(g.size) < 0.5 for g in groups}
  for g in groups:
    masks[g.name][0] = True
  return masks


def _groups(model, variables, strict=True):
  """Traced groups; strict: the trace must follow everything (no PruningTraceWarning)."""
  with warnings.catch_warnings():
    if strict:
      warnings.simplefilter('error', prune.PruningTraceWarning)
    return prune.derive_groups(variables, model=model, example_input=_x(1))


def test_plain_cnn_groups_follow_flatten_and_dense():
  model, variables = _init(PlainCNN)
  groups = {g.name: g for g in _groups(model, variables)}
  assert sorted(groups) == ['Conv_0', 'Conv_1', 'Dense_0']
  # Conv_1 -> BN -> pool -> 2x2 spatial flattened: each channel owns 4 rows of Dense_0
  assert groups['Conv_1'].norms == (prune.Slot('BatchNorm_0', 8),)
  assert groups['Conv_1'].consumers == (prune.Slot('Dense_0', 8, repeat=4),)
  assert groups['Dense_0'].consumers == (prune.Slot('Dense_1', 12),)


def test_resnet_projection_shortcut_groups():
  model, variables = _init(ResNet)
  groups = {g.name: g for g in _groups(model, variables)}
  # stem + block 0 (identity shortcut) form one stream; block 1's projection starts another that
  # block 2 (identity) joins; the classifier Dense_0 is never a producer
  stem = groups['Conv_0']
  assert [s.path for s in stem.producers] == ['Conv_0', 'ResNetBlock_0/Conv_1']
  assert {s.path for s in stem.consumers} == {'ResNetBlock_0/Conv_0', 'ResNetBlock_1/Conv_0',
                                                'ResNetBlock_1/Conv_2'}
  stage2 = groups['ResNetBlock_1/Conv_1']
  assert {s.path for s in stage2.producers} == {'ResNetBlock_1/Conv_1', 'ResNetBlock_1/Conv_2',
                                                  'ResNetBlock_2/Conv_1'}
  assert {s.path for s in stage2.consumers} == {'ResNetBlock_2/Conv_0', 'Dense_0'}
  assert {s.path for s in stage2.norms} == {'ResNetBlock_1/BatchNorm_1',
                                              'ResNetBlock_1/BatchNorm_2',
                                              'ResNetBlock_2/BatchNorm_1'}
  assert 'Dense_0' not in groups
  # residual=False keeps only the block-internal groups
  inner = prune.derive_groups(variables, model=model, example_input=_x(1), residual=False)
  assert all(len(g.producers) == 1 for g in inner) and len(inner) == 3


def test_densenet_concatenation_keeps_groups_at_offsets():
  model, variables = _init(DenseBlockNet)
  groups = {g.name: g for g in _groups(model, variables)}
  stem, first, second = groups['Conv_0'], groups['Conv_1'], groups['Conv_2']
  # the stem's channels are [0, 6) of both concatenations; Conv_1's are [6, 10); Conv_2's [10, 14)
  assert set(stem.consumers) == {prune.Slot('Conv_1', 6), prune.Slot('Conv_2', 6),
                                 prune.Slot('Conv_3', 6)}
  assert set(first.consumers) == {prune.Slot('Conv_2', 4, offset=6),
                                  prune.Slot('Conv_3', 4, offset=6)}
  assert second.consumers == (prune.Slot('Conv_3', 4, offset=10),)
  assert second.norms == (prune.Slot('BatchNorm_2', 4, offset=10),)
  # the transition conv's 6 channels reach the dense through a flatten of a 6x6 map
  assert groups['Conv_3'].consumers == (prune.Slot('Dense_0', 6, repeat=36),)


def test_mobilenet_depthwise_is_coupled():
  model, variables = _init(MobileNetBlock)
  groups = {g.name: g for g in _groups(model, variables)}
  g = groups['Conv_0']
  assert [s.path for s in g.producers] == ['Conv_0', 'Conv_1'] and g.depthwise == ('Conv_1',)
  assert [s.path for s in g.norms] == ['BatchNorm_0', 'BatchNorm_1']
  assert g.consumers == (prune.Slot('Conv_2', 8),)
  # a depthwise coupling is not a residual stream
  assert g in prune.derive_groups(variables, model=model, example_input=_x(1), residual=False)


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_masked_equals_gated_equals_shrunk(arch):
  model, variables = _init(ARCHS[arch])
  groups = _groups(model, variables)
  masks = _masks(groups)
  x = _x()
  masked = model.apply(prune.apply_masks(variables, groups, masks), x, train=False)
  gates = {k: jnp.asarray(m, jnp.float32) for k, m in masks.items()}
  gated = prune.apply_with_gates(model, variables, x, groups, gates)
  small, small_vars = prune.shrink(model, variables, groups, masks)
  shrunk = small.apply(small_vars, x, train=False)
  chex.assert_trees_all_close(masked, shrunk, atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(masked, gated, atol=1e-4, rtol=1e-4)
  assert qprune.count_params(small_vars['params']) < qprune.count_params(variables['params'])
  # the shrunk model builds exactly the sliced shapes from scratch
  fresh = jax.eval_shape(lambda: small.init(jax.random.PRNGKey(0), x, train=False))
  chex.assert_trees_all_equal_shapes(fresh, small_vars)
  # and costs what mask_cost predicts
  cost = prune.mask_cost(model, variables, groups, masks, x)
  assert cost == {'params': qprune.count_params(small_vars['params']),
                  'macs': qprune.count_macs(small, small_vars, example_input=x)}
  assert cost['macs'] < qprune.count_macs(model, variables, example_input=x)


def test_shrunk_user_model_saves_and_rebuilds(tmp_path):
  model, variables = _init(ResNet)
  groups = _groups(model, variables)
  small, small_vars = prune.shrink(model, variables, groups, _masks(groups))
  path = tmp_path / 'widths.json'
  path.write_text(json.dumps(small.overrides_dict()))
  rebuilt = prune.ShrunkModel.from_dict(ResNet(), json.loads(path.read_text()))
  assert rebuilt == small
  x = _x()
  np.testing.assert_allclose(rebuilt.apply(small_vars, x), small.apply(small_vars, x))
  # pruning a shrunk model again composes the overrides
  groups2 = _groups(small, small_vars)
  smaller, smaller_vars = prune.shrink(small, small_vars, groups2, _masks(groups2, seed=4))
  assert isinstance(smaller.model, ResNet)
  chex.assert_trees_all_close(
      small.apply(prune.apply_masks(small_vars, groups2, _masks(groups2, seed=4)), x),
      smaller.apply(smaller_vars, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_criteria_and_search_run(arch):
  model, variables = _init(ARCHS[arch])
  groups = _groups(model, variables)
  x = _x(8)
  batches = (x.reshape(2, 4, *x.shape[1:]), jnp.zeros((2, 4), jnp.int32))
  gated, gated_variables = prune.attach_se(model, variables, groups, jax.random.PRNGKey(1),
                                           example=x[:1])
  excitation = prune.mean_excitation(gated, gated_variables, groups, batches[0])
  for name in prune.CRITERIA:
    for aggregate in (None, 'mean'):
      scores = prune.score(name, variables, groups, model=model, batches=batches,
                           rng=jax.random.PRNGKey(0), aggregate=aggregate,
                           excitation=excitation)
      assert {k: v.shape for k, v in scores.items()} == {g.name: (g.size,) for g in groups}
      assert all(np.isfinite(v).all() for v in scores.values()), name
  cands = prune.candidate_grid(['l1', 'taylor'], [0.5], ['uniform', 'global'])
  best, rows, masks = prune.search(model, variables, groups, cands, x[:1], batches[0],
                                   batches[0], batches[1], batches=batches)
  assert len(rows) == 4 and 0 <= best < 4
  for row, m in zip(rows, masks):
    small, small_vars = prune.shrink(model, variables, groups, m)
    assert row['params'] == qprune.count_params(small_vars['params'])
  # the Early-Bird decision compares traced masks like any others
  state, info = prune.early_bird_step(prune.EarlyBirdState(), masks[0])
  state, info = prune.early_bird_step(state, masks[0])
  assert info['distance'] == 0.0


# ---- unsupported patterns ----------------------------------------------------------------------

class HandNorm(nn.Module):
  """A norm written in plain jnp (statistics across channels): the trace cannot follow it."""

  @nn.compact
  def __call__(self, x):
    return (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-5)


class WithHandNorm(nn.Module):
  """A hand-written norm across channels: zeroing one changes the others, so not prunable."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(HandNorm()(nn.Conv(6, (3, 3))(x)))
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


class ChannelSlice(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(6, (3, 3))(x)
    return nn.Dense(5)(x[..., :3].mean(axis=(1, 2)))


def test_unsupported_op_warns_once_and_leaves_channels():
  model, variables = _init(WithHandNorm)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    groups = _groups(model, variables, strict=False)
  messages = [str(w.message) for w in caught if issubclass(w.category, prune.PruningTraceWarning)]
  assert len(messages) == 1
  assert 'Conv_0' in messages[0] and 'reduction over the channel axis' in messages[0]
  assert 'HandNorm_0' in messages[0] and 'ignored_layers' in messages[0]
  assert len(messages[0].splitlines()) <= 4, messages[0]  # one line per layer, not per op
  assert [g.name for g in groups] == ['Conv_1']
  with warnings.catch_warnings():  # naming the layer in ignored_layers: unpruned, no word
    warnings.simplefilter('error', prune.PruningTraceWarning)
    quiet = prune.derive_groups(variables, model=model, example_input=_x(1),
                                ignored_layers=['Conv_0'])
  assert [g.name for g in quiet] == ['Conv_1']


def test_nothing_prunable_is_an_error_naming_the_reason():
  model, variables = _init(ChannelSlice)
  with pytest.raises(prune.NoPrunableChannelsError, match='slice of the channel axis'):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      _groups(model, variables, strict=False)
  dense_only = nn.Dense(3)
  v = dense_only.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  with pytest.raises(prune.NoPrunableChannelsError, match='model output'):
    prune.derive_groups(v, model=dense_only, example_input=jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match='example_input'):
    prune.derive_groups(v, model=dense_only)


def test_model_failure_is_one_clear_error():
  model, variables = _init(PlainCNN)
  with pytest.raises(prune.TraceError, match=r'failed on an input of shape \(1, 5, 5\)'):
    prune.derive_groups(variables, model=model, example_input=jnp.zeros((1, 5, 5)))


# ---- the zoo: traced groups == today's name-based ones -----------------------------------------

ZOO = [('lenet5', (28, 28, 1)), ('alexnet', (32, 32, 3)), ('vgg11', (32, 32, 3)),
       ('vgg16', (32, 32, 3)), ('vgg19', (32, 32, 3)), ('resnet20', (32, 32, 3)),
       ('resnet32', (32, 32, 3)), ('resnet56', (32, 32, 3)), ('resnet110', (32, 32, 3))]


@pytest.mark.parametrize('name,shape', ZOO)
def test_zoo_traced_groups_equal_name_based(name, shape):
  model = create_model(name, 10, width=0.125)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.uint8)
  variables = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0), x)
  for options in ({}, {'residual': True, 'dense': True}):
    hand = prune.derive_groups(variables, **options)
    with warnings.catch_warnings():
      warnings.simplefilter('error', prune.PruningTraceWarning)
      traced = prune.derive_groups(variables, model=model, example_input=x,
                                   **(options or {'residual': False, 'dense': False}))
    assert traced == hand, (name, options)


def test_zoo_traced_shrink_keeps_the_spec_path():
  model = create_model('resnet20', 10, width=0.25)
  variables = init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  x = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  groups = prune.derive_groups(variables, model=model, example_input=x)
  small, _ = prune.shrink(model, variables, groups, _masks(groups))
  assert type(small) is type(model) and dict(small.channels)['stage3'] < 16


# ---- counting ----------------------------------------------------------------------------------

class ConvZoo(nn.Module):
  """Bias-free convs and a dense layer only, so XLA's flops are exactly 2 x MACs."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), padding='VALID', use_bias=False)(x)
    x = nn.Conv(8, (3, 3), (2, 2), padding='VALID', use_bias=False)(x)
    x = nn.Conv(6, (2, 2), padding='VALID', kernel_dilation=(2, 2), use_bias=False)(x)
    x = nn.Conv(4, (1, 1), padding='VALID', feature_group_count=2, use_bias=False)(x)
    x = nn.Conv(4, (2, 2), padding='VALID', feature_group_count=4, use_bias=False)(x)
    x = qprune.models.layers.Conv(5, (1, 1), padding='VALID', impl='xla')(x)
    return nn.Dense(3, use_bias=False)(x.reshape((x.shape[0], -1)))


def test_counts_equal_xla_cost_analysis():
  model = ConvZoo()
  x = jnp.ones((1, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  table = layer_macs(model, variables, example_input=x)
  # by hand: maps 16 -> 14 -> 6 (stride 2) -> 4 (2x2 dilated 2) -> 4 -> 3; positions x
  # kh*kw*(C_in / groups) x C_out; the dense reads 3*3*5 features
  assert table == {'Conv_0': 14 * 14 * 27 * 8, 'Conv_1': 36 * 72 * 8, 'Conv_2': 16 * 32 * 6,
                   'Conv_3': 16 * 3 * 4, 'Conv_4': 9 * 4 * 4, 'Conv_5': 9 * 4 * 5,
                   'Dense_0': 45 * 3}
  cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost['flops'] == pytest.approx(2 * sum(table.values()), rel=0.01)
  assert qprune.count_macs(model, variables, x) == sum(table.values())  # positional example


@pytest.mark.parametrize('arch', ['resnet', 'mobilenet'])
def test_counts_of_user_models_equal_xla_on_their_convs(arch):
  """The same check on every conv and dense of the test architectures, one layer at a time
  (their BN, ReLU and adds also cost flops; each layer alone is conv/dot only)."""
  model, variables = _init(ARCHS[arch])
  x = _x(1)
  table = layer_macs(model, variables, example_input=x)
  assert table and qprune.count_macs(model, variables, example_input=x) == sum(table.values())
  inputs = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, (nn.Conv, nn.Dense)) and context.method_name == '__call__':
      inputs['/'.join(context.module.path)] = (context.module, args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x)
  flat = {'/'.join(k[:-1]): v for k, v in traverse_util.flatten_dict(variables['params']).items()
          if k[-1] == 'kernel'}
  for path, (module, xin) in inputs.items():
    layer = module.clone(parent=None, use_bias=False)
    params = {'params': {'kernel': flat[path]}}
    cost = jax.jit(layer.apply).lower(params, xin).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    padded = isinstance(module, nn.Conv) and module.padding == 'SAME' and \
        max(module.kernel_size) > 1
    if not padded:  # XLA skips padding positions; SAME-padded 3x3 convs count them here
      assert cost['flops'] == pytest.approx(2 * table[path], rel=0.01), path
    else:
      assert cost['flops'] <= 2 * table[path]


# ---- per-layer controls and group aggregation --------------------------------------------------

def test_per_layer_controls():
  model, variables = _init(ResNet)
  groups = _groups(model, variables)
  names = [g.name for g in groups]
  scores = prune.score('l1', variables, groups)
  sizes = {g.name: g.size for g in groups}
  masks = prune.select('uniform', scores, groups, 0.5, ratios={'ResNetBlock_0/Conv_0': 0.0})
  kept = prune.kept_counts(groups, masks)
  assert kept['ResNetBlock_0/Conv_0'] == 4 and kept['Conv_0'] == 2
  masks = prune.select('uniform', scores, groups, 0.75, round_to=4)
  assert all(k % 4 == 0 or k == sizes[n] for n, k in prune.kept_counts(groups, masks).items())
  masks = prune.select('global', scores, groups, 0.7, max_ratio=0.5)
  assert all(k >= sizes[n] / 2 for n, k in prune.kept_counts(groups, masks).items())
  jitted = jax.jit(lambda s: prune.select('global', s, groups, 0.7, max_ratio=0.5, round_to=2))
  chex.assert_trees_all_equal(jitted(scores),
                              prune.select('global', scores, groups, 0.7, max_ratio=0.5,
                                           round_to=2))
  ignored = prune.derive_groups(variables, model=model, example_input=_x(1),
                                ignored_layers=['ResNetBlock_0/Conv_1'])
  assert [g.name for g in ignored] == [n for n in names if n != 'Conv_0']
  with pytest.raises(ValueError, match='no layer'):
    prune.ignore_layers(groups, ['nope'])
  with pytest.raises(ValueError, match='ratios'):
    prune.select('uniform', scores, groups, 0.5, ratios={'nope': 0.1})


def test_group_l1_aggregates_normalized_members():
  group = prune.ChannelGroup('a', 2, (prune.Slot('p', 2),), (prune.Slot('bn', 2),),
                             (prune.Slot('c', 2, repeat=2),), ())
  variables = {'params': {
      'p': {'kernel': jnp.asarray([[1., 3.]])},                    # filter L1 [1, 3]
      'bn': {'scale': jnp.asarray([-2., 2.]), 'bias': jnp.zeros(2)},  # |gamma| [2, 2]
      'c': {'kernel': jnp.asarray([[1.], [1.], [1.], [5.]])}}}     # rows 0,2 -> ch 0; 1,3 -> ch 1
  # normalized by their means: [.5, 1.5], [1, 1], [2/4, 6/4] = [.5, 1.5]
  for how, expected in (('sum', [2., 4.]), ('mean', [2 / 3, 4 / 3]), ('max', [1., 1.5])):
    got = prune.score('l1', variables, (group,), aggregate=how)['a']
    np.testing.assert_allclose(got, expected, rtol=1e-6)
  with pytest.raises(ValueError, match='unknown aggregate'):
    prune.score('l1', variables, (group,), aggregate='median')


class SqueezeExcite(nn.Module):
  """An SE block: its expand dense's units multiply the conv's channels, so they join its group."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    s = nn.relu(nn.Dense(4)(x.mean(axis=(1, 2))))
    x = x * nn.sigmoid(nn.Dense(8)(s))[:, None, None, :]
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    return nn.Dense(5)(x.mean(axis=(1, 2)))


def test_squeeze_excitation_joins_the_conv_group():
  model, variables = _init(SqueezeExcite)
  groups = {g.name: g for g in _groups(model, variables)}
  g = groups['Conv_0']
  assert [s.path for s in g.producers] == ['Conv_0', 'Dense_1']
  assert {s.path for s in g.consumers} == {'Dense_0', 'Conv_1'}
  masks = _masks(tuple(groups.values()))
  x = _x()
  small, small_vars = prune.shrink(model, variables, tuple(groups.values()), masks)
  chex.assert_trees_all_close(
      model.apply(prune.apply_masks(variables, tuple(groups.values()), masks), x),
      small.apply(small_vars, x), atol=1e-4, rtol=1e-4)


class Decoder(nn.Module):
  """conv -> transposed conv -> conv, with a FrozenDict of variables."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(6, (3, 3), (2, 2))(x))
    x = nn.relu(nn.ConvTranspose(4, (3, 3), (2, 2))(x))
    return nn.Conv(2, (1, 1))(x)


def test_conv_transpose_and_frozen_variables():
  from flax.core import freeze  # pylint: disable=g-import-not-at-top
  model, variables = _init(Decoder)
  variables = freeze(variables)
  groups = _groups(model, variables)
  assert [g.name for g in groups] == ['Conv_0', 'ConvTranspose_0']
  masks = _masks(groups)
  x = _x()
  small, small_vars = prune.shrink(model, variables, groups, masks)
  chex.assert_trees_all_close(model.apply(prune.apply_masks(variables, groups, masks), x),
                              small.apply(small_vars, x), atol=1e-4, rtol=1e-4)
  # transposed conv: input positions x kernel size
  assert layer_macs(model, variables, example_input=x)['ConvTranspose_0'] == 6 * 6 * 9 * 6 * 4
