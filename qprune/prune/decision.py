"""Few-epoch pruning decision: mask distances and the Early-Bird stop rule (You et al. 2020).

After each pretraining epoch, compute the masks at the target ratio and call `early_bird_step`.
The state keeps the last `window` masks (FIFO); the decision is stable when every pairwise
normalized Hamming distance inside the full window is <= `threshold` (paper: 5 masks, 0.1).
Everything is pure: the caller threads `EarlyBirdState` through the epochs.
"""
import dataclasses
import itertools
from typing import NamedTuple

import numpy as np

# When pretraining stops: at the first Early-Bird-stable epoch, after a fixed number of epochs,
# or after all of them (the decision after full training).
STOP_RULES = ('early_bird', 'fixed', 'full')


def mask_distance(a, b) -> float:
  """Normalized Hamming distance: fraction of channels (over all groups) whose keep bit differs.

  a, b: {group: bool[C]} with the same groups and sizes. 0 = identical, 1 = complementary.
  """
  if set(a) != set(b):
    raise ValueError(f'masks over different groups: {sorted(a)} vs {sorted(b)}')
  differ = sum(int(np.sum(np.asarray(a[k], bool) != np.asarray(b[k], bool))) for k in a)
  total = sum(int(np.asarray(a[k]).size) for k in a)
  return differ / max(total, 1)


@dataclasses.dataclass(frozen=True)
class EarlyBirdRule:
  """Stable when the `window` most recent masks are all within `threshold` of each other."""
  window: int = 5
  threshold: float = 0.1


class EarlyBirdState(NamedTuple):
  masks: tuple = ()                 # last `window` masks, oldest first (host numpy)
  distances: tuple[float, ...] = ()  # per step: distance to the previous mask (nan for the first)
  stable_at: int | None = None    # 1-based step at which the rule first fired


def _host(masks):
  return {k: np.asarray(v, bool) for k, v in masks.items()}


def max_pairwise_distance(masks_seq) -> float:
  return max((mask_distance(a, b) for a, b in itertools.combinations(masks_seq, 2)), default=0.0)


def early_bird_step(state: EarlyBirdState, masks, rule: EarlyBirdRule = EarlyBirdRule()):
  """Push this epoch's masks; returns (new_state, info).

  info: {'distance': to the previous masks (nan at the first step), 'window_max': max pairwise
  distance in the window, 'stable': window full and window_max <= threshold, 'step': 1-based}.
  `stable_at` remembers the first stable step (the Early-Bird epoch).
  """
  masks = _host(masks)
  previous = state.masks[-1] if state.masks else None
  distance = mask_distance(previous, masks) if previous is not None else float('nan')
  window = (state.masks + (masks,))[-rule.window:]
  window_max = max_pairwise_distance(window)
  stable = len(window) == rule.window and window_max <= rule.threshold
  step = len(state.distances) + 1
  stable_at = state.stable_at if state.stable_at is not None else (step if stable else None)
  new_state = EarlyBirdState(window, state.distances + (distance,), stable_at)
  return new_state, {'distance': distance, 'window_max': window_max, 'stable': stable,
                     'step': step}
