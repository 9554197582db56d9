"""Groups, masks and the physical shrink: masked full model == shrunk model (tol 1e-4)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune import prune
from qprune.models import count_macs, count_params, create_model, init_variables

SHAPES = {'lenet5': (28, 28, 1), 'vgg11': (32, 32, 3), 'resnet20': (32, 32, 3),
          'alexnet': (32, 32, 3)}


def _tiny(name, width=0.25, seed=0):
  """A small zoo model with non-trivial BN params and statistics (so masking is really tested)."""
  model = create_model(name, 10, width=width)
  variables = init_variables(model, jax.random.PRNGKey(seed), SHAPES[name])
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 1000))

  def perturb(x):
    return x + 0.3 * jax.random.normal(next(keys), x.shape) if x.ndim == 1 else x

  variables = jax.tree_util.tree_map(perturb, variables)
  variables['batch_stats'] = jax.tree_util.tree_map(jnp.abs, variables['batch_stats'])
  return model, variables


def _images(name, n=4, seed=2):
  return jax.random.randint(jax.random.PRNGKey(seed), (n, *SHAPES[name]), 0, 256).astype(jnp.uint8)


def _random_masks(groups, seed=3, keep=0.5):
  rng = np.random.default_rng(seed)
  masks = {g.name: rng.random(g.size) < keep for g in groups}
  # keep every prefix non-empty, as selection does
  for g in groups:
    masks[g.name][0] = True
  return masks


def test_lenet5_groups_map_flatten_rows():
  model, variables = _tiny('lenet5')
  groups = prune.derive_groups(variables)
  by_name = {g.name: g for g in groups}
  assert [g.name for g in groups] == ['conv1', 'conv2']
  c2 = by_name['conv2']
  # conv2 output is 4x4 spatial after the second pool: every channel owns 16 rows of fc1
  assert c2.consumers[0].path == 'fc1' and c2.consumers[0].repeat == 16
  assert c2.norms[0].path == 'bn2'
  assert prune.derive_groups(variables, dense=True)[-1].name == 'fc1'


def test_vgg_groups_feed_fc_after_global_pool():
  _, variables = _tiny('vgg11')
  groups = prune.derive_groups(variables)
  assert len(groups) == 8
  assert groups[-1].consumers[0] == prune.Slot('fc', groups[-1].size, 1)


def test_resnet_residual_group_spans_stages_as_prefixes():
  _, variables = _tiny('resnet20')  # stage widths 4, 8, 16
  groups = prune.derive_groups(variables, residual=True)
  res = {g.name: g for g in groups}[prune.RESIDUAL]
  assert res.size == 16
  assert res.widths == (('stage1', 4), ('stage2', 8), ('stage3', 16))
  assert res.prefix_lengths == (4, 8, 16)
  consumer_lengths = {s.path: s.length for s in res.consumers}
  assert consumer_lengths['stage2_block1/conv1'] == 4  # reads the stage-1 stream
  assert consumer_lengths['fc'] == 16
  assert len(prune.derive_groups(variables)) == 9  # block-internal only by default


CASES = [('lenet5', {}), ('lenet5', {'dense': True}), ('vgg11', {}), ('alexnet', {}),
         ('resnet20', {}), ('resnet20', {'residual': True})]


@pytest.mark.parametrize('name,options', CASES)
def test_masked_equals_gated_equals_shrunk(name, options):
  model, variables = _tiny(name, width=0.25 if name in ('lenet5', 'resnet20') else 0.125)
  groups = prune.derive_groups(variables, **options)
  masks = _random_masks(groups)
  images = _images(name, n=2)
  masked = model.apply(prune.apply_masks(variables, groups, masks), images)
  gates = {k: jnp.asarray(m, jnp.float32) for k, m in masks.items()}
  gated = prune.apply_with_gates(model, variables, images, groups, gates)
  small, small_vars = prune.shrink(model, variables, groups, masks)
  shrunk = small.apply(small_vars, images)
  chex.assert_trees_all_close(masked, shrunk, atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(masked, gated, atol=1e-4, rtol=1e-4)
  assert count_params(small_vars['params']) < count_params(variables['params'])


def test_apply_masks_jitted_matches_unjitted():
  model, variables = _tiny('resnet20')
  groups = prune.derive_groups(variables, residual=True)
  masks = {k: jnp.asarray(m) for k, m in _random_masks(groups).items()}
  eager = prune.apply_masks(variables, groups, masks)
  jitted = jax.jit(prune.apply_masks, static_argnums=1)(variables, groups, masks)
  chex.assert_trees_all_close(eager, jitted)


def test_residual_shrink_widths_follow_prefixes():
  model, variables = _tiny('resnet20')
  groups = prune.derive_groups(variables, residual=True)
  masks = prune.full_masks(groups)
  res = np.ones(16, bool)
  res[[1, 2, 5, 9, 15]] = False  # stage1 keeps 2/4, stage2 5/8, stage3 11/16
  masks = {k: np.asarray(m) for k, m in masks.items()}
  masks[prune.RESIDUAL] = res
  widths = prune.shrunk_widths(groups, masks)
  assert (widths['stage1'], widths['stage2'], widths['stage3']) == (2, 5, 11)
  small, small_vars = prune.shrink(model, variables, groups, masks)
  assert small_vars['params']['stem_conv']['kernel'].shape == (3, 3, 3, 2)
  assert small_vars['params']['stage2_block1']['conv1']['kernel'].shape[2] == 2
  assert small_vars['params']['fc']['kernel'].shape == (11, 10)
  images = _images('resnet20')
  chex.assert_trees_all_close(
      model.apply(prune.apply_masks(variables, groups, masks), images),
      small.apply(small_vars, images), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('name,options', [('lenet5', {}), ('vgg11', {}),
                                          ('resnet20', {'residual': True})])
def test_mask_cost_equals_count_of_shrunk_variables(name, options):
  model, variables = _tiny(name)
  groups = prune.derive_groups(variables, **options)
  masks = _random_masks(groups)
  small, small_vars = prune.shrink(model, variables, groups, masks)
  cost = prune.mask_cost(model, variables, groups, masks, SHAPES[name])
  assert cost['params'] == count_params(small_vars['params'])
  assert cost['macs'] == count_macs(small, small_vars, SHAPES[name])
  # and the shrunk model built from scratch has exactly the sliced shapes
  fresh = init_variables(small, jax.random.PRNGKey(0), SHAPES[name])
  chex.assert_trees_all_equal_shapes(fresh, small_vars)
  report = prune.shrink_report(model, variables, groups, masks, SHAPES[name])
  assert report['params_after'] == cost['params'] < report['params_before']
  assert report['macs_after'] == cost['macs'] < report['macs_before']


def test_lenet_conv2_cost_by_hand():
  """Keep 1 of conv2's channels in a width-1 LeNet-5: fc1 loses 16 rows per removed channel."""
  model = create_model('lenet5', 10)
  variables = init_variables(model, jax.random.PRNGKey(0), SHAPES['lenet5'])
  groups = prune.derive_groups(variables)
  masks = {'conv1': np.ones(20, bool), 'conv2': np.eye(50, dtype=bool)[0]}
  cost = prune.mask_cost(model, variables, groups, masks, SHAPES['lenet5'])
  # conv1 5*5*1*20 + bn1 2*20 + conv2 5*5*20*1 + bn2 2*1 + fc1 (16*1)*500+500 + fc2 500*10+10
  assert cost['params'] == 500 + 40 + 500 + 2 + 16 * 500 + 500 + 5010
  # conv1 24*24*25*20, conv2 8*8*25*20*1, fc1 16*500, fc2 500*10
  assert cost['macs'] == 24 * 24 * 25 * 20 + 8 * 8 * 25 * 20 + 16 * 500 + 5000
