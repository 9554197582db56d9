"""Vmapped candidate search == sequential loop == shrunk models; compiled once for all K."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_compiles

from qprune import prune
from qprune.models import create_model, init_variables

SHAPE = (32, 32, 3)


def _setup():
  model = create_model('resnet20', 10, width=0.25)
  variables = init_variables(model, jax.random.PRNGKey(0), SHAPE)
  groups = prune.derive_groups(variables, residual=True)
  images = jax.random.randint(jax.random.PRNGKey(1), (12, *SHAPE), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.PRNGKey(2), (12,), 0, 10)
  bn_images = prune.batched(images[:8], 4)                       # 2 batches of 4
  eval_images, eval_labels = prune.batched(images[4:], 4), prune.batched(labels[4:], 4)
  return model, variables, groups, bn_images, eval_images, eval_labels


def _candidates(variables, groups, k):
  rng = jax.random.PRNGKey(3)
  cands = prune.candidate_grid(['l1', 'random'], [0.25, 0.5, 0.75], ['uniform', 'global'])[:k]
  return cands, prune.candidate_masks(variables, groups, cands, rng=rng)


def test_vmapped_scores_equal_loop_and_compile_once():
  model, variables, groups, bn_images, eval_images, eval_labels = _setup()
  _, masks = _candidates(variables, groups, 4)
  def twice():  # other masks, same K: no recompilation
    first = prune.evaluate_candidates(model, groups, variables, prune.stack_masks(masks),
                                      bn_images, eval_images, eval_labels)
    second = prune.evaluate_candidates(model, groups, variables, prune.stack_masks(masks[::-1]),
                                       bn_images, eval_images, eval_labels)
    return first, second

  (vmapped, again), compiles = count_compiles('evaluate_candidates', twice)
  assert compiles == 1
  loop = [prune.evaluate_masks_jit(model, groups, variables, m, bn_images, eval_images,
                                   eval_labels) for m in masks]
  eager = prune.evaluate_masks(model, groups, variables, masks[0], bn_images, eval_images,
                               eval_labels)
  stacked_loop = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *loop)
  chex.assert_trees_all_close(vmapped, stacked_loop, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[::-1], again), vmapped,
                              atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(eager, loop[0], atol=1e-5, rtol=1e-5)


def test_masked_candidate_scores_equal_shrunk_models():
  model, variables, groups, bn_images, eval_images, eval_labels = _setup()
  _, masks = _candidates(variables, groups, 2)
  vmapped = prune.evaluate_candidates(model, groups, variables, prune.stack_masks(masks),
                                      bn_images, eval_images, eval_labels)
  for k, m in enumerate(masks):
    small, small_vars = prune.shrink(model, variables, groups, m)
    shrunk = prune.evaluate_masks_jit(small, (), small_vars, None, bn_images, eval_images,
                                      eval_labels)
    np.testing.assert_allclose(vmapped['loss'][k], shrunk['loss'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vmapped['accuracy'][k], shrunk['accuracy'])


def test_reestimated_bn_stats_are_batch_averages():
  model, variables, groups, bn_images, _, _ = _setup()
  stats = prune.reestimate_bn_stats(model, groups, variables, None, bn_images)
  # stem_bn's input is stem_conv's output: compute it by hand for both batches
  kernel = variables['params']['stem_conv']['kernel']
  means, variances = [], []
  for x in bn_images:
    x = (x.astype(jnp.float32) / 255. - .5) / .5
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    means.append(y.mean((0, 1, 2)))
    variances.append(y.var((0, 1, 2)))
  np.testing.assert_allclose(stats['stem_bn']['mean'], np.mean(means, 0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats['stem_bn']['var'], np.mean(variances, 0), rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_equal_shapes(stats, variables['batch_stats'])


def test_choose_best_respects_budget():
  rows = [{'accuracy': .9, 'loss': .3, 'params': 100, 'macs': 1000},
          {'accuracy': .8, 'loss': .5, 'params': 50, 'macs': 600},
          {'accuracy': .8, 'loss': .4, 'params': 60, 'macs': 500},
          {'accuracy': .5, 'loss': .9, 'params': 10, 'macs': 100}]
  assert prune.choose_best(rows) == 0
  assert prune.choose_best(rows, max_params=60) == 2      # tie on accuracy: lower loss
  assert prune.choose_best(rows, max_macs=550) == 2
  assert prune.choose_best(rows, max_params=55, max_macs=700) == 1
  assert prune.choose_best(rows, max_params=5) == 3       # nothing fits: cheapest


def test_search_rows_report_costs_and_scores():
  model, variables, groups, bn_images, eval_images, eval_labels = _setup()
  cands = prune.candidate_grid(['l1', 'bn_gamma'], [0.5], ['uniform'])
  best, rows, masks = prune.search(model, variables, groups, cands, SHAPE, bn_images,
                                   eval_images, eval_labels)
  assert len(rows) == len(masks) == 2 and 0 <= best < 2
  assert rows[0]['description'] == 'l1/uniform/ratio=0.5'
  for row, m in zip(rows, masks):
    assert row['params'] == prune.mask_cost(model, variables, groups, m, SHAPE)['params']
    assert 0.0 <= row['accuracy'] <= 1.0 and np.isfinite(row['loss'])


def test_paired_test_drops_only_clearly_worse_candidates():
  from qprune.prune.search import _significantly_worse
  leader = np.ones(100, bool)
  half = np.arange(100) < 50
  assert _significantly_worse(leader, half, 4.0)          # 50 % worse on 100 paired examples
  assert not _significantly_worse(leader, leader, 4.0)    # identical: never
  one_miss = leader.copy()
  one_miss[0] = False
  assert not _significantly_worse(leader, one_miss, 4.0)  # 1 of 100: within noise
  # d = 1 on 20 of 400 examples, 0 elsewhere: mean .05, std ~.218, se ~.0109 -> 4.6 se
  other = np.ones(400, bool)
  other[:20] = False
  assert _significantly_worse(np.ones(400, bool), other, 4.0)
  assert not _significantly_worse(np.ones(400, bool), other, 5.0)


def _race_setup():
  """ResNet-20 (width 0.25, random init) on images labelled by the unpruned model's own
  predictions: the unpruned candidate is right on every example, pruned ones less often. (Colour
  ramps, not noise: a random net maps every noise image to the same class.)"""
  model = create_model('resnet20', 10, width=0.25)
  variables = init_variables(model, jax.random.PRNGKey(0), SHAPE)
  groups = prune.derive_groups(variables, residual=True)
  colour_key, ramp_key = jax.random.split(jax.random.PRNGKey(1))
  colours = jax.random.uniform(colour_key, (384, 1, 1, 3)) * 255
  ramps = jnp.linspace(-1, 1, 32)[None, :, None, None] * jax.random.normal(ramp_key,
                                                                          (384, 1, 1, 3)) * 80
  images = jnp.clip(colours + ramps, 0, 255).astype(jnp.uint8)
  bn_images = prune.batched(images[:64], 32)
  stats = prune.reestimate_bn_stats(model, groups, variables, None, bn_images)
  labels = jnp.argmax(model.apply({'params': variables['params'], 'batch_stats': stats},
                                  images[64:], train=False), -1)
  cands = [prune.Candidate('l1', 0.0, 'uniform'),
           *prune.candidate_grid(['l1', 'random'], [0.25, 0.5, 0.8], ['uniform'])]
  return (model, variables, groups, cands, bn_images, prune.batched(images[64:], 20),
          prune.batched(labels, 20))


def test_race_picks_the_exhaustive_choice_and_drops_the_others_early():
  model, variables, groups, cands, bn_images, eval_images, eval_labels = _race_setup()
  (exhaustive, raced), compiles = count_compiles('_batch_outcomes', lambda: (
      prune.search(model, variables, groups, cands, SHAPE, bn_images, eval_images, eval_labels,
                   rng=jax.random.PRNGKey(3)),
      prune.search(model, variables, groups, cands, SHAPE, bn_images, eval_images, eval_labels,
                   rng=jax.random.PRNGKey(3), method='race')))
  assert compiles == 1  # one compile for every candidate and batch
  assert raced.best == exhaustive.best and exhaustive.rows[exhaustive.best]['ratio'] == 0.0
  assert exhaustive.rows[exhaustive.best]['accuracy'] == 1.0
  assert all(r['images'] == 320 for r in exhaustive.rows)
  seen = [r['images'] for r in raced.rows]
  # Everyone runs 2 batches before the first test; the race ends when one candidate is left.
  assert min(seen) >= 40 and max(seen) < 320 and sum(seen) < 0.5 * 320 * len(cands), seen
  for fast, full in zip(raced.rows, exhaustive.rows):
    assert (fast['params'], fast['macs']) == (full['params'], full['macs'])


def test_race_scores_only_candidates_within_the_budget():
  model, variables, groups, cands, bn_images, eval_images, eval_labels = _race_setup()
  full = prune.model_cost(model, variables, SHAPE)['params']
  found = prune.search(model, variables, groups, cands, SHAPE, bn_images, eval_images,
                       eval_labels, rng=jax.random.PRNGKey(3), method='race',
                       max_params=int(0.5 * full))
  for row in found.rows:
    fits = row['params'] <= 0.5 * full
    assert (row['accuracy'] is not None) == fits and (row['images'] > 0) == fits
  assert found.rows[found.best]['params'] <= 0.5 * full
  with pytest.raises(ValueError, match='unknown search method'):
    prune.search(model, variables, groups, cands, SHAPE, None, eval_images, eval_labels,
                 method='greedy')
