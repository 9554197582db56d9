"""Per-layer sensitivity scans: how much accuracy one layer costs when only it is compressed.

* `quant_sensitivity`: accuracy when ONLY layer l is quantized to its k-means power-of-two set
  with k clustered exponents (every other layer stays float), for every quantizable layer l and
  every k in `ks`. The k-means sets of all layers and all k come from one `cluster_all` call;
  all quantized layer versions are computed in one jitted call ({layer: [len(ks), ...]}); then
  ONE compiled function evaluates all V = L·len(ks) + 1 variants (the +1 is the unmodified
  model, the baseline): variant v = (layer id l_v, k index k_v) builds its params inside the
  function as `w_i' = where(i == l_v, Q_i[k_v], w_i)` for every layer i, so the variants never
  exist as V full copies of the params in host memory. Variants run `vmap_size` at a time
  (jax.vmap) and those groups sequentially (lax.map); images run in batches (lax.map).
  The compiled function depends only on shapes, so rescanning a model of the same shapes (e.g.
  after more training) reuses it.
* `prune_sensitivity`: accuracy when ONLY group g is pruned (uniform selection by a criterion,
  default L1 norm) at each ratio, every other group intact: all candidates (plus the unpruned
  baseline) are scored by `qprune.prune.evaluate_candidates`, one jit(vmap) over the stacked
  masks (activation gates: weights stay unbatched), in chunks of a fixed size so it compiles
  once.

Both return JSON-able rows (one per (layer, k) / (group, ratio)) with `baseline_accuracy` and
`accuracy_drop`; `qprune.report.write_sensitivity(rows, workdir, kind)` writes table + plot,
and rows stored in results under `quant_sensitivity` / `prune_sensitivity` show up in report.md.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qprune import prune as prune_lib
from qprune.ops import compile as compile_lib
from qprune.quant import kmeans as kmeans_lib
from qprune.quant import targets as targets_lib
from qprune.train import evaluation

# ---------------------------------------------------------------------------------------------
# Shared: evaluation data.

def padded_batches(images, labels, batch_size: int):
  """(images [B, bs, ...], labels [B, bs], valid bool [B, bs]) on device: the whole split,
  zero-padded to a multiple of bs = min(batch_size, N) (`evaluation.pad_to_batches`)."""
  return tuple(jnp.asarray(a) for a in evaluation.pad_to_batches(
      np.asarray(images), np.asarray(labels), batch_size))


def _rows_with_baseline(rows: list[dict], baseline: float) -> list[dict]:
  for r in rows:
    r['baseline_accuracy'] = baseline
    r['accuracy_drop'] = baseline - r['accuracy']
  return rows


# ---------------------------------------------------------------------------------------------
# Quantization sensitivity.

@jax.jit
def quantized_versions(layers, exponents, valid):
  """{layer: [K, ...]} every layer quantized (eq. 3.1) with each of its K candidate sets.

  layers: {name: w}; exponents / valid: {name: [K, n]} padded exponent sets.
  """
  return {name: jax.vmap(lambda e, v, w=w: targets_lib.quantize(w, e, v))(exponents[name],
                                                                          valid[name])
          for name, w in layers.items()}


@compile_lib.jit(static_argnames=('model', 'names', 'vmap_size', 'path_filter'))
def eval_quant_variants(model, names, variables, quantized, layer_ids, k_ids, images, labels,
                        valid, vmap_size: int = 8,
                        path_filter=targets_lib.default_path_filter):
  """(correct [V], loss_sum [V]) of V variants; variant v has layer `names[layer_ids[v]]`
  replaced by `quantized[name][k_ids[v]]` (layer_ids[v] = -1: unmodified). V must be a
  multiple of vmap_size. images [B, bs, ...], labels/valid [B, bs]."""
  params = variables['params']
  floats = targets_lib.quantizable_layers(params, path_filter)

  def one_variant(layer_id, k_id):
    chosen = {name: jnp.where(layer_id == i, quantized[name][k_id], floats[name])
              for i, name in enumerate(names)}
    v = dict(variables, params=targets_lib.replace_layers(params, chosen, path_filter))

    sums = evaluation.batch_sums(lambda x: model.apply(v, x, train=False), images, labels, valid)
    return sums['correct'], sums['loss']

  group = lambda ids: jax.vmap(one_variant)(*ids)
  ids = (layer_ids.reshape(-1, vmap_size), k_ids.reshape(-1, vmap_size))
  correct, loss = jax.lax.map(group, ids)
  return correct.reshape(-1), loss.reshape(-1)


def quant_sensitivity(model, variables, split, ks: Sequence[int] = (1, 2, 3, 4), *,
                      batch_size: int = 500, vmap_size: int | None = None,
                      k_max: int | None = None,
                      path_filter=targets_lib.default_path_filter) -> list[dict]:
  """Rows {layer, k, exponents, bits, num_weights, accuracy, loss, baseline_accuracy,
  accuracy_drop}, one per (quantizable layer, k), layers in params order (see module doc).

  split: anything with `.images` uint8 [N, H, W, C] and `.labels` int [N] (e.g. data.test).
  vmap_size: variants evaluated side by side by jax.vmap (memory ~ vmap_size x one eval
    batch); default 1 on CPU, 8 on accelerators. On CPU a vmap over different kernels becomes
    grouped convolutions, measured 3.5x slower than one variant at a time (LeNet-5, 17
    variants x 1000 MNIST images: 7.2 s vs 2.1 s warm); either way it is one compiled call.
  """
  ks = tuple(int(k) for k in ks)
  layers = targets_lib.quantizable_layers(variables['params'], path_filter)
  names = tuple(layers)
  clusters = kmeans_lib.cluster_all([layers[n] for n in names], k_max=k_max or max(ks))
  all_exps, all_valid = jax.device_get((clusters.exponents, clusters.valid))  # [L, K, K]
  index = np.asarray(ks) - 1
  exps = {n: all_exps[i][index] for i, n in enumerate(names)}
  valid = {n: all_valid[i][index] for i, n in enumerate(names)}
  quantized = quantized_versions(layers, exps, valid)

  if vmap_size is None:
    vmap_size = 1 if jax.default_backend() == 'cpu' else 8
  pairs = [(-1, 0)] + [(li, ki) for li in range(len(names)) for ki in range(len(ks))]
  vmap_size = max(1, min(int(vmap_size), len(pairs)))
  pairs += [(-1, 0)] * ((-len(pairs)) % vmap_size)  # pad with baselines
  layer_ids = jnp.asarray([p[0] for p in pairs], jnp.int32)
  k_ids = jnp.asarray([p[1] for p in pairs], jnp.int32)
  images, labels, ok = padded_batches(split.images, split.labels, batch_size)
  correct, loss = jax.device_get(eval_quant_variants(
      model, names, variables, quantized, layer_ids, k_ids, images, labels, ok,
      vmap_size=vmap_size, path_filter=path_filter))
  n = int(np.asarray(split.labels).shape[0])
  sets = kmeans_lib.exponent_sets(all_exps, all_valid)
  rows = []
  for v, (li, ki) in enumerate(pairs[:1 + len(names) * len(ks)]):
    if li < 0:
      continue
    exponents = list(sets[li][ks[ki] - 1])
    rows.append({'layer': names[li], 'k': ks[ki], 'exponents': exponents,
                 'bits': targets_lib.bits_per_weight(len(exponents)),
                 'num_weights': int(np.size(layers[names[li]])),
                 'accuracy': float(correct[v]) / n, 'loss': float(loss[v]) / n})
  return _rows_with_baseline(rows, float(correct[0]) / n)


# ---------------------------------------------------------------------------------------------
# Pruning sensitivity.

def single_group_masks(groups, scores, ratios: Sequence[float], selection: str = 'uniform'):
  """[(group name, ratio, masks)]: group g pruned at ratio r by `selection`, others all kept."""
  full = prune_lib.full_masks(groups)
  out = []
  for g in groups:
    for r in ratios:
      one = prune_lib.select(selection, {g.name: scores[g.name]}, (g,), float(r))
      out.append((g.name, float(r), dict(full, **one)))
  return out


def prune_sensitivity(model, variables, split, ratios: Sequence[float] = (0.25, 0.5, 0.75), *,
                      groups=None, criterion: str = 'l1', selection: str = 'uniform',
                      bn_images=None, batch_size: int = 500, chunk: int = 16,
                      **criterion_data) -> list[dict]:
  """Rows {layer (group name), ratio, kept, total, params, macs, accuracy, loss,
  baseline_accuracy, accuracy_drop}, one per (group, ratio), groups in model order.

  groups: default `derive_groups(variables)`. criterion: any registered criterion (data-driven
  ones take model=/batches=/rng= via criterion_data). bn_images: uint8 [B, N, H, W, C] training
  batches to re-estimate BN statistics per candidate (None keeps the model's). The eval uses
  every example of `split` (padded batches of bs = min(batch_size, N)). Candidates are scored
  `chunk` at a time in one compiled jit(vmap) (the last chunk is padded with unpruned masks).
  """
  groups = tuple(groups if groups is not None else prune_lib.derive_groups(variables))
  scores = prune_lib.score(criterion, variables, groups, **criterion_data)
  candidates = [(None, 0.0, prune_lib.full_masks(groups))]
  candidates += single_group_masks(groups, scores, ratios, selection)
  eval_images, eval_labels, eval_valid = padded_batches(split.images, split.labels, batch_size)
  chunk = max(1, min(int(chunk), len(candidates)))
  padded = candidates + [candidates[0]] * ((-len(candidates)) % chunk)
  accuracy, loss = [], []
  for start in range(0, len(padded), chunk):
    stacked = prune_lib.stack_masks([c[2] for c in padded[start:start + chunk]])
    m = jax.device_get(prune_lib.evaluate_candidates(model, groups, variables, stacked,
                                                     bn_images, eval_images, eval_labels,
                                                     eval_valid))
    accuracy += [float(a) for a in m['accuracy']]
    loss += [float(x) for x in m['loss']]
  input_shape = tuple(np.asarray(split.images).shape[1:])
  sizes = prune_lib.group_sizes(groups)
  rows = []
  for i, (name, ratio, masks) in enumerate(candidates):
    if name is None:
      continue
    cost = prune_lib.mask_cost(model, variables, groups, masks, input_shape)
    rows.append({'layer': name, 'ratio': ratio, 'kept': int(np.sum(np.asarray(masks[name]))),
                 'total': sizes[name], **cost, 'accuracy': accuracy[i], 'loss': loss[i]})
  return _rows_with_baseline(rows, accuracy[0])
