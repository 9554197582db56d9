"""INQ's incremental quantize-freeze-retrain schedule (Zhou et al. 2017) as pure pytree functions.

At step s with fraction f_s (default 0.5, 0.75, 0.875, 1.0), each targeted layer's
`ceil(f_s · n)` weights are frozen: the previously frozen ones plus the largest-|w| of the rest.
Frozen weights are snapped to their layer's target set (`targets.quantize`) and must then get no
update at all; the other weights are retrained by the caller to compensate. Target sets are fixed
before the first step (e.g. from the pretrained weights), so frozen values stay valid throughout.

Masks are bool pytrees shaped like `params`: True = frozen. Leaves that are not quantized are
all False (they train normally and are never snapped).
"""
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import traverse_util

from qprune.errors import UserError
from qprune.models import interop
from qprune.ops.masking import zero_frozen  # noqa: F401 (re-exported: qprune.quant.zero_frozen)
from qprune.quant import targets as targets_lib

DEFAULT_SCHEDULE: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
RetrainFn = Callable[[object, object], object]  # (params, freeze_mask) -> params


class InqScheduleError(UserError):
  """A schedule that is not increasing fractions in (0, 1] (an empty one quantizes nothing)."""


def _layer_freeze_mask(w: jax.Array, previous: jax.Array, fraction) -> jax.Array:
  """Frozen = previous ∪ largest-|w| of the rest, ceil(fraction·n) in all (never fewer than before).

  Ranked by a stable sort of |w| (previously frozen first), so ties resolve by position.
  """
  flat_w, flat_prev = jnp.abs(w).reshape(-1), previous.reshape(-1)
  n = flat_w.shape[0]
  count = jnp.ceil(jnp.asarray(fraction, jnp.float32) * n).astype(jnp.int32)
  count = jnp.maximum(count, jnp.sum(flat_prev))
  score = jnp.where(flat_prev, jnp.inf, flat_w)
  order = jnp.argsort(-score, stable=True)
  rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  return (rank < count).reshape(w.shape)


def no_frozen(params):
  """All-False mask shaped like `params` (nothing frozen yet)."""
  return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), bool), params)


def freeze_mask(params, targets: targets_lib.Targets, fraction: float, previous=None,
                path_filter: targets_lib.PathFilter = targets_lib.default_path_filter):
  """Bool pytree like `params`: per targeted layer, the frozen ceil(fraction·n) weights.

  `previous` (an earlier mask) stays frozen; the rest is filled by magnitude, largest first.
  Leaves without a target set, or not selected by `path_filter`, are all False.
  """
  previous = no_frozen(params) if previous is None else previous
  flat_params = traverse_util.flatten_dict(params)
  flat_prev = traverse_util.flatten_dict(previous)
  out = {}
  for path, w in flat_params.items():  # over leaves, not weights
    name = targets_lib.layer_name(path)
    if path_filter(path, w) and name in targets:
      out[path] = _layer_freeze_mask(w, flat_prev[path], fraction)
    else:
      out[path] = jnp.zeros(jnp.shape(w), bool)
  return traverse_util.unflatten_dict(out)


def snap(params, mask, targets: targets_lib.Targets,
         path_filter: targets_lib.PathFilter = targets_lib.default_path_filter, zero: bool = True):
  """Frozen weights (mask True) -> exactly 0 or ±2^e, e in the layer's set (nearest; zero=False:
  the zero-free set, `targets.quantize`); rest as is."""
  flat_params = traverse_util.flatten_dict(params)
  flat_mask = traverse_util.flatten_dict(mask)
  out = {}
  for path, w in flat_params.items():
    name = targets_lib.layer_name(path)
    if path_filter(path, w) and name in targets:
      q = targets_lib.quantize(w, jnp.asarray(targets[name], jnp.int32).reshape(-1), zero=zero)
      out[path] = jnp.where(flat_mask[path], q.astype(w.dtype), w)
    else:
      out[path] = w
  return traverse_util.unflatten_dict(out)




def run_inq(params, targets: targets_lib.Targets, retrain_fn: RetrainFn,
            schedule: Sequence[float] = DEFAULT_SCHEDULE,
            path_filter: targets_lib.PathFilter = targets_lib.default_path_filter,
            zero: bool = True):
  """Runs the INQ schedule; returns (params, final mask). zero=False snaps to zero-free sets.

  params may be an nnx.Module: then `retrain_fn(module, mask)` returns the retrained module and
  run_inq returns (a new quantized module, mask); the module passed is not changed.

  For each fraction: grow the freeze mask, snap frozen weights, then (unless everything targeted is
  frozen, fraction >= 1) call `retrain_fn(params, mask)`, which must leave frozen entries unchanged
  (e.g. with `qprune.train.optim.freezable(tx)` and `freeze_mask=mask`). A last snap with the final
  mask makes every targeted weight exactly representable even if the schedule does not end at 1.0 —
  only for the frozen ones; end the schedule at 1.0 to quantize every weight.
  """
  if interop.is_nnx(params):  # a module in, a module out; retrain_fn(module, mask) -> module
    model, variables = interop.split(params)
    user_retrain = retrain_fn

    def retrain_fn(p, mask):  # pylint: disable=function-redefined
      trained = user_retrain(interop.merge(model, {**variables, 'params': p}), mask)
      return interop.params_of(trained)

    out, mask = run_inq(variables['params'], targets, retrain_fn, schedule, path_filter, zero)
    return interop.merge(model, {**variables, 'params': out}), mask
  params = interop.params_of(params)
  schedule = tuple(schedule)
  if (not schedule or any(not 0.0 < f <= 1.0 for f in schedule) or
      list(schedule) != sorted(schedule)):
    raise InqScheduleError(f'schedule must be increasing fractions in (0, 1], ending at 1.0 to '
                           f'quantize every weight; got {schedule}')
  targets_lib.check_targets(targets, targets_lib.quantizable_layers(params, path_filter))
  mask = no_frozen(params)
  for fraction in schedule:
    mask = freeze_mask(params, targets, fraction, mask, path_filter)
    params = snap(params, mask, targets, path_filter, zero)
    if fraction < 1.0:
      params = retrain_fn(params, mask)
  return snap(params, mask, targets, path_filter, zero), mask
