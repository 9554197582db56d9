"""Criteria, selection and the Early-Bird decision on tiny hand-computed cases."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune import prune
from qprune.models import create_model, init_variables


def _hand_variables():
  """conv1 (1x1, 2->3) + bn1 -> conv2 (1x1, 3->2) + bn2 -> fc (2->4)."""
  bn = lambda scale: {'scale': jnp.asarray(scale, jnp.float32), 'bias': jnp.zeros(len(scale))}
  stats = lambda c: {'mean': jnp.zeros(c), 'var': jnp.ones(c)}
  conv1 = jnp.asarray([[1., -2., .5], [1., 0., -.5]]).reshape(1, 1, 2, 3)
  conv2 = jnp.asarray([[1., 0.], [0., -4.], [2., 1.]]).reshape(1, 1, 3, 2)
  params = {'conv1': {'kernel': conv1}, 'bn1': bn([.5, -3., .1]),
            'conv2': {'kernel': conv2}, 'bn2': bn([-1., 2.]),
            'fc': {'kernel': jnp.ones((2, 4)), 'bias': jnp.zeros(4)}}
  return {'params': params, 'batch_stats': {'bn1': stats(3), 'bn2': stats(2)}}


def test_l1_is_filter_l1_norm():
  variables = _hand_variables()
  groups = prune.derive_groups(variables)
  scores = prune.score('l1', variables, groups)
  chex.assert_trees_all_close(scores, {'conv1': jnp.array([2., 2., 1.]),
                                       'conv2': jnp.array([3., 5.])})


def test_bn_gamma_is_abs_scale_and_penalty_sums_all_gammas():
  variables = _hand_variables()
  groups = prune.derive_groups(variables)
  scores = prune.score('bn_gamma', variables, groups)
  chex.assert_trees_all_close(scores, {'conv1': jnp.array([.5, 3., .1]),
                                       'conv2': jnp.array([1., 2.])})
  penalty = prune.l1_gamma_penalty(variables['params'], 0.1)
  np.testing.assert_allclose(penalty, 0.1 * (3.6 + 3.0), rtol=1e-6)
  grad = jax.grad(prune.l1_gamma_penalty)(variables['params'], 0.1)
  np.testing.assert_allclose(grad['bn1']['scale'], 0.1 * np.sign([.5, -3., .1]))


def test_residual_scores_sum_members_on_prefixes():
  group = prune.ChannelGroup('residual', 3, (prune.Slot('a', 2), prune.Slot('b', 3)), (), (), ())
  variables = {'params': {'a': {'kernel': jnp.ones((1, 1, 1, 2))},
                          'b': {'kernel': 2 * jnp.ones((1, 1, 1, 3))}}}
  chex.assert_trees_all_close(prune.score('l1', variables, (group,)),
                              {'residual': jnp.array([3., 3., 2.])})


def test_random_is_seeded():
  groups = prune.derive_groups(_hand_variables())
  a = prune.score('random', None, groups, rng=jax.random.PRNGKey(1))
  b = prune.score('random', None, groups, rng=jax.random.PRNGKey(1))
  c = prune.score('random', None, groups, rng=jax.random.PRNGKey(2))
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a['conv1'], c['conv1'])
  assert all(((s >= 0) & (s < 1)).all() for s in a.values())


def _tiny_lenet():
  model = create_model('lenet5', 10, width=0.25)
  variables = init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 100))
  variables = jax.tree_util.tree_map(
      lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape) if x.ndim == 1 else x, variables)
  variables['batch_stats'] = jax.tree_util.tree_map(jnp.abs, variables['batch_stats'])
  images = jax.random.randint(jax.random.PRNGKey(2), (2, 4, 28, 28, 1), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.PRNGKey(3), (2, 4), 0, 10)
  return model, variables, (images, labels)


def test_taylor_is_abs_gate_gradient_of_mean_batch_loss():
  """|d/dg mean_b L_b(g)| at g = 1: checked against an un-jitted per-batch loop and a finite
  difference (loose: ReLU/max-pool kinks make the loss only piecewise smooth)."""
  import optax
  model, variables, (images, labels) = _tiny_lenet()
  groups = prune.derive_groups(variables)
  scores = prune.score('taylor', variables, groups, model=model, batches=(images, labels))

  def mean_loss(gates):
    losses = [optax.softmax_cross_entropy_with_integer_labels(
        prune.apply_with_gates(model, variables, x, groups, gates), y).mean()
              for x, y in zip(images, labels)]
    return sum(losses) / len(losses)

  ones = {g.name: jnp.ones(g.size) for g in groups}
  expected = jax.tree_util.tree_map(jnp.abs, jax.grad(mean_loss)(ones))
  chex.assert_trees_all_close(scores, expected, rtol=1e-4, atol=1e-6)
  eps = 1e-3
  up = dict(ones, conv1=ones['conv1'].at[0].add(eps))
  down = dict(ones, conv1=ones['conv1'].at[0].add(-eps))
  fd = abs(float(mean_loss(up) - mean_loss(down))) / (2 * eps)
  np.testing.assert_allclose(scores['conv1'][0], fd, rtol=0.1)


def test_channel_attention_by_hand():
  a = prune.channel_attention(jnp.array([1., 2., 3.]))
  z = 1 / math.sqrt(2 / 3)
  sig = lambda t: 1 / (1 + math.exp(-t))
  np.testing.assert_allclose(a, [sig(-z), .5, sig(z)], rtol=1e-5)
  # temperature sharpens; constant input gives 1/2 everywhere
  assert prune.channel_attention(jnp.array([1., 2., 3.]), temperature=0.1)[2] > a[2]
  np.testing.assert_allclose(prune.channel_attention(jnp.ones(4)), 0.5)


def test_attention_is_normalized_base_times_excitation_of_mean_relu():
  model, variables, batches = _tiny_lenet()
  groups = prune.derive_groups(variables)
  scores = prune.score('attention', variables, groups, model=model, batches=batches)
  base = prune.score('l1', variables, groups)
  # independent squeeze: BN outputs captured by Flax, relu, mean over batches/images/positions
  squeezed = {g.name: 0. for g in groups}
  for x in batches[0]:
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])
    for i, g in enumerate(groups, start=1):
      y = state['intermediates'][f'bn{i}']['__call__'][0]
      squeezed[g.name] += jax.nn.relu(y).mean(axis=(0, 1, 2)) / len(batches[0])
  for g in groups:
    s = squeezed[g.name]
    excitation = jax.nn.sigmoid((s - s.mean()) / s.std())
    expected = base[g.name] / base[g.name].max() * excitation
    np.testing.assert_allclose(scores[g.name], expected, rtol=1e-4, atol=1e-6)


def test_every_registered_criterion_runs_on_resnet_with_residual():
  model = create_model('resnet20', 10, width=0.25)
  variables = init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  groups = prune.derive_groups(variables, residual=True)
  images = jax.random.randint(jax.random.PRNGKey(2), (1, 2, 32, 32, 3), 0, 256).astype(jnp.uint8)
  batches = (images, jnp.zeros((1, 2), jnp.int32))
  gated, gated_variables = prune.attach_se(model, variables, groups, jax.random.PRNGKey(3),
                                           example=images[0])
  excitation = prune.mean_excitation(gated, gated_variables, groups, images)
  for name in prune.CRITERIA:
    scores = prune.score(name, variables, groups, model=model, batches=batches,
                         rng=jax.random.PRNGKey(0), excitation=excitation)
    assert {k: v.shape for k, v in scores.items()} == {g.name: (g.size,) for g in groups}, name
    assert all(np.isfinite(v).all() for v in scores.values()), name


def test_unknown_names_and_missing_data_raise():
  groups = prune.derive_groups(_hand_variables())
  with pytest.raises(ValueError, match='unknown criterion'):
    prune.score('nope', _hand_variables(), groups)
  with pytest.raises(ValueError, match='needs model'):
    prune.score('taylor', _hand_variables(), groups)
  with pytest.raises(ValueError, match='unknown selection'):
    prune.select('nope', {}, groups, 0.5)


# ---- selection -------------------------------------------------------------------------------

def _group(name, size, prefixes=None):
  prefixes = prefixes or (size,)
  return prune.ChannelGroup(name, size, tuple(prune.Slot(f'{name}{i}', p)
                                              for i, p in enumerate(prefixes)), (), (), ())


def test_uniform_keeps_top_fraction_per_group():
  groups = (_group('a', 3), _group('b', 4))
  scores = {'a': jnp.array([3., 1., 2.]), 'b': jnp.array([1., 4., 3., 2.])}
  masks = prune.select('uniform', scores, groups, 1 / 3)
  # a keeps round(2/3 * 3) = 2, b keeps round(2/3 * 4) = 3
  chex.assert_trees_all_equal(masks, {'a': jnp.array([True, False, True]),
                                      'b': jnp.array([False, True, True, True])})


def test_global_threshold_on_rms_normalized_scores():
  groups = (_group('a', 3), _group('b', 2))
  scores = {'a': jnp.array([1., 2., 3.]), 'b': jnp.array([10., 10.])}
  # rms(a) = sqrt(14/3): a -> [.46, .93, 1.39]; b -> [1, 1]; remove round(.6 * 5) = 3 lowest
  masks = prune.select('global', scores, groups, 0.6)
  chex.assert_trees_all_equal(masks, {'a': jnp.array([False, False, True]),
                                      'b': jnp.array([True, False])})
  # raw scores (Network Slimming): b's 10s beat all of a, and a keeps its best channel anyway
  raw = prune.select('global', scores, groups, 0.6, normalize='none')
  chex.assert_trees_all_equal(raw, {'a': jnp.array([False, False, True]),
                                    'b': jnp.array([True, True])})


def test_selection_never_empties_a_layer():
  groups = (_group('a', 2), _group('b', 3))
  scores = {'a': jnp.array([.001, .002]), 'b': jnp.array([5., 6., 7.])}
  masks = prune.select('global', scores, groups, 0.4, normalize='none')
  np.testing.assert_array_equal(masks['a'], [False, True])
  masks = prune.select('uniform', scores, groups, 0.99)
  assert all(int(m.sum()) == 1 for m in masks.values())


def test_selection_keeps_every_prefix_of_a_residual_group():
  groups = (_group('residual', 4, prefixes=(2, 4)),)
  masks = prune.select('uniform', {'residual': jnp.array([0., 0., 5., 6.])}, groups, 0.5)
  np.testing.assert_array_equal(masks['residual'], [True, False, True, True])


def test_selection_is_jittable():
  groups = (_group('a', 3), _group('b', 2))
  scores = {'a': jnp.array([1., 2., 3.]), 'b': jnp.array([10., 10.])}
  for name in prune.SELECTIONS:
    eager = prune.select(name, scores, groups, 0.6)
    jitted = jax.jit(lambda s, name=name: prune.select(name, s, groups, 0.6))(scores)
    chex.assert_trees_all_equal(eager, jitted)


# ---- decision --------------------------------------------------------------------------------

def test_mask_distance_is_normalized_hamming():
  a = {'x': np.array([1, 1, 0, 0], bool), 'y': np.array([1, 0], bool)}
  b = {'x': np.array([1, 0, 0, 0], bool), 'y': np.array([0, 0], bool)}
  assert prune.mask_distance(a, b) == pytest.approx(2 / 6)
  assert prune.mask_distance(a, a) == 0.0


def test_early_bird_needs_a_full_stable_window():
  def mask(bits):
    return {'x': np.array(bits, bool)}

  rule = prune.EarlyBirdRule(window=3, threshold=0.25)
  state = prune.EarlyBirdState()
  sequence = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]
  infos = []
  for bits in sequence:
    state, info = prune.early_bird_step(state, mask(bits), rule)
    infos.append(info)
  assert math.isnan(infos[0]['distance'])
  assert [i['distance'] for i in infos[1:]] == [.75, 0., .25, 0., 0.]
  # step 3 window = masks 1..3 (max .75); step 4 window = 2..4 (max .25 <= .25): stable
  assert [i['stable'] for i in infos] == [False, False, False, True, True, True]
  assert state.stable_at == 4 and len(state.masks) == 3
  strict = prune.EarlyBirdRule(window=3, threshold=0.1)
  state = prune.EarlyBirdState()
  for bits in sequence:
    state, info = prune.early_bird_step(state, mask(bits), strict)
  assert state.stable_at == 6
