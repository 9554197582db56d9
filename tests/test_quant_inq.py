"""INQ schedule: freeze masks, snapping, frozen weights never move under a masked optax step."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qprune.quant import inq, targets
from qprune.train.optim import freezable


def tiny_params():
  rng = np.random.default_rng(0)
  normal = lambda *s: jnp.asarray(rng.normal(0, 0.3, s), jnp.float32)
  return {'conv1': {'kernel': normal(2, 2, 1, 3)},
          'bn1': {'scale': normal(3), 'bias': normal(3)},
          'fc': {'kernel': normal(12, 4), 'bias': normal(4)}}


TARGETS = {'conv1': (-3, -2, -1), 'fc': (-4, -2, -1, 0)}


def test_freeze_mask_hand_case():
  params = {'fc': {'kernel': jnp.array([[0.1, -0.9], [0.5, 0.2]]), 'bias': jnp.ones(2)}}
  mask = inq.freeze_mask(params, {'fc': (-1,)}, 0.5)
  chex.assert_trees_all_equal(mask['fc']['kernel'], jnp.array([[False, True], [True, False]]))
  chex.assert_trees_all_equal(mask['fc']['bias'], jnp.array([False, False]))
  # 0.75 of 4 -> 3 frozen; the previous two stay frozen even if the rest grew larger.
  grown = {'fc': {'kernel': jnp.array([[2.0, -0.9], [0.5, 3.0]]), 'bias': jnp.ones(2)}}
  mask = inq.freeze_mask(grown, {'fc': (-1,)}, 0.75, previous=mask)
  chex.assert_trees_all_equal(mask['fc']['kernel'], jnp.array([[False, True], [True, True]]))


@pytest.mark.parametrize('fraction, expected', [(0.5, 24), (0.75, 36), (0.875, 42), (1.0, 48)])
def test_freeze_mask_counts(fraction, expected):
  mask = inq.freeze_mask(tiny_params(), TARGETS, fraction)
  assert int(mask['conv1']['kernel'].sum()) == int(np.ceil(fraction * 12))
  assert int(mask['fc']['kernel'].sum()) == expected  # ceil(fraction · 48)
  assert not bool(mask['bn1']['scale'].any()) and not bool(mask['fc']['bias'].any())


def test_freeze_mask_jitted_matches_eager():
  params = tiny_params()
  eager = inq.freeze_mask(params, TARGETS, 0.75)
  jitted = jax.jit(lambda p, f: inq.freeze_mask(p, TARGETS, f))(params, 0.75)
  chex.assert_trees_all_equal(eager, jitted)


def test_snap_only_touches_frozen_targeted_weights():
  params = tiny_params()
  mask = inq.freeze_mask(params, TARGETS, 0.5)
  snapped = inq.snap(params, mask, TARGETS)
  for name in TARGETS:
    w, s, m = params[name]['kernel'], snapped[name]['kernel'], mask[name]['kernel']
    assert bool(jnp.all(targets.in_target_set(s[m], TARGETS[name])))
    chex.assert_trees_all_equal(s[~m], w[~m])
  chex.assert_trees_all_equal(snapped['bn1'], params['bn1'])
  chex.assert_trees_all_equal(snapped['fc']['bias'], params['fc']['bias'])


def make_retrain(steps=5):
  """A retrain_fn: SGD with momentum and weight decay on a toy loss, frozen entries masked."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 12)), jnp.float32)

  def loss(p):
    return (jnp.mean((x @ p['fc']['kernel'] + p['fc']['bias']) ** 2)
            + jnp.sum(p['conv1']['kernel'] ** 2))

  def retrain(params, mask):
    tx = freezable(optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.5, momentum=0.9)))
    state = tx.init(params)

    @jax.jit
    def step(p, s):
      grads = jax.grad(loss)(p)
      updates, s = tx.update(grads, s, p, freeze_mask=mask)
      return optax.apply_updates(p, updates), s

    for _ in range(steps):
      new, state = step(params, state)
      # Frozen weights never move, bit for bit; the others do.
      for name in TARGETS:
        m = mask[name]['kernel']
        chex.assert_trees_all_equal(new[name]['kernel'][m], params[name]['kernel'][m])
      params = new
    return params
  return retrain


def test_run_inq_frozen_weights_never_move_and_end_in_the_sets():
  params = tiny_params()
  calls = []
  retrain = make_retrain()

  def recording_retrain(p, mask):
    calls.append(int(mask['fc']['kernel'].sum()))
    before = p
    after = retrain(p, mask)
    moved = after['fc']['kernel'] != before['fc']['kernel']
    assert bool(jnp.any(moved[~mask['fc']['kernel']]))  # the free weights do train
    return after

  final, mask = inq.run_inq(params, TARGETS, recording_retrain)
  assert calls == [24, 36, 42]  # 0.5, 0.75, 0.875 of 48; no retraining once all are frozen
  assert all(bool(mask[n]['kernel'].all()) for n in TARGETS)
  for name in TARGETS:
    assert bool(jnp.all(targets.in_target_set(final[name]['kernel'], TARGETS[name])))
  assert not bool(jnp.all(final['fc']['bias'] == params['fc']['bias']))  # biases keep training


def test_run_inq_zero_free_ends_without_zeros():
  """zero=False: every targeted weight ends on ±2^e of its set, none at 0 (not even the exact
  zeros), and the frozen weights still never move."""
  params = tiny_params()
  params['fc']['kernel'] = params['fc']['kernel'].at[0, 0].set(0.0)
  retrain = make_retrain()
  snapshots = []

  def recording_retrain(p, mask):
    snapshots.append((p, mask))
    return retrain(p, mask)

  final, _ = inq.run_inq(params, TARGETS, recording_retrain, zero=False)
  for name in TARGETS:
    w = final[name]['kernel']
    assert bool(jnp.all(w != 0)) and bool(jnp.all(targets.in_target_set(w, TARGETS[name], False)))
  for p, mask in snapshots:  # frozen values at a step are the final ones
    frozen = mask['fc']['kernel']
    assert bool(jnp.all(p['fc']['kernel'][frozen] == final['fc']['kernel'][frozen]))


def test_zero_frozen():
  updates = {'a': jnp.array([1.0, 2.0, 3.0])}
  out = inq.zero_frozen(updates, {'a': jnp.array([True, False, True])})
  chex.assert_trees_all_equal(out['a'], jnp.array([0.0, 2.0, 0.0]))


def test_schedule_validation():
  with pytest.raises(ValueError):
    inq.run_inq(tiny_params(), TARGETS, lambda p, m: p, schedule=(0.75, 0.5))
