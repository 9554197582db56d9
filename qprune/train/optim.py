"""Optimizer: SGD with momentum and weight decay, LR schedules, element-wise freezing.

`freezable(tx)` wraps any optax transformation so that elements marked True in a `freeze_mask`
(bool pytree shaped like params, passed per call) get an update of exactly zero: their gradient
is zeroed before `tx` and their final update is zeroed after it, so neither weight decay nor a
momentum trace left from before the freeze can move them (INQ's frozen, quantized weights).
"""
import jax
import optax

from qprune.ops.masking import zero_frozen

LR_SCHEDULES = ('cosine', 'linear', 'step', 'constant')


def lr_schedule(kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                boundaries=(0.5, 0.75), decay: float = 0.1) -> optax.Schedule:
  """'cosine' or 'linear' (to 0 after an optional linear warmup; 'linear' with a warmup is the
  one-cycle shape of fast CIFAR-10 training), 'step' (x decay at fractions of training) or
  'constant'."""
  total_steps = max(int(total_steps), 1)
  if kind == 'cosine':
    if warmup_steps:
      return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup_steps,
                                                max(total_steps, warmup_steps + 1))
    return optax.cosine_decay_schedule(base_lr, total_steps)
  if kind == 'linear':
    decay = max(total_steps - warmup_steps, 1)
    down = optax.linear_schedule(base_lr, 0.0, decay)
    if not warmup_steps:
      return down
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup_steps), down],
                                [warmup_steps])
  if kind == 'step':
    return optax.piecewise_constant_schedule(
        base_lr, {int(b * total_steps): decay for b in boundaries})
  if kind == 'constant':
    return optax.constant_schedule(base_lr)
  raise ValueError(f'unknown lr schedule {kind!r}; choose one of {", ".join(LR_SCHEDULES)}')


def decay_mask(params):
  """Weight decay on conv/dense kernels only (not on biases or BatchNorm scale/shift)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def sgd(schedule: optax.Schedule, momentum: float = 0.9, weight_decay: float = 5e-4,
        nesterov: bool = True) -> optax.GradientTransformation:
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov))


def freezable(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`tx` whose update takes an optional `freeze_mask=` pytree; frozen elements never move."""

  def update(updates, state, params=None, *, freeze_mask=None, **extra):
    del extra
    if freeze_mask is None:
      return tx.update(updates, state, params)
    updates, state = tx.update(zero_frozen(updates, freeze_mask), state, params)
    return zero_frozen(updates, freeze_mask), state

  return optax.GradientTransformationExtraArgs(tx.init, update)
