"""Pure, jitted train and eval steps.

The train step gathers its batch by index from the device-resident split (no host transfer),
augments it on device, and takes one optimizer step. Everything that changes between calls
(state, example order, step index, `aux`) is an argument, so it compiles once per run.

`StepHooks` let other modes shape training without a loop of their own:
  forward_params(params, aux) -> params  used for the forward pass (e.g. channel masks applied)
  extra_loss(params, aux) -> scalar      added to the loss (e.g. L1 on BatchNorm gamma)
  task_loss(logits, labels, images, aux) -> scalar
                                         replaces cross-entropy as the loss trained on (e.g.
                                         distillation from a teacher, `qprune.train.distill`);
                                         the reported train loss stays the cross-entropy
  aux['freeze_mask'] (bool pytree)        elements that get no update (INQ), via optim.freezable
"""
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from qprune.ops import compile as compile_lib
from qprune.train import evaluation
from qprune.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepHooks:
  forward_params: Callable[[Any, Any], Any] | None = None
  extra_loss: Callable[[Any, Any], jax.Array] | None = None
  task_loss: Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array] | None = None


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def smoothed_cross_entropy(logits, labels, smoothing: float):
  """Cross-entropy against (1 - smoothing) one-hot + smoothing uniform targets."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def zero_metrics():
  return {'loss': jnp.zeros((), jnp.float32), 'correct': jnp.zeros((), jnp.int32),
          'count': jnp.zeros((), jnp.int32)}


def ema_update(average, variables, step, decay: float):
  """One step of the moving average: decay_t x average + (1 - decay_t) x variables, with
  decay_t = min(decay, (1 + t) / (10 + t)) so the first steps do not stay near the start (as
  TensorFlow's ExponentialMovingAverage with num_updates)."""
  t = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return jax.tree_util.tree_map(lambda a, v: (d * a + (1.0 - d) * v).astype(a.dtype), average,
                                variables)


def make_train_step(model, tx, batch_size: int, augment: Callable, hooks: StepHooks = StepHooks(),
                    batch_sharding=None, donate: bool = True, xla_defaults: bool = False,
                    label_smoothing: float = 0.0, ema_decay: float = 0.0):
  """Returns jitted `step(state, images, labels, perm, index, key, aux, metrics)`.

  images uint8 [N, H, W, C] and labels int32 [N] are the whole split; the batch is
  perm[index * batch_size : (index + 1) * batch_size]. The augmentation key is
  fold_in(key, state.step), so a run resumed from a checkpoint sees the same randomness.
  metrics accumulates loss sum, correct count and example count on device (no host sync).
  xla_defaults=True compiles without qprune's CPU compiler options (see `qprune.ops.compile`).
  ema_decay > 0: state.ema follows the trained variables after every step (`ema_update`).
  """

  def step(state: TrainState, images, labels, perm, index, key, aux, metrics):
    idx = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
    x = augment(jax.random.fold_in(key, state.step), images[idx])
    y = labels[idx]
    if batch_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, batch_sharding)
      y = jax.lax.with_sharding_constraint(y, batch_sharding)

    def loss_fn(params):
      used = hooks.forward_params(params, aux) if hooks.forward_params else params
      logits, new_vars = model.apply({'params': used, 'batch_stats': state.batch_stats}, x,
                                     train=True, mutable=['batch_stats'])
      loss = cross_entropy(logits, y)
      if hooks.task_loss:
        total = hooks.task_loss(logits, y, x, aux)
      elif label_smoothing:
        total = smoothed_cross_entropy(logits, y, label_smoothing)
      else:
        total = loss
      if hooks.extra_loss:
        total = total + hooks.extra_loss(params, aux)
      return total, (loss, logits, new_vars['batch_stats'])

    (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   freeze_mask=(aux or {}).get('freeze_mask'))
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema_decay:
      ema = ema_update(ema, {'params': params, 'batch_stats': batch_stats}, state.step,
                       ema_decay)
    new_state = state.replace(  # type: ignore[attr-defined]  # flax struct.dataclass
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema=ema)
    metrics = {'loss': metrics['loss'] + loss * batch_size,
               'correct': metrics['correct'] + jnp.sum(jnp.argmax(logits, -1) == y),
               'count': metrics['count'] + batch_size}
    return new_state, metrics

  return compile_lib.jit(step, donate_argnums=(0, 7) if donate else (), xla_defaults=xla_defaults)


def make_eval_fn(model, batch_size: int, batch_sharding=None):
  """Returns jitted `evaluate(variables, images, labels) -> {'loss', 'correct', 'count'}` sums.

  The split is padded to a multiple of batch_size and scanned batch by batch
  (`evaluation.batch_sums`; one compile per split size); padded examples are masked out.
  """

  def evaluate(variables, images, labels):
    def logits(x):
      if batch_sharding is not None:
        x = jax.lax.with_sharding_constraint(x, batch_sharding)
      return model.apply(variables, x, train=False)
    return evaluation.batch_sums(logits, *evaluation.pad_to_batches(images, labels, batch_size))

  return compile_lib.jit(evaluate)
