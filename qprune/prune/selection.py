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
from typing import Callable, Dict

import jax.numpy as jnp

from qprune.prune.criteria import score
from qprune.prune.groups import Groups

SELECTIONS: Dict[str, Callable] = {}


def register_selection(name: str):
  def wrap(fn):
    SELECTIONS[name] = fn
    return fn
  return wrap


def select(name: str, scores, groups: Groups, ratio: float, **kwargs):
  if name not in SELECTIONS:
    raise ValueError(f'unknown selection {name!r}; choose one of {sorted(SELECTIONS)}')
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f'prune ratio must be in [0, 1), got {ratio}')
  return SELECTIONS[name](scores, groups, ratio, **kwargs)


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
    keep = max(1, int(round((1.0 - ratio) * g.size)))
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
               *, criterion_kwargs=None, selection_kwargs=None, **data):
  """score -> select in one call. data: model=, batches=, rng= for data-driven criteria."""
  scores = score(criterion, variables, groups, **data, **(criterion_kwargs or {}))
  return select(selection, scores, groups, ratio, **(selection_kwargs or {}))

