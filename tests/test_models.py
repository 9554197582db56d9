import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune import models
from qprune.models.spec import model_from_spec, model_spec

CIFAR = (32, 32, 3)


def _abstract_variables(model, shape):
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape), jnp.uint8)))


@pytest.mark.parametrize('name,shape,params,macs', [
    ('lenet5', (28, 28, 1), 431_150, 2_293_000),
    ('resnet20', CIFAR, 269_722, 40_551_040),
    ('resnet56', CIFAR, 853_018, 125_485_696),
    ('vgg16', CIFAR, 14_724_042, 313_201_664),
])
def test_params_and_macs_match_published_sizes(name, shape, params, macs):
  model = models.create_model(name, 10)
  variables = _abstract_variables(model, shape)
  assert models.count_params(variables['params']) == params
  assert models.count_macs(model, variables, shape) == macs


def test_resnet20_is_the_paper_size():
  model = models.create_model('resnet20', 10)
  variables = _abstract_variables(model, CIFAR)
  assert abs(models.count_params(variables['params']) / 1e6 - 0.27) < 0.005
  assert abs(models.count_macs(model, variables, CIFAR) / 1e6 - 41) < 1


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_every_model_runs_on_uint8_images(name):
  shape = (28, 28, 1) if name == 'lenet5' else CIFAR
  model = models.create_model(name, 7, width=0.25)
  variables = models.init_variables(model, jax.random.PRNGKey(0), shape)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, *shape)), jnp.uint8)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  chex.assert_shape(logits, (2, 7))
  chex.assert_tree_all_finite(logits)
  # every conv is followed by a BatchNorm of the same width
  flat = {'/'.join(k.key for k in path): v for path, v in
          jax.tree_util.tree_leaves_with_path(variables['params'])}
  convs = [k for k in flat if k.endswith('kernel') and flat[k].ndim == 4]
  bns = [k for k in flat if k.endswith('scale')]
  assert len(convs) == len(bns) > 0


def test_layer_names_are_stable_and_readable():
  model = models.create_model('resnet20', 10)
  params = _abstract_variables(model, CIFAR)['params']
  assert {'stem_conv', 'stem_bn', 'stage1_block1', 'stage3_block3', 'fc'} <= set(params)
  assert set(params['stage2_block1']) == {'conv1', 'bn1', 'conv2', 'bn2'}
  assert params['stage2_block1']['conv1']['kernel'].shape == (3, 3, 16, 32)
  assert set(_abstract_variables(models.create_model('vgg16', 10), CIFAR)['params']) == {
      *(f'conv{i}' for i in range(1, 14)), *(f'bn{i}' for i in range(1, 14)), 'fc'}


def test_width_multiplier_and_channel_overrides():
  params = _abstract_variables(models.create_model('resnet20', 10, width=0.5), CIFAR)['params']
  assert params['stem_conv']['kernel'].shape == (3, 3, 3, 8)
  model = models.create_model('resnet20', 10, channels={'stage1_block2/conv1': 5, 'stage3': 40})
  params = _abstract_variables(model, CIFAR)['params']
  assert params['stage1_block2']['conv1']['kernel'].shape == (3, 3, 16, 5)
  assert params['stage3_block1']['conv2']['kernel'].shape == (3, 3, 64, 40)
  assert params['fc']['kernel'].shape == (40, 10)


def test_macs_count_follows_a_shrunk_model():
  full = models.create_model('lenet5', 10)
  small = models.create_model('lenet5', 10, channels={'conv1': 10})
  shape = (28, 28, 1)
  full_macs = models.layer_macs(full, _abstract_variables(full, shape), shape)
  small_macs = models.layer_macs(small, _abstract_variables(small, shape), shape)
  assert small_macs['conv1'] * 2 == full_macs['conv1']
  assert small_macs['conv2'] * 2 == full_macs['conv2']
  assert small_macs['fc1'] == full_macs['fc1']


def test_spec_round_trip_rebuilds_the_same_model():
  spec = model_spec('resnet20', 10, CIFAR, width=0.5, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2),
                    channels={'stage1': 6}, dataset='cifar10')
  model = model_from_spec(spec)
  assert model == models.create_model('resnet20', 10, width=0.5, mean=(0.4, 0.5, 0.6),
                                      std=(0.2, 0.2, 0.2), channels={'stage1': 6})


def test_unknown_model_is_a_clear_error():
  with pytest.raises(ValueError, match='unknown model .resnet21.'):
    models.create_model('resnet21', 10)


def test_batch_norm_impl_is_switched_by_backend_and_interchangeable(monkeypatch):
  """FusedBatchNorm on CPU, flax's elsewhere; the same variables give the same train-mode
  outputs and statistics with either, so checkpoints move between backends."""
  from qprune.ops import batchnorm  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(batchnorm.BN_SWITCH, raising=False)
  assert batchnorm.resolve_impl() == ('fused' if jax.default_backend() == 'cpu' else 'flax')
  x = jax.random.randint(jax.random.PRNGKey(3), (4, 32, 32, 3), 0, 256).astype(jnp.uint8)
  outs = {}
  for impl in batchnorm.IMPLS:
    monkeypatch.setenv(batchnorm.BN_SWITCH, impl)
    assert batchnorm.resolve_impl() == impl
    model = models.create_model('resnet20', 10, width=0.25)
    variables = models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
    outs[impl] = model.apply(variables, x, train=True, mutable=['batch_stats'])
  chex.assert_trees_all_close(outs['fused'], outs['flax'], atol=1e-4, rtol=1e-4)
