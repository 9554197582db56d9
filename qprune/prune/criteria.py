"""Channel importance criteria: variables (+ data) -> scores {group: f32[C]}; higher = keep.

Every criterion has the signature
  fn(variables, groups, *, model=None, batches=None, rng=None, **options) -> {group: f32[C]}
where `batches = (images uint8[B, N, H, W, C], labels int[B, N])` (B batches of N images) is only
read by data-driven criteria. Registered in `CRITERIA`; `score(name, ...)` dispatches.

A group's score sums over its members (a residual channel spans several layers; member with
prefix length L adds into entries [:L]; a member at an offset after a concatenation contributes
its own slice).

Group aggregation (`aggregate='sum'|'mean'|'max'`, DepGraph's group importance): `l1` then
scores a channel over *every* coupled slice (producer filters, BN |gamma|, consumers' input
slices), `bn_gamma` over every BN of the group, `attention` passes it to its base criterion; each
member's vector is first divided by its mean so that wide fan-ins do not dominate. `taylor` is
group-level already (one gate per group: its gradient sums every gated member) and `random` has
no members to aggregate.

* `l1`       Li et al. 2017: s_c = sum over producers of ||W[..., c]||_1 (the filter's L1 norm).
* `bn_gamma` Network Slimming (Liu et al. 2017): s_c = sum over the group's BNs of |gamma_c|;
             train with `l1_gamma_penalty` added to the loss. Groups without a BN (dense hidden
             units) fall back to `l1`.
* `taylor`   Molchanov et al. 2017, first order: zeroing channel c changes the loss by about
             -sum_{n,h,w} a * dL/da. With a multiplicative gate g_c = 1 on the channel's
             activation, dL/dg_c = sum_{n,h,w} a * dL/da, so s_c = |mean over batches of
             dL/dg_c| (loss = mean cross-entropy of each batch; eval-mode BN). Gating the BN output
             before ReLU gives the same value as gating after it (ReLU is positively homogeneous).
* `random`   uniform in [0, 1), seeded by `rng`: the baseline every criterion must beat.
* `attention` channel attention, squeeze-and-excitation style (Hu et al. 2018) — see
             `attention_scores`.
"""
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from qprune.ops import compile as compile_lib
from qprune.prune.group_types import Groups
from qprune.prune.masks import apply_with_gates

Scores = dict[str, jax.Array]
CRITERIA: dict[str, Callable[..., Scores]] = {}
# The criteria computed from the weights alone: they read no training batches.
DATA_FREE = ('l1', 'bn_gamma', 'random')


def register_criterion(name: str):
  def wrap(fn):
    CRITERIA[name] = fn
    return fn
  return wrap


def score(name: str, variables, groups: Groups, **kwargs) -> Scores:
  """Scores of criterion `name` (see module docstring)."""
  if name not in CRITERIA:
    raise ValueError(f'unknown criterion {name!r}; choose one of {sorted(CRITERIA)}')
  return CRITERIA[name](variables, groups, **kwargs)


def _modules(variables):
  return traverse_util.flatten_dict(variables['params'], sep='/')


def _accumulate(size, parts):
  """Sum of per-member vectors, member i of length L_i added into entries [:L_i]."""
  total = jnp.zeros((size,), jnp.float32)
  for part in parts:
    total = total.at[:part.shape[0]].add(part.astype(jnp.float32))
  return total


def _part(vector, slot):
  """The member's slice of a layer-axis vector (its offset after a concatenation)."""
  return vector[slot.offset:slot.offset + slot.length]


def _normalized(v):
  """A member's vector over its mean, so members of different fan-in weigh alike in a group."""
  v = v.astype(jnp.float32)
  return v / (jnp.mean(v) + 1e-12)


def prefix_mean(size, parts):
  """Mean of per-member vectors, prefix-aligned: entry c averages the members that cover it."""
  total = _accumulate(size, parts)
  count = _accumulate(size, [jnp.ones_like(p) for p in parts])
  return total / jnp.maximum(count, 1.0)


AGGREGATES = ('sum', 'mean', 'max')


def _aggregate(size, parts, how: str):
  """Group aggregation of per-member vectors (prefix-aligned), each normalized by its mean."""
  if how not in AGGREGATES:
    raise ValueError(f'unknown aggregate {how!r}; choose one of {AGGREGATES} (or None)')
  parts = [_normalized(p) for p in parts]
  if how == 'max':
    total = jnp.zeros((size,), jnp.float32)
    for part in parts:
      total = total.at[:part.shape[0]].max(part)
    return total
  return prefix_mean(size, parts) if how == 'mean' else _accumulate(size, parts)


def _filter_l1(params, path):
  kernel = params[f'{path}/kernel']
  return jnp.abs(kernel).sum(axis=tuple(range(kernel.ndim - 1)))


def _input_l1(params, slot):
  """sum |W| of a consumer's input slice per channel (rows of all flatten tiles folded)."""
  kernel = params[f'{slot.path}/kernel']
  per_row = jnp.abs(kernel).sum(axis=tuple(i for i in range(kernel.ndim) if i != kernel.ndim - 2))
  rows = per_row[slot.positions()].reshape(slot.repeat, slot.length)
  return rows.sum(axis=0)


def group_l1_parts(params, group):
  """Every coupled slice's per-channel L1: producers' filters, BN |gamma|, consumers' inputs."""
  parts = [_part(_filter_l1(params, s.path), s) for s in group.producers]
  parts += [_part(jnp.abs(params[f'{s.path}/scale']), s) for s in group.norms
            if f'{s.path}/scale' in params]
  parts += [_input_l1(params, s) for s in group.consumers]
  return parts


@register_criterion('l1')
def l1_scores(variables, groups: Groups, *, aggregate: str | None = None, **_) -> Scores:
  """s_c = sum_producers sum_{kh, kw, in} |W[kh, kw, in, c]| (dense: sum_in |W[in, c]|).

  aggregate='sum'|'mean'|'max': DepGraph's group L1 instead: every coupled slice (producer
  filters, BN |gamma|, consumers' input slices) scores the channel, each member's vector divided
  by its mean, then summed / averaged / maxed over the members.
  """
  params = _modules(variables)
  if aggregate:
    return {g.name: _aggregate(g.size, group_l1_parts(params, g), aggregate) for g in groups}
  return {g.name: _accumulate(g.size, [_part(_filter_l1(params, s.path), s) for s in g.producers])
          for g in groups}


@register_criterion('bn_gamma')
def bn_gamma_scores(variables, groups: Groups, *, aggregate: str | None = None,
                    **_) -> Scores:
  """s_c = sum over the group's BatchNorms of |gamma_c|; `l1` for groups without BN.

  aggregate='sum'|'mean'|'max': each BN's |gamma| divided by its mean, then aggregated.
  """
  params = _modules(variables)
  fallback = l1_scores(variables, tuple(g for g in groups if not g.norms), aggregate=aggregate)

  def gamma(g):
    parts = [_part(jnp.abs(params[f'{s.path}/scale']), s) for s in g.norms]
    return _aggregate(g.size, parts, aggregate) if aggregate else _accumulate(g.size, parts)

  return {g.name: gamma(g) if g.norms else fallback[g.name] for g in groups}


def l1_gamma_penalty(params, lam: float):
  """Network Slimming sparsity term lam * sum |gamma| over every BatchNorm scale in `params`.

  params: the 'params' collection. Add to the training loss; lam ~ 1e-4 (VGG) to 1e-5 (ResNet).
  """
  flat = traverse_util.flatten_dict(params)
  gammas = [jnp.abs(v).sum() for k, v in flat.items() if k[-1] == 'scale']
  return lam * sum(gammas) if gammas else jnp.zeros((), jnp.float32)


@register_criterion('random')
def random_scores(variables, groups: Groups, *, rng: jax.Array | None = None, **_) -> Scores:
  """Uniform [0, 1) per channel; rng defaults to PRNGKey(0)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  keys = jax.random.split(rng, len(groups))
  return {g.name: jax.random.uniform(k, (g.size,)) for g, k in zip(groups, keys)}


def _require_data(name, model, batches):
  if model is None or batches is None:
    raise ValueError(f'criterion {name!r} needs model= and batches=(images, labels)')


def _ones(groups: Groups):
  return {g.name: jnp.ones((g.size,), jnp.float32) for g in groups}


@compile_lib.jit(static_argnums=(0, 2))
def _mean_gate_gradient(model, variables, groups, images, labels):
  """mean over batches b of dL_b/dg at g = 1; images [B, N, ...], labels [B, N]."""

  def loss(gates, x, y):
    logits = apply_with_gates(model, variables, x, groups, gates)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  grad = jax.grad(loss)
  per_batch = jax.lax.map(lambda xy: grad(_ones(groups), *xy), (images, labels))
  return jax.tree_util.tree_map(lambda g: g.mean(axis=0), per_batch)


@register_criterion('taylor')
def taylor_scores(variables, groups: Groups, *, model=None, batches=None, **_) -> Scores:
  """s_c = |mean_b sum_{n,h,w} a * dL_b/da| via the gate gradient (see module docstring)."""
  _require_data('taylor', model, batches)
  images, labels = batches
  grads = _mean_gate_gradient(model, variables, tuple(groups), images, labels)
  return {name: jnp.abs(g) for name, g in grads.items()}


@compile_lib.jit(static_argnums=(0, 2))
def _mean_positive_activation(model, variables, groups, images):
  """{group: f32[C]}: mean over batches, images and positions of relu(activation), eval mode.

  Members of a group (residual stream) are summed, prefix-aligned like scores.
  """

  def squeeze(x):
    acts = {}
    apply_with_gates(model, variables, x, groups, _ones(groups), activations=acts)
    return {path: jax.nn.relu(a.astype(jnp.float32)).mean(axis=tuple(range(a.ndim - 1)))
            for path, a in acts.items()}

  per_batch = jax.lax.map(squeeze, images)
  means = {path: v.mean(axis=0) for path, v in per_batch.items()}
  return {g.name: _accumulate(g.size, [_part(means[s.path], s) for s in g.gates]) for g in groups}


def channel_attention(squeezed, temperature: float = 1.0, eps: float = 1e-8):
  """Parameter-free SE excitation of one layer: a = sigmoid(standardize(s) / temperature).

  squeezed: f32[C], the layer's squeeze statistic s_c = mean relu(activation_c).
  Standardizing within the layer makes `a` scale-free (comparable across layers, robust to BN
  scaling); the sigmoid keeps it in (0, 1), so it re-weights but never flips the base ranking
  among channels of equal activity.
  """
  z = (squeezed - squeezed.mean()) / (squeezed.std() + eps)
  return jax.nn.sigmoid(z / temperature)


@register_criterion('attention')
def attention_scores(variables, groups: Groups, *, model=None, batches=None,
                     base: str = 'l1', temperature: float = 1.0, rng=None,
                     aggregate: str | None = None, **_) -> Scores:
  """Channel attention on top of a base criterion (SE-style, Hu et al. 2018).

  For every group (a layer's channels), on a few training batches:
    squeeze     s_c = mean_{batches, n, h, w} relu(y_c)       (y = BN output of the channel;
                                                               relu(y) is the feature map the
                                                               next layer reads, as in SE's GAP)
    excitation  a_c = sigmoid(((s_c - mean_c s) / std_c s) / T)      (T = temperature)
    score       score_c = base_c / max_c(base) * a_c
  Why: weight-magnitude criteria (L1, |gamma|) are data-blind: a filter with a large norm whose
  post-ReLU output is almost always 0 (BN bias pushing it negative) contributes nothing, and a
  small filter on a strongly active channel may matter. Squeeze-and-excitation attention (Hu et
  al. 2018) weighs channels by their global average activation; here the excitation is the
  training-free standardize + sigmoid instead of a learned MLP, and it multiplies the base score
  so that channels that are both heavy and active rank first. Ablate against `base`.
  """
  _require_data('attention', model, batches)
  images, _ = batches
  base_scores = score(base, variables, groups, model=model, batches=batches, rng=rng,
                      aggregate=aggregate)
  squeezed = _mean_positive_activation(model, variables, tuple(groups), images)
  out = {}
  for g in groups:
    b = base_scores[g.name]
    out[g.name] = b / (b.max() + 1e-12) * channel_attention(squeezed[g.name], temperature)
  return out


CRITERIA['attention_bn_gamma'] = functools.partial(attention_scores, base='bn_gamma')
CRITERIA['attention_taylor'] = functools.partial(attention_scores, base='taylor')
