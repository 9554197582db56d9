"""Learned channel attention (SE gates during pretraining) on tiny hand-set cases."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qprune import prune
from qprune.models import create_model, init_variables


class _Net(nn.Module):
  """conv1 + bn1 -> relu -> mean -> fc: one prunable group (conv1, gated at bn1)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(jnp.float32) / 255.0
    x = nn.Conv(3, (1, 1), name='conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, name='bn1')(x)
    return nn.Dense(2, name='fc')(nn.relu(x).mean(axis=(1, 2)))


def _images(n=4, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (n, 5, 5, 1), 0, 256).astype(jnp.uint8)


def _attached(model=None, **kwargs):
  model = model or _Net()
  variables = model.init(jax.random.PRNGKey(0), _images(1))
  groups = prune.derive_groups(variables, model=model, example_input=_images(1))
  gated, gated_variables = prune.attach_se(model, variables, groups, jax.random.PRNGKey(1),
                                           example=_images(1), **kwargs)
  return model, variables, groups, gated, gated_variables


def _set_excitation(gated_variables, block, logits):
  """SE block `block` outputs sigmoid(logits) whatever the input (zero kernels)."""
  params = jax.tree_util.tree_map(lambda x: x, gated_variables['params'])
  se = params[block]
  se['reduce']['kernel'] = jnp.zeros_like(se['reduce']['kernel'])
  se['expand']['kernel'] = jnp.zeros_like(se['expand']['kernel'])
  se['expand']['bias'] = jnp.asarray(logits, jnp.float32)
  return {**gated_variables, 'params': params}


def test_attach_keeps_the_model_and_detach_returns_it():
  model, variables, groups, gated, gated_variables = _attached()
  assert [g.name for g in groups] == ['conv1']
  assert set(gated_variables['params']) == {'model', 'se_bn1'}
  assert gated_variables['params']['se_bn1']['reduce']['kernel'].shape == (3, 1)  # 3 // 4 -> 1
  chex.assert_trees_all_equal(prune.detach_se(gated_variables), variables)
  # Excitation 1 everywhere: the wrapper computes exactly the plain model.
  opened = _set_excitation(gated_variables, 'se_bn1', [40.0, 40.0, 40.0])
  np.testing.assert_allclose(gated.apply(opened, _images()), model.apply(variables, _images()),
                             rtol=1e-6)


def test_excitation_scales_the_gated_output():
  model, variables, _, gated, gated_variables = _attached()
  half_closed = _set_excitation(gated_variables, 'se_bn1', [40.0, -40.0, 40.0])
  # Channel 1 fully closed: the same as zeroing bn1's channel 1 (scale and bias).
  closed = jax.tree_util.tree_map(lambda x: x, variables)
  for leaf in ('scale', 'bias'):
    closed['params']['bn1'][leaf] = closed['params']['bn1'][leaf].at[1].set(0.0)
  np.testing.assert_allclose(gated.apply(half_closed, _images()), model.apply(closed, _images()),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('jit', [False, True])
def test_mean_excitation_and_scores_by_hand(jit):
  _, variables, groups, gated, gated_variables = _attached()
  logits = np.array([0.0, 1.0, -2.0], np.float32)
  hand = _set_excitation(gated_variables, 'se_bn1', logits)
  images = jnp.stack([_images(2, 0), _images(2, 1)])  # 2 batches of 2
  excitation = prune.mean_excitation(gated, hand, groups, images)
  sigmoid = 1 / (1 + np.exp(-logits))
  np.testing.assert_allclose(excitation['conv1'], sigmoid, rtol=1e-6)
  l1 = np.abs(np.asarray(variables['params']['conv1']['kernel'])).sum(axis=(0, 1, 2))
  fn = lambda v, e: prune.score('se_l1', v, groups, excitation=e)
  scores = (jax.jit(fn) if jit else fn)(variables, excitation)
  np.testing.assert_allclose(scores['conv1'], l1 / l1.max() * sigmoid, rtol=1e-5)
  with pytest.raises(ValueError, match='needs excitation'):
    prune.score('se_l1', variables, groups)


def test_residual_group_averages_its_members_excitation():
  """ResNet-20 (narrow): the residual group's members each have an SE block; the group's
  excitation is the prefix-aligned mean of its members' (stage 1 members cover 4 of 16)."""
  model = create_model('resnet20', 10, width=0.25)
  variables = init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  groups = prune.derive_groups(variables, residual=True)
  example = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  gated, gated_variables = prune.attach_se(model, variables, groups, jax.random.PRNGKey(1),
                                           example=example)
  residual = next(g for g in groups if g.name == prune.RESIDUAL)
  hand = gated_variables
  value = {}
  for i, slot in enumerate(residual.gates):  # member i excites every channel by sigmoid(i)
    block = 'se_' + slot.path.replace('/', '__')
    width = hand['params'][block]['expand']['bias'].shape[0]
    hand = _set_excitation(hand, block, np.full(width, float(i)))
    value[slot.path] = (slot.length, 1 / (1 + np.exp(-i)))
  excitation = prune.mean_excitation(gated, hand, groups, example[None])
  expected = np.zeros(residual.size)
  count = np.zeros(residual.size)
  for length, v in value.values():
    expected[:length] += v
    count[:length] += 1
  np.testing.assert_allclose(excitation[prune.RESIDUAL], expected / count, rtol=1e-5)


def test_gates_train_jointly_with_the_network():
  _, _, _, gated, gated_variables = _attached()
  images, labels = _images(8), jnp.arange(8) % 2

  def loss(params):
    logits, _ = gated.apply({**gated_variables, 'params': params}, images, train=True,
                            mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.grad(loss)(gated_variables['params'])
  assert float(jnp.abs(grads['se_bn1']['expand']['kernel']).sum()) > 0
  assert float(jnp.abs(grads['model']['conv1']['kernel']).sum()) > 0
