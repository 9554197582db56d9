"""Vmapped candidate search: score K candidate masks in one compiled evaluation.

A candidate is (criterion, ratio, selection) -> masks. `evaluate_candidates` takes the K masks
stacked ({group: bool[K, C]}) and, per candidate, in one jit(vmap(...)):
  1. re-estimates every BatchNorm's statistics on a few training batches: train-mode forward of
     the masked model, per batch the mean and (biased) variance of each BN input, averaged over
     batches (a precise-BN estimate; pruning shifts every downstream distribution, so the
     pretraining running averages would misjudge all candidates);
  2. evaluates eval-mode accuracy and mean cross-entropy on held-out images with those statistics.
Masks are applied as activation gates (`apply_with_gates`), so weights stay unbatched and XLA
folds K into the batch dimension; it compiles once for all K (shapes do not depend on the masks).

Images are pre-batched: bn_images uint8[B, N, H, W, C]; eval_images uint8[E, M, H, W, C] with
eval_labels int[E, M] and optionally eval_valid bool[E, M] (`qprune.train.evaluation.
pad_to_batches`: every held-out example counts once). The batches run sequentially (lax.map, in
`evaluation.batch_sums`) to bound memory: K * M images are live at a time.

`search(..., method='race')` scores the candidates by successive elimination instead (racing,
Maron & Moore 1994): every candidate within the budget sees the held-out batches in the same
order, and after 2, 4, 8, ... batches each one the current leader beats significantly is dropped.
Two candidates are compared on the same examples, so the test is on paired differences
d_i = correct_leader,i - correct_c,i: c goes when mean(d) > z * std(d) / sqrt(n) (z = RACE_Z = 4,
conservative because a candidate is tested up to log2(E) times). A clearly worse candidate costs
a couple of batches instead of the whole split, and candidates outside the budget are not scored
at all; only the survivors see every batch. The race stops once one candidate is left, so its
row's accuracy is over the `images` it was scored on. The choice is the exhaustive one whenever
no test drops the candidate that is best on the whole split.
"""
import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from qprune.models import interop
from qprune.ops import compile as compile_lib
from qprune.prune.criteria import score
from qprune.prune.group_types import Groups
from qprune.prune.masks import apply_with_gates, stack_masks
from qprune.prune.selection import select
from qprune.prune.shrink import mask_cost
from qprune.train import evaluation


def batched(x, batch_size: int):
  """[N, ...] -> [N // batch_size, batch_size, ...] (the remainder is dropped)."""
  n = (x.shape[0] // batch_size) * batch_size
  if n == 0:
    raise ValueError(f'need at least {batch_size} examples, got {x.shape[0]}')
  return x[:n].reshape((n // batch_size, batch_size) + x.shape[1:])


def _float_gates(masks):
  return None if masks is None else {k: jnp.asarray(m, jnp.float32) for k, m in masks.items()}


def reestimate_bn_stats(model, groups: Groups, variables, masks, bn_images):
  """batch_stats of the masked model: mean over batches of each BN input's batch mean / var.

  masks: {group: bool[C]} or None (unmasked). bn_images: uint8[B, N, H, W, C].
  """
  gates = _float_gates(masks)

  def one_batch(images):
    stats = {}
    apply_with_gates(model, variables, images, groups, gates, train=True, bn_stats=stats)
    return stats

  per_batch = jax.lax.map(one_batch, bn_images)
  flat = {}
  for path, (mean, var) in per_batch.items():
    flat[f'{path}/mean'] = mean.mean(axis=0)
    flat[f'{path}/var'] = var.mean(axis=0)
  return traverse_util.unflatten_dict(flat, sep='/')


def evaluate_masks(model, groups: Groups, variables, masks, bn_images, eval_images, eval_labels,
                   eval_valid=None):
  """{'accuracy', 'loss'} (scalars) of one candidate; see the module docstring.

  bn_images=None keeps the variables' own batch statistics. eval_valid: bool [E, M] marking the
  real examples of padded batches (`qprune.train.evaluation.pad_to_batches`); default all.
  """
  gates = _float_gates(masks)
  if bn_images is not None:
    variables = {'params': variables['params'],
                 'batch_stats': reestimate_bn_stats(model, groups, variables, masks, bn_images)}
  sums = evaluation.batch_sums(lambda x: apply_with_gates(model, variables, x, groups, gates),
                               eval_images, eval_labels, eval_valid)
  return evaluation.accuracy_and_loss(sums)


evaluate_masks_jit = compile_lib.jit(evaluate_masks, static_argnums=(0, 1))


@compile_lib.jit(static_argnums=(0, 1))
def evaluate_candidates(model, groups: Groups, variables, stacked_masks, bn_images, eval_images,
                        eval_labels, eval_valid=None):
  """evaluate_masks for K candidates at once: stacked_masks {group: bool[K, C]} -> {metric: [K]}."""
  one = functools.partial(evaluate_masks, model, groups, variables)
  return jax.vmap(one, in_axes=(0, None, None, None, None))(stacked_masks, bn_images,
                                                               eval_images, eval_labels,
                                                               eval_valid)


SEARCH_METHODS = ('exhaustive', 'race')
RACE_Z = 4.0

reestimate_bn_stats_jit = compile_lib.jit(reestimate_bn_stats, static_argnums=(0, 1))


@compile_lib.jit(static_argnums=(0, 1))
def _batch_outcomes(model, groups: Groups, variables, masks, images, labels):
  """Per example of one batch: (correct bool[M], cross-entropy f32[M]) of the masked model."""
  logits = apply_with_gates(model, variables, images, groups, _float_gates(masks))
  return (jnp.argmax(logits, -1) == labels,
          optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _significantly_worse(leader: np.ndarray, other: np.ndarray, z: float) -> bool:
  """Whether `other` (bool correctness per example) is worse than `leader` on the same examples
  by more than z standard errors of the paired difference."""
  n = leader.size
  if n < 2:
    return False
  diff = (int(leader.sum()) - int(other.sum())) / n
  disagree = int(np.count_nonzero(leader != other)) / n  # mean of d_i^2, d_i in {-1, 0, 1}
  var = max(disagree - diff * diff, 0.0) * n / (n - 1)
  return diff > z * np.sqrt(var / n)


def race(model, groups: Groups, variables, masks: Sequence, bn_images, eval_images, eval_labels,
         eval_valid=None, *, among: Sequence[int] | None = None, z: float = RACE_Z):
  """Successive elimination over the candidates `among` (default all); see the module docstring.

  masks: K candidates' {group: bool[C]}. Returns (metrics, best): metrics[k] = {'accuracy',
  'loss', 'images'} over the examples candidate k was scored on (None for candidates not in
  `among`); best: the index the race picked (highest accuracy, then lowest loss, among those
  still running at the end). Two compiled functions (BN re-estimation, one batch's outcomes),
  each compiled once whatever K and the split size.
  """
  groups = tuple(groups)
  alive = list(range(len(masks)) if among is None else among)
  if not alive:
    raise ValueError('race: no candidates to score')
  valid = (np.ones(eval_labels.shape, bool) if eval_valid is None
           else np.asarray(jax.device_get(eval_valid), bool))
  scored = {}
  for k in alive:
    v = variables
    if bn_images is not None:
      v = {'params': variables['params'],
           'batch_stats': reestimate_bn_stats_jit(model, groups, variables, masks[k], bn_images)}
    scored[k] = v
  correct = {k: [] for k in alive}
  loss = {k: 0.0 for k in alive}

  def leader():
    return max(alive, key=lambda k: (sum(int(c.sum()) for c in correct[k]), -loss[k]))

  for b in range(eval_labels.shape[0]):
    outcomes = {k: _batch_outcomes(model, groups, scored[k], masks[k], eval_images[b],
                                   eval_labels[b]) for k in alive}
    for k, (right, losses) in jax.device_get(outcomes).items():
      correct[k].append(right[valid[b]])
      loss[k] += float(losses[valid[b]].sum())
    seen = b + 1
    if len(alive) > 1 and seen >= 2 and seen & (seen - 1) == 0:  # after 2, 4, 8, ... batches
      best = leader()
      reference = np.concatenate(correct[best])
      alive = [k for k in alive if k == best or
               not _significantly_worse(reference, np.concatenate(correct[k]), z)]
    if len(alive) == 1:
      break
  metrics: list[dict | None] = [None] * len(masks)
  for k, parts in correct.items():
    n = sum(c.size for c in parts)
    metrics[k] = {'accuracy': sum(int(c.sum()) for c in parts) / max(n, 1),
                  'loss': loss[k] / max(n, 1), 'images': n}
  return metrics, leader()


@dataclasses.dataclass(frozen=True)
class Candidate:
  criterion: str
  ratio: float
  selection: str

  @property
  def description(self) -> str:
    return f'{self.criterion}/{self.selection}/ratio={self.ratio:g}'


def candidate_grid(criteria: Sequence[str], ratios: Sequence[float],
                   selections: Sequence[str]) -> list[Candidate]:
  return [Candidate(c, float(r), s) for c in criteria for s in selections for r in ratios]


def candidate_masks(variables, groups: Groups, candidates: Sequence[Candidate], *,
                    criterion_kwargs=None, selection_kwargs=None, **data):
  """Masks of every candidate; each criterion is scored once. data: model=, batches=, rng=.

  criterion_kwargs: options for every criterion (e.g. aggregate='mean'); selection_kwargs:
  per-layer controls for every selection (ratios=, round_to=, max_ratio=; see `select`)."""
  scores = {c: score(c, variables, groups, **data, **(criterion_kwargs or {}))
            for c in {c.criterion for c in candidates}}
  return [select(c.selection, scores[c.criterion], groups, c.ratio, **(selection_kwargs or {}))
          for c in candidates]


def within_budget(row: dict, max_params: int | None = None,
                  max_macs: int | None = None) -> bool:
  return ((max_params is None or row['params'] <= max_params) and
          (max_macs is None or row['macs'] <= max_macs))


def choose_best(rows: Sequence[dict], *, max_params: int | None = None,
                max_macs: int | None = None) -> int:
  """Index of the best row: highest accuracy (then lowest loss) among rows within the budget.

  rows: dicts with 'accuracy', 'loss', 'params', 'macs'. If no row fits, the cheapest row (by
  params if max_params is set, else MACs) is returned so a run never ends without a model.
  """
  feasible = [i for i, r in enumerate(rows) if within_budget(r, max_params, max_macs)]
  if not feasible:
    return _cheapest(rows, max_params)
  return max(feasible, key=lambda i: (rows[i]['accuracy'], -rows[i]['loss']))


def _cheapest(rows: Sequence[dict], max_params: int | None) -> int:
  """The fallback when no row meets the budget: fewest params if they are budgeted, else MACs."""
  key = 'params' if max_params is not None else 'macs'
  return min(range(len(rows)), key=lambda i: rows[i][key])


class SearchResult(NamedTuple):
  """What `search` found: `rows[best]` is the chosen candidate, `masks[k]` candidate k's masks
  (numpy); unpacks as `best, rows, masks`."""
  best: int
  rows: list[dict]
  masks: list[dict]

  @property
  def best_masks(self) -> dict:
    return self.masks[self.best]


@interop.accepts_module
def search(model, variables, groups: Groups, candidates: Sequence[Candidate], input_shape,
           bn_images, eval_images, eval_labels, *, eval_valid=None, max_params=None,
           max_macs=None, criterion_kwargs=None, selection_kwargs=None,
           method: str = 'exhaustive', **data) -> SearchResult:
  """Build, cost and score every candidate; returns a SearchResult (best index, rows, masks).

  input_shape: (H, W, C) of a uint8 image, or an example input with a batch axis (for costs).
  rows[k] = {'description', 'criterion', 'ratio', 'selection', 'params', 'macs', 'accuracy',
  'loss', 'images'} (JSON-able; 'images': held-out examples scored). data: model-free extras for
  criteria (batches=, rng=). criterion_kwargs / selection_kwargs: see `candidate_masks`.
  method: 'exhaustive' (every candidate on every example, one vmapped evaluation) or 'race'
  (successive elimination, candidates outside the budget unscored: accuracy/loss None).
  """
  if method not in SEARCH_METHODS:
    raise ValueError(f'unknown search method {method!r}; choose one of {SEARCH_METHODS}')
  groups = tuple(groups)
  masks = candidate_masks(variables, groups, candidates, model=model,
                          criterion_kwargs=criterion_kwargs, selection_kwargs=selection_kwargs,
                          **data)
  rows = [{'description': cand.description, 'criterion': cand.criterion, 'ratio': cand.ratio,
           'selection': cand.selection, **mask_cost(model, variables, groups, m, input_shape)}
          for cand, m in zip(candidates, masks)]
  if method == 'exhaustive':
    stacked = jax.device_get(evaluate_candidates(model, groups, variables, stack_masks(masks),
                                                 bn_images, eval_images, eval_labels,
                                                 eval_valid))
    images = int(np.asarray(jax.device_get(eval_valid)).sum() if eval_valid is not None
                 else np.prod(eval_labels.shape))
    for k, row in enumerate(rows):
      row.update(accuracy=float(stacked['accuracy'][k]), loss=float(stacked['loss'][k]),
                 images=images)
    best = choose_best(rows, max_params=max_params, max_macs=max_macs)
  else:
    among = ([k for k, r in enumerate(rows) if within_budget(r, max_params, max_macs)] or
             [_cheapest(rows, max_params)])
    raced, best = race(model, groups, variables, masks, bn_images, eval_images, eval_labels,
                       eval_valid, among=among)
    for row, metrics in zip(rows, raced):
      row.update(metrics or {'accuracy': None, 'loss': None, 'images': 0})
  if not within_budget(rows[best], max_params, max_macs):
    from qprune import errors  # pylint: disable=g-import-not-at-top
    errors.warn(f'no pruning candidate meets the budget (max_params={max_params}, '
                f'max_macs={max_macs}); chose the cheapest, {rows[best]["description"]} with '
                f'{rows[best]["params"]} params and {rows[best]["macs"]} MACs: raise the ratios '
                f'(prune.search_ratios) or loosen the budget')
  return SearchResult(best, rows, [jax.tree_util.tree_map(np.asarray, m) for m in masks])
