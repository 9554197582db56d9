"""Early-Bird mask tracking for the user's own training loop: one call per epoch.

    tracker = prune.EarlyBirdTracker(criterion='l1', ratio=0.5)
    for epoch in range(epochs):
      params = train_one_epoch(params)              # the user's loop
      if tracker.update({'params': params, 'batch_stats': stats}):   # or just params
        break                                       # the pruning decision is stable
    small_model, small_variables = prune.shrink(model, variables, tracker.groups, tracker.masks)

Each `update` computes this epoch's masks with `make_masks` (criterion, ratio, selection) and
pushes them through `early_bird_step` (You et al. 2020: stable when the last `window` masks are
pairwise within `threshold` normalized Hamming distance). The channel groups are derived from the
first variables seen (`derive_groups`) unless given. The pure core, `tracker_step`, threads an
`EarlyBirdState` explicitly for users who prefer no mutable object.
"""
from collections.abc import Mapping

from qprune.errors import UserError
from qprune.models import interop
from qprune.prune.decision import EarlyBirdRule, EarlyBirdState, early_bird_step
from qprune.prune.groups import Groups, derive_groups
from qprune.prune.selection import make_masks


class TrackerError(UserError):
  """Bad tracker arguments or variables (e.g. no 'params')."""


def as_variables(params_or_variables) -> dict:
  """{'params': ...} for a bare Flax params tree; variables are returned unchanged; an
  nnx.Module gives its variables."""
  if interop.is_nnx(params_or_variables):
    return interop.split(params_or_variables)[1]
  if not isinstance(params_or_variables, Mapping):
    raise TrackerError(f'expected Flax params or variables (a dict), got '
                       f'{type(params_or_variables).__name__}')
  if 'params' in params_or_variables:
    return dict(params_or_variables)
  return {'params': params_or_variables}


def tracker_step(state: EarlyBirdState, variables, groups: Groups, criterion: str, ratio: float,
                 selection: str = 'uniform', rule: EarlyBirdRule = EarlyBirdRule(),
                 **data) -> tuple[EarlyBirdState, dict, dict]:
  """(new state, info, masks): this epoch's masks and the Early-Bird rule's verdict.

  info is `early_bird_step`'s ({'distance', 'window_max', 'stable', 'step'}) plus 'stable_at'.
  data: model=, batches=, rng= for data-driven criteria (see `make_masks`).
  """
  masks = make_masks(as_variables(variables), groups, criterion, ratio, selection, **data)
  state, info = early_bird_step(state, masks, rule)
  return state, {**info, 'stable_at': state.stable_at}, masks


class EarlyBirdTracker:
  """Tracks channel masks across epochs; `update(...)` returns True once the decision is stable.

  criterion/ratio/selection: as `prune.make_masks` ('l1', 'bn_gamma', ... ; fraction removed;
  'uniform' or 'global'). window/threshold: the Early-Bird rule (paper: 5, 0.1).
  groups: channel groups (default: derived at the first update: by the zoo's layer names, or
    traced when `model=` and `example_input=` are given or the update gets an nnx.Module).
  model: the Linen model of the variables (data-driven criteria need it; so does tracing).
  """

  def __init__(self, criterion: str = 'l1', ratio: float = 0.5, selection: str = 'uniform', *,
               window: int = 5, threshold: float = 0.1, groups: Groups | None = None,
               residual: bool = False, model=None, example_input=None):
    if window < 2:
      raise TrackerError(f'window must be >= 2 masks, got {window}')
    if not 0.0 <= threshold <= 1.0:
      raise TrackerError(f'threshold is a fraction of channels in [0, 1], got {threshold}')
    if not 0.0 <= ratio < 1.0:
      raise TrackerError(f'prune ratio must be in [0, 1), got {ratio}')
    self.criterion, self.ratio, self.selection = criterion, ratio, selection
    self.rule = EarlyBirdRule(window=window, threshold=threshold)
    self.groups, self.residual = groups, residual
    self.model, self.example_input = model, example_input
    self.state = EarlyBirdState()
    self.masks: dict | None = None
    self.history = []

  def update(self, params_or_variables, **data) -> bool:
    """Pushes this epoch's masks; True when the window is full and stable (stays True after)."""
    if interop.is_nnx(params_or_variables):
      data.setdefault('model', interop.split(params_or_variables)[0])
      if self.groups is None:
        self.groups = derive_groups(params_or_variables, example_input=self._example(),
                                    residual=self.residual)
    variables = as_variables(params_or_variables)
    if self.model is not None:
      data.setdefault('model', self.model)
    if self.groups is None:
      self.groups = (derive_groups(variables, model=self.model, example_input=self._example(),
                                   residual=self.residual) if self.model is not None else
                     derive_groups(variables, residual=self.residual))
    self.state, info, self.masks = tracker_step(self.state, variables, self.groups, self.criterion,
                                                self.ratio, self.selection, self.rule, **data)
    self.history.append(info)
    return self.stable

  def _example(self):
    if self.example_input is None:
      raise TrackerError('tracing the channel groups of this model needs '
                         'EarlyBirdTracker(example_input=...) (an input with a batch axis), or '
                         'pass groups=')
    return self.example_input

  @property
  def stable(self) -> bool:
    """Whether the rule has fired at some epoch so far."""
    return self.state.stable_at is not None

  @property
  def stable_at(self) -> int | None:
    """1-based update at which the decision first became stable (the Early-Bird epoch)."""
    return self.state.stable_at

  @property
  def distances(self) -> tuple[float, ...]:
    """Per update: mask distance to the previous update's masks (nan for the first)."""
    return self.state.distances
