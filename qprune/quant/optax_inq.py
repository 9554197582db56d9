"""INQ as an optax transform: power-of-two quantization inside the user's own training loop.

    tx = quant.inq_optax(optax.sgd(0.01, momentum=0.9), targets, steps_per_stage=500)
    opt_state = tx.init(params)        # then the usual loop: tx.update(grads, opt_state, params)
    optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)   # Flax NNX: optimizer.update(module, g)

Schedule. Update calls are numbered t = 0, 1, 2, ...; a call with t % steps_per_stage == 0 that
still has a stage ahead (t // steps_per_stage < len(schedule)) is a *snap step*: it grows the
freeze mask to the next fraction (`quant.freeze_mask`: previously frozen + largest |w| of the
rest, from the params it is given) and returns `snapped − params` as the update, so that
`optax.apply_updates` moves the newly frozen weights exactly onto their targets (`quantize`). The
gradient of a snap step is not used and the inner optimizer does not step. Every other call is a
*train step*: the inner transform's update with frozen entries zeroed (`quant.zero_frozen`, after
momentum and weight decay, so frozen weights never move). Hence stage i is one snap step and
`steps_per_stage − 1` train steps, exactly the work of `quant.run_inq` with a retrain function
doing `steps_per_stage − 1` steps; all of INQ takes `(len(schedule) − 1)·steps_per_stage + 1`
updates. After the last stage (fraction 1.0) the quantized kernels stay frozen and any other
params (biases, BatchNorm) keep training if the loop goes on.

Why the snap is exact: `p + (q − p)` (what `apply_updates` computes) is `q` in float32 whenever
`q − p` is exactly representable, which holds for power-of-two targets: either q = 0, or
|p| ∈ [q/2, 2q] (Sterbenz), or |p| > 2q where p − q is a multiple of ulp(p) lying in (|p|/2, |p|)
and so is representable too (unless q < ulp(p), a > 2^23 gap between a weight and its target).
`inq_params` snaps again with the final mask (idempotent) for callers who want that guaranteed.
A weight snapped to zero ends as +0.0 (`p + (0 − p)`), where `run_inq`'s snap may leave −0.0
(`sgn(w)·0`): equal values, and the same export codes.

State (`InqState`) is a pytree of arrays only: the step counter, the stage counter, the schedule
(float32 [S]), the target sets ({layer: int32 [n]}), the freeze mask (bool, like params) and the
inner optimizer's state. So it jits with one compilation for the whole schedule (the stage
boundary is a `lax.cond` on traced counters) and checkpoints like any optax state.
"""
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qprune.errors import UserError
from qprune.models import interop
from qprune.quant import inq as inq_lib
from qprune.quant import targets as targets_lib


class InqOptaxError(UserError):
  """Bad arguments to `inq_optax` (schedule, steps per stage, missing params)."""


class InqState(NamedTuple):
  count: jax.Array  # type: ignore[assignment]  # int32 []: update calls (shadows tuple.count)
  stage: jax.Array       # int32 []: snap steps done (0..len(schedule))
  fractions: jax.Array   # float32 [S]: the schedule
  exponents: Any         # {layer_name: int32 [n]}: each targeted layer's exponent set
  mask: Any              # bool pytree like params: True = frozen (on its target)
  inner_state: Any       # the wrapped transform's state


def _check(schedule: Sequence[float], steps_per_stage: int):
  schedule = tuple(float(f) for f in schedule)
  if not schedule or any(not 0.0 < f <= 1.0 for f in schedule) or list(schedule) != sorted(
      schedule):
    raise InqOptaxError(f'schedule must be increasing fractions in (0, 1], got {schedule}')
  if int(steps_per_stage) < 1:
    raise InqOptaxError(f'steps_per_stage must be >= 1, got {steps_per_stage}')
  return schedule, int(steps_per_stage)


def inq_optax(inner: optax.GradientTransformation, targets: targets_lib.Targets,
              steps_per_stage: int, schedule: Sequence[float] = inq_lib.DEFAULT_SCHEDULE, *,
              reset_inner_on_snap: bool = False,
              path_filter: targets_lib.PathFilter = targets_lib.default_path_filter
              ) -> optax.GradientTransformation:
  """Wraps `inner` (e.g. `optax.sgd(...)`) with INQ's quantize-freeze schedule (module docstring).

  targets: {layer_name: exponents} (`quant.kmeans_targets`, `quant.inq_targets`), fixed up front.
  steps_per_stage: update calls per stage, the first being the snap step.
  reset_inner_on_snap: re-initialize the inner state at each snap (like a retrain function that
  builds a fresh optimizer per INQ step, as `qprune.fit` does); default keeps momentum going.
  `update` needs `params` (raises InqOptaxError without them).
  """
  schedule, steps_per_stage = _check(schedule, steps_per_stage)
  exponent_arrays = {name: np.asarray(tuple(sorted(int(e) for e in exps)), np.int32)
                     for name, exps in targets.items()}

  def init_fn(params):
    state_params = params
    params = _as_dict(params)
    present = set(targets_lib.quantizable_layers(params, path_filter))
    if exponent_arrays and not present & set(exponent_arrays):
      raise InqOptaxError(f'targets name none of the layers of these params: '
                          f'{sorted(exponent_arrays)[:3]}; the layers are {sorted(present)[:6]}')
    exponents = {k: jnp.asarray(v) for k, v in exponent_arrays.items() if k in present}
    del state_params
    return InqState(count=jnp.zeros((), jnp.int32), stage=jnp.zeros((), jnp.int32),
                    fractions=jnp.asarray(schedule, jnp.float32), exponents=exponents,
                    mask=inq_lib.no_frozen(params), inner_state=inner.init(params))

  def update_fn(updates, state: InqState, params=None):
    if params is None:
      raise InqOptaxError('inq_optax needs params: call tx.update(grads, state, params)')
    template = updates  # an nnx.Optimizer hands nnx.State; the schedule works on dicts
    params = _as_dict(params)
    num_stages = state.fractions.shape[0]
    boundary = (state.count % steps_per_stage == 0) & (state.stage < num_stages)

    def snap_step(_):
      fraction = state.fractions[jnp.minimum(state.stage, num_stages - 1)]
      mask = inq_lib.freeze_mask(params, state.exponents, fraction, state.mask, path_filter)
      snapped = inq_lib.snap(params, mask, state.exponents, path_filter)
      delta = _like(template, jax.tree.map(lambda s, p: (s - p).astype(p.dtype), snapped, params))
      inner_state = inner.init(snapped) if reset_inner_on_snap else state.inner_state
      return delta, inner_state, mask, state.stage + 1

    def train_step(_):
      new_updates, inner_state = inner.update(updates, state.inner_state, params)
      frozen = _like(new_updates, state.mask)
      return inq_lib.zero_frozen(new_updates, frozen), inner_state, state.mask, state.stage

    new_updates, inner_state, mask, stage = jax.lax.cond(boundary, snap_step, train_step, None)
    return new_updates, InqState(state.count + 1, stage, state.fractions, state.exponents, mask,
                                 inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def _as_dict(params):
  """Params as nested dicts (an nnx.State, e.g. from nnx.Optimizer, becomes one)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return interop.state_to_dict(params) if isinstance(params, nnx.State) else params


def _like(template, tree):
  """`tree` (nested dicts) in the structure of `template` (nested dicts or an nnx.State)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return interop.dict_to_state_like(template, tree) if isinstance(template, nnx.State) else tree


def _find_state(opt_state) -> InqState:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  opt_state = nnx.as_pure(opt_state)  # nnx.Optimizer's opt_state holds OptState variables
  if isinstance(opt_state, InqState):
    return opt_state
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, InqState))
           if isinstance(s, InqState)]
  if len(found) != 1:
    raise InqOptaxError(f'expected one InqState inside the optimizer state, found {len(found)}')
  return found[0]


def inq_done(opt_state) -> jax.Array:
  """bool []: every stage has been snapped (the kernels are all on their targets if the schedule
  ends at 1.0)."""
  state = _find_state(opt_state)
  return state.stage >= state.fractions.shape[0]


def inq_params(params, opt_state,
               path_filter: targets_lib.PathFilter = targets_lib.default_path_filter):
  """`params` with the frozen weights snapped onto their targets (idempotent; like run_inq's
  final snap)."""
  state = _find_state(opt_state)
  if interop.is_nnx(params):  # a module: a new module with its params snapped
    model, variables = interop.split(params)
    return interop.merge(model, {**variables, 'params': inq_lib.snap(
        variables['params'], _as_dict(state.mask), _as_dict(state.exponents), path_filter)})
  return _like(params, inq_lib.snap(_as_dict(params), _as_dict(state.mask),
                                    _as_dict(state.exponents), path_filter))
