"""Selection: scores {group: f32[C]} + prune ratio -> masks {group: bool[C]} (True = keep).

`ratio` is the fraction of channels to *remove*.

* `uniform`: every group keeps its top max(1, round((1 - ratio) * C)) channels.
* `global`: one threshold over all channels of all groups, after normalizing each group's scores
  by their root mean square, s_c / sqrt(mean_c s_c^2). Raw scores are not comparable across layers
  (filter norms grow with fan-in, gradients shrink with depth); RMS normalization makes a channel of
  average importance score ~1 in every layer whatever its width (Molchanov et al. normalize by the
  L2 norm, which would push wide layers to be pruned more). `normalize='none'` gives Network
  Slimming's raw global |gamma| threshold. The round(ratio * total) lowest channels are removed.

Both then enforce that no layer is emptied: for every prefix length L of a group (the residual
stream's stages), the best channel of the shortest prefix is kept, which keeps >= 1 channel in
every prefix. Ties break towards the lower channel index (stable sort). Pure jnp; jittable.
"""
import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from qprune.errors import UserError
from qprune.models import interop
from qprune.prune.criteria import score
from qprune.prune.group_types import Groups
from qprune.prune.masks import check_groups

SELECTIONS: dict[str, Callable] = {}


class SelectionError(UserError):
  """Bad selection arguments: an unknown selection, a ratio outside [0, 1), bad per-layer
  controls."""


def register_selection(name: str):
  def wrap(fn):
    SELECTIONS[name] = fn
    return fn
  return wrap


def select(name: str, scores, groups: Groups, ratio: float, *, ratios=None, round_to: int = 1,
           max_ratio: float | None = None, **kwargs):
  """Masks from scores. Per-layer controls (Torch-Pruning's), for every selection:

  ratios: {group name or producer path: ratio} for those groups (the rest use `ratio`; under
    `global` they leave the global pool and keep their own fraction).
  round_to: kept widths rounded up to a multiple (capped at the group size).
  max_ratio: no group loses more than this fraction of its channels.
  """
  if name not in SELECTIONS:
    raise SelectionError(f'unknown selection {name!r}; choose one of {sorted(SELECTIONS)}')
  for what, r in [('prune ratio', ratio)] + [(f'ratios[{k!r}]', v) for k, v in
                                               (ratios or {}).items()]:
    if not 0.0 <= r < 1.0:
      raise SelectionError(f'{what} must be in [0, 1), got {r}')
  if max_ratio is not None and not 0.0 <= max_ratio < 1.0:
    raise SelectionError(f'max_ratio must be in [0, 1), got {max_ratio}')
  if not isinstance(round_to, int) or round_to < 1:
    raise SelectionError(f'round_to must be an integer >= 1, got {round_to!r}')
  if any(g.block > 1 for g in groups):  # GroupNorm channels: select whole groups, then expand
    blocked = tuple(_per_block(g) for g in groups)
    reduced = {g.name: scores[g.name].reshape(-1, g.block).mean(-1) for g in groups}
    masks = select(name, reduced, blocked, ratio, ratios=ratios,
                   round_to=round_to, max_ratio=max_ratio, **kwargs)
    return {g.name: jnp.repeat(masks[g.name], g.block) for g in groups}
  own = _own_ratios(groups, ratios or {})
  pooled = tuple(g for g in groups if g.name not in own)
  masks = {}
  if pooled:
    masks.update(SELECTIONS[name](scores, pooled, ratio, **kwargs))
  for g in groups:
    if g.name in own:
      masks[g.name] = _top_k_mask(scores[g.name], _keep_count(g.size, own[g.name]))
  if round_to > 1 or max_ratio is not None or own:
    masks = {g.name: _adjust(masks[g.name], scores[g.name], g, round_to, max_ratio)
             for g in groups}
  return {g.name: masks[g.name] for g in groups}


def _per_block(group):
  """The group with one entry per block of `group.block` channels (GroupNorm groups)."""
  if group.block == 1:
    return group
  shrink = lambda slots: tuple(dataclasses.replace(s, length=s.length // group.block)
                               for s in slots)
  return dataclasses.replace(group, size=group.size // group.block,
                             producers=shrink(group.producers), norms=(), consumers=(),
                             channel_norms=())


def _own_ratios(groups: Groups, ratios) -> dict[str, float]:
  """{group name: ratio} of the groups named (by group or producer path) in `ratios`."""
  out, used = {}, set()
  for g in groups:
    for key in [g.name] + [s.path for s in g.producers]:
      if key in ratios:
        out[g.name] = float(ratios[key])
        used.add(key)
        break
  unknown = sorted(set(ratios) - used)
  if unknown:
    raise SelectionError(f'ratios: no group or producer {unknown[0]!r}; groups are '
                     f'{[g.name for g in groups]}')
  return out


def _keep_count(size: int, ratio: float) -> int:
  return max(1, int(round((1.0 - ratio) * size)))


def _adjust(mask, scores, group, round_to: int, max_ratio):
  """Kept count raised to >= (1 - max_ratio) * C, rounded up to round_to; top by score."""
  size = group.size
  count = jnp.sum(mask.astype(jnp.int32))
  if max_ratio is not None:
    count = jnp.maximum(count, int(np.ceil((1.0 - max_ratio) * size - 1e-9)))
  if round_to > 1:
    count = jnp.minimum(size, ((count + round_to - 1) // round_to) * round_to)
  order = jnp.argsort(-scores, stable=True)
  rank = jnp.zeros((size,), jnp.int32).at[order].set(jnp.arange(size, dtype=jnp.int32))
  # the selection's masks are top-k by score already, so raising k only adds channels
  return _keep_nonempty(mask | (rank < count), scores, group)


def _top_k_mask(scores, k: int):
  """bool[C], True on the k highest scores (ties: lower index first)."""
  order = jnp.argsort(-scores, stable=True)
  return jnp.zeros(scores.shape, bool).at[order[:k]].set(True)


def _keep_nonempty(mask, scores, group):
  """Force-keep the best channel of the group's shortest prefix (so every prefix keeps >= 1)."""
  shortest = group.prefix_lengths[0]
  best = jnp.argmax(scores[:shortest])
  return mask.at[best].set(True)


@register_selection('uniform')
def select_uniform(scores, groups: Groups, ratio: float):
  masks = {}
  for g in groups:
    keep = _keep_count(g.size, ratio)
    masks[g.name] = _keep_nonempty(_top_k_mask(scores[g.name], keep), scores[g.name], g)
  return masks


def rms_normalize(s, eps: float = 1e-12):
  """s / sqrt(mean(s^2)): scale-free per-layer scores."""
  return s / (jnp.sqrt(jnp.mean(jnp.square(s))) + eps)


NORMALIZERS = {'rms': rms_normalize, 'none': lambda s: s}


@register_selection('global')
def select_global(scores, groups: Groups, ratio: float, normalize: str = 'rms'):
  norm = NORMALIZERS[normalize]
  normalized = [norm(scores[g.name].astype(jnp.float32)) for g in groups]
  flat = jnp.concatenate(normalized)
  keep = flat.shape[0] - int(round(ratio * flat.shape[0]))
  kept = _top_k_mask(flat, keep)
  masks, start = {}, 0
  for g, s in zip(groups, normalized):
    masks[g.name] = _keep_nonempty(kept[start:start + g.size], s, g)
    start += g.size
  return masks


def make_masks(variables, groups: Groups, criterion: str, ratio: float, selection: str = 'uniform',
               *, criterion_kwargs=None, selection_kwargs=None, ratios=None, round_to: int = 1,
               max_ratio: float | None = None, **data):
  """score -> select in one call. data: model=, batches=, rng= for data-driven criteria.

  variables: Flax variables (or bare params), or an nnx.Module (then it is also the `model`).
  ratios / round_to / max_ratio: per-layer controls, see `select` (under GroupNorm a group's
  channels are kept or removed together: round_to then counts GroupNorm groups)."""
  if interop.is_nnx(variables):
    data['model'], variables = interop.split(variables)
  elif interop.is_nnx(data.get('model')):
    data['model'], variables = interop.split(data['model'])
  variables = interop.as_variables(variables, 'variables')
  check_groups(groups, variables)
  scores = score(criterion, variables, groups, **data, **(criterion_kwargs or {}))
  return select(selection, scores, groups, ratio, ratios=ratios, round_to=round_to,
                max_ratio=max_ratio, **(selection_kwargs or {}))
