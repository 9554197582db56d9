"""Train state: a plain pytree, so it checkpoints, shards and jits without special cases."""
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  # {'params', 'batch_stats'}: an exponential moving average of the trained variables
  # (TrainOptions.ema_decay; None without one). A None leaf adds nothing to the pytree, so
  # checkpoints of runs without an average keep their structure.
  ema: Any = None

  @property
  def live_variables(self):
    """The variables the optimizer is training."""
    return {'params': self.params, 'batch_stats': self.batch_stats}

  @property
  def variables(self):
    """The model's variables: the moving average where the run keeps one (what is evaluated,
    saved and handed on), else the trained ones."""
    return self.ema if self.ema is not None else self.live_variables


def create_state(variables, tx, ema: bool = False) -> TrainState:
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  # (copies: the train step donates its state, and a buffer may be donated only once)
  average = (jax.tree_util.tree_map(jnp.array, {'params': params, 'batch_stats': batch_stats})
             if ema else None)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema=average)
