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
"""
import dataclasses
import functools
from typing import Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune.ops import compile as compile_lib
from qprune.prune.criteria import score
from qprune.prune.groups import Groups
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


@dataclasses.dataclass(frozen=True)
class Candidate:
  criterion: str
  ratio: float
  selection: str

  @property
  def description(self) -> str:
    return f'{self.criterion}/{self.selection}/ratio={self.ratio:g}'


def candidate_grid(criteria: Sequence[str], ratios: Sequence[float],
                   selections: Sequence[str]) -> List[Candidate]:
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


def within_budget(row: dict, max_params: Optional[int] = None,
                  max_macs: Optional[int] = None) -> bool:
  return ((max_params is None or row['params'] <= max_params) and
          (max_macs is None or row['macs'] <= max_macs))


def choose_best(rows: Sequence[dict], *, max_params: Optional[int] = None,
                max_macs: Optional[int] = None) -> int:
  """Index of the best row: highest accuracy (then lowest loss) among rows within the budget.

  rows: dicts with 'accuracy', 'loss', 'params', 'macs'. If no row fits, the cheapest row (by
  params if max_params is set, else MACs) is returned so a run never ends without a model.
  """
  feasible = [i for i, r in enumerate(rows) if within_budget(r, max_params, max_macs)]
  if not feasible:
    key = 'params' if max_params is not None else 'macs'
    return min(range(len(rows)), key=lambda i: rows[i][key])
  return max(feasible, key=lambda i: (rows[i]['accuracy'], -rows[i]['loss']))


class SearchResult(NamedTuple):
  """What `search` found: `rows[best]` is the chosen candidate, `masks[k]` candidate k's masks
  (numpy); unpacks as `best, rows, masks`."""
  best: int
  rows: List[dict]
  masks: List[Dict]

  @property
  def best_masks(self) -> Dict:
    return self.masks[self.best]


def search(model, variables, groups: Groups, candidates: Sequence[Candidate], input_shape,
           bn_images, eval_images, eval_labels, *, eval_valid=None, max_params=None,
           max_macs=None, criterion_kwargs=None, selection_kwargs=None, **data) -> SearchResult:
  """Build, cost and score every candidate; returns a SearchResult (best index, rows, masks).

  input_shape: (H, W, C) of a uint8 image, or an example input with a batch axis (for costs).
  rows[k] = {'description', 'criterion', 'ratio', 'selection', 'params', 'macs', 'accuracy',
  'loss'} (JSON-able). data: model-free extras for criteria (batches=, rng=).
  criterion_kwargs / selection_kwargs: see `candidate_masks`.
  """
  groups = tuple(groups)
  masks = candidate_masks(variables, groups, candidates, model=model,
                          criterion_kwargs=criterion_kwargs, selection_kwargs=selection_kwargs,
                          **data)
  metrics = jax.device_get(evaluate_candidates(model, groups, variables, stack_masks(masks),
                                               bn_images, eval_images, eval_labels, eval_valid))
  rows = []
  for k, (cand, m) in enumerate(zip(candidates, masks)):
    cost = mask_cost(model, variables, groups, m, input_shape)
    rows.append({'description': cand.description, 'criterion': cand.criterion,
                 'ratio': cand.ratio, 'selection': cand.selection, **cost,
                 'accuracy': float(metrics['accuracy'][k]), 'loss': float(metrics['loss'][k])})
  best = choose_best(rows, max_params=max_params, max_macs=max_macs)
  if not within_budget(rows[best], max_params, max_macs):
    from qprune import errors  # pylint: disable=g-import-not-at-top
    errors.warn(f'no pruning candidate meets the budget (max_params={max_params}, '
                f'max_macs={max_macs}); chose the cheapest, {rows[best]["description"]} with '
                f'{rows[best]["params"]} params and {rows[best]["macs"]} MACs: raise the ratios '
                f'(prune.search_ratios) or loosen the budget')
  return SearchResult(best, rows, [jax.tree_util.tree_map(np.asarray, m) for m in masks])
