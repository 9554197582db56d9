"""prune.EarlyBirdTracker: once-per-epoch mask tracking on the user's own params."""
import jax
import numpy as np
import pytest

import qprune
from qprune import prune


def _lenet(seed):
  model = qprune.create_model('lenet5', 10)
  return model, qprune.init_variables(model, jax.random.PRNGKey(seed), (28, 28, 1))


def test_stable_after_a_full_window_of_equal_masks():
  model, variables = _lenet(0)
  tracker = prune.EarlyBirdTracker('l1', 0.5, window=3, threshold=0.1)
  assert [tracker.update(variables) for _ in range(4)] == [False, False, True, True]
  assert tracker.stable_at == 3 and tracker.distances[1:] == (0.0, 0.0, 0.0)
  assert np.isnan(tracker.distances[0])
  expected = prune.make_masks(variables, tracker.groups, 'l1', 0.5, 'uniform')
  assert all(np.array_equal(tracker.masks[k], expected[k]) for k in expected)
  small_model, small_variables = prune.shrink(model, variables, tracker.groups, tracker.masks)
  assert qprune.count_params(small_variables['params']) < qprune.count_params(variables['params'])
  assert small_model.apply(small_variables, np.zeros((1, 28, 28, 1), np.uint8)).shape == (1, 10)


def test_changing_masks_are_not_stable_and_bare_params_work():
  tracker = prune.EarlyBirdTracker('l1', 0.5, window=2, threshold=0.05)
  for seed in range(3):  # different inits: unrelated masks
    assert not tracker.update(_lenet(seed)[1]['params'])  # params only (no 'params' key)
  assert min(tracker.distances[1:]) > 0.05 and tracker.stable_at is None
  assert [h['step'] for h in tracker.history] == [1, 2, 3]


def test_pure_step_matches_the_tracker():
  _, variables = _lenet(0)
  groups = prune.derive_groups(variables)
  state, info, masks = prune.tracker_step(prune.EarlyBirdState(), variables, groups, 'l1', 0.5)
  assert info['step'] == 1 and not info['stable'] and set(masks) == {g.name for g in groups}


def test_bad_arguments_are_clear_errors():
  with pytest.raises(prune.TrackerError, match='window'):
    prune.EarlyBirdTracker(window=1)
  with pytest.raises(prune.TrackerError, match='ratio'):
    prune.EarlyBirdTracker(ratio=1.0)
  with pytest.raises(prune.TrackerError, match='dict'):
    prune.EarlyBirdTracker().update([1, 2])
