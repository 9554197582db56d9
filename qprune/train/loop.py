"""The one epoch loop every mode trains with.

`fit` trains `variables` on `data` for `options.epochs` epochs, checkpointing under
`<stage_dir>/checkpoints` after every epoch (and on SIGTERM, mid-epoch) and appending one JSON line
per epoch to `<stage_dir>/metrics.jsonl`. A rerun with the same stage_dir resumes from the newest
checkpoint and, because example order and augmentation are pure functions of (seed, epoch, step),
ends with the same params bit for bit as an uninterrupted run.

Modes shape training through `hooks`/`aux` (see steps.py) and `on_epoch_end`, a function
`(epoch, state, history) -> (stop, record)`: `history` holds the records of all earlier epochs
(restored on resume, so a callback that derives its state from it, like the Early-Bird mask
FIFO, needs no state of its own), `stop` ends training early, `record` (JSON-able) is merged
into the epoch's metrics line.
"""
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from qprune import distributed, files, interrupts
from qprune.data import pipeline
from qprune.errors import Interrupted, UserError
from qprune.train import checkpoint, optim, parallel, progress, steps
from qprune.train.parallel import BatchSizeError
from qprune.train.state import TrainState, create_state


class TrainingDivergedError(UserError):
  """The loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  epochs: int = 1
  batch_size: int = 128
  eval_batch_size: int = 1000
  learning_rate: float = 0.1
  lr_schedule: str = 'cosine'
  warmup_epochs: float = 0.0
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 5e-4
  # Label smoothing (Szegedy et al. 2016): the training loss fits (1 - s) one-hot + s uniform;
  # the reported train loss stays the plain cross-entropy.
  label_smoothing: float = 0.0
  # An exponential moving average of the weights and BatchNorm statistics (0: none), evaluated,
  # saved and handed on in place of the trained ones (Polyak & Juditsky 1992; e.g. 0.999).
  ema_decay: float = 0.0
  augment: str = 'none'
  seed: int = 0
  eval_every: int = 1
  progress: bool = True
  tensorboard: bool = False  # also write each epoch's metrics as TensorBoard scalars

  @classmethod
  def from_config(cls, config, **overrides):
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: config[k] for k in fields if k in config}
    values.update(overrides)
    return cls(**values)


@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list
  epochs_run: int
  stopped_early: bool
  test_accuracy: float
  wall_time_s: float


def steps_per_epoch(train_size: int, batch_size: int) -> int:
  n = train_size // batch_size
  if n < 1:
    raise BatchSizeError(f'batch_size={batch_size} is larger than the training set ({train_size} '
                     f'examples); lower batch_size or raise train_subset')
  return n


def make_optimizer(options: TrainOptions, train_size: int):
  per_epoch = steps_per_epoch(train_size, options.batch_size)
  schedule = optim.lr_schedule(options.lr_schedule, options.learning_rate,
                               per_epoch * options.epochs,
                               int(options.warmup_epochs * per_epoch))
  return optim.freezable(optim.sgd(schedule, options.momentum, options.weight_decay,
                                   options.nesterov))


@functools.lru_cache(maxsize=32)
def _eval_fn(model, batch_size: int, batch_sharding):
  """One jitted evaluation per (model, batch size, sharding): every epoch, INQ step and stage of a
  run reuses it instead of compiling a fresh closure."""
  return steps.make_eval_fn(model, batch_size, batch_sharding)


@functools.lru_cache(maxsize=32)
def _train_step(model, options: TrainOptions, train_size: int, hooks: steps.StepHooks,
                batch_sharding):
  """(optimizer, jitted train step), built once per distinct setting, so that fits with the same
  options (e.g. the INQ steps of a run) share one compilation."""
  tx = make_optimizer(options, train_size)
  return tx, steps.make_train_step(model, tx, options.batch_size,
                                   pipeline.AUGMENTATIONS[options.augment], hooks, batch_sharding,
                                   label_smoothing=options.label_smoothing,
                                   ema_decay=options.ema_decay)


def evaluate(model, variables, split: pipeline.Split, batch_size: int, mesh=None) -> dict:
  """Accuracy and mean loss of `variables` on a whole split (one compiled call)."""
  mesh = mesh or parallel.make_mesh()
  devices = mesh.devices.size
  batch_size = max(devices, min(batch_size, split.size) // devices * devices)
  fn = _eval_fn(model, batch_size, parallel.batch_sharded(mesh))
  # Placed like the training state, so host (numpy) and device variables share one compile.
  variables = parallel.replicate(variables, mesh)
  sums = jax.device_get(fn(variables, split.images, split.labels))
  count = max(int(sums['count']), 1)
  return {'accuracy': float(sums['correct']) / count, 'loss': float(sums['loss']) / count}


def fit(model, variables, data: pipeline.Data, options: TrainOptions, stage_dir: str | None, *,
        hooks: steps.StepHooks = steps.StepHooks(), aux: Any = None,
        on_epoch_end: Callable | None = None, mesh=None, label: str = '') -> FitResult:
  """Trains and returns the final state; resumes from `<stage_dir>/checkpoints` if present.

  label names the stage in progress and epoch lines (e.g. 'pretrain', 'inq 2/4 (75% frozen)').
  """
  start_time = time.time()
  mesh = mesh or parallel.make_mesh()
  parallel.check_batch_divisible(options.batch_size, mesh)
  per_epoch = steps_per_epoch(data.train.size, options.batch_size)
  misses = _train_step.cache_info().misses
  tx, train_step = _train_step(model, options, data.train.size, hooks,
                               parallel.batch_sharded(mesh))
  new_step = _train_step.cache_info().misses > misses  # its first call compiles
  # A copy: the train step donates its state, and the caller keeps using `variables`.
  state = parallel.replicate(create_state(variables, tx, ema=options.ema_decay > 0), mesh,
                            copy=True)
  aux = parallel.replicate(aux, mesh) if aux is not None else {}
  key = jax.random.PRNGKey(options.seed)
  store = checkpoint.CheckpointStore(os.path.join(stage_dir, 'checkpoints')) if stage_dir else None
  # metrics.jsonl: written by process 0 only (one writer on a multi-host job's shared workdir).
  metrics_path = (os.path.join(stage_dir, 'metrics.jsonl')
                  if stage_dir and parallel.is_primary() else None)
  board = (tensorboard_writer(stage_dir)
           if options.tensorboard and stage_dir and metrics_path else None)

  epoch, index, history = 0, 0, []
  # Placed like the step's own output, or the first step compiles a second variant.
  metrics = parallel.replicate(steps.zero_metrics(), mesh)
  if store is not None:
    restored = store.restore_latest({'state': state, 'metrics': metrics})
    if restored is not None:
      tree, meta = restored
      state = parallel.replicate(tree['state'], mesh)
      metrics = parallel.replicate(tree['metrics'], mesh)
      epoch, index, history = meta['epoch'], meta['index'], meta['history']
      if metrics_path:
        files.write_lines_atomic(metrics_path, [json.dumps(h) for h in history])
      print(f'Resuming {stage_dir} at epoch {epoch + 1}, step {index}/{per_epoch}', flush=True)

  def save(epoch_, index_):
    if store is not None:
      store.save(epoch_ * per_epoch + index_, {'state': state, 'metrics': metrics},
                 {'epoch': epoch_, 'index': index_, 'history': history})

  stopped_early = bool(history and history[-1].get('stopped_early'))
  test_accuracy = history[-1].get('test_accuracy', math.nan) if history else math.nan
  first_epoch = new_step
  # SIGINT/SIGTERM only set a flag in here (never an exception inside XLA compilation or a
  # checkpoint write); it is checked after every step.
  # In a multi-process job the processes agree after every step whether any got a signal, so
  # that all stop (and save, collectively) at the same step.
  multi_process = jax.process_count() > 1
  with interrupts.deferred() as signals:
    while epoch < options.epochs and not stopped_early:
      perm = pipeline.epoch_permutation(key, epoch, data.train.size)
      epoch_start = time.time()
      bar = progress.EpochProgress(label, epoch + 1, options.epochs, per_epoch, index,
                                   options.batch_size, enabled=options.progress,
                                   first_compile=first_epoch)
      first_epoch = False
      while index < per_epoch:
        state, metrics = train_step(state, data.train.images, data.train.labels, perm,
                                    jnp.int32(index), key, aux, metrics)
        index += 1
        bar.update(index, metrics)
        if _stop_requested(signals, multi_process):
          bar.close()
          save(epoch, index)
          raise _preempted(signals, stage_dir, epoch, index)
      bar.close()
      sums = jax.device_get(metrics)
      train_loss = float(sums['loss']) / max(int(sums['count']), 1)
      if not math.isfinite(train_loss):
        raise TrainingDivergedError(
            f'loss became {train_loss} in epoch {epoch + 1} (by step {int(state.step)}); the last '
            f'good checkpoint in {stage_dir} is kept. Hint: lower learning_rate '
            f'({options.learning_rate}) or add warmup_epochs.')
      record = {'epoch': epoch + 1, 'step': int(state.step), 'train_loss': train_loss,
                'train_accuracy': float(sums['correct']) / max(int(sums['count']), 1),
                'epoch_time_s': time.time() - epoch_start}
      if (epoch + 1) % options.eval_every == 0 or epoch + 1 == options.epochs:
        test = evaluate(model, state.variables, data.test, options.eval_batch_size, mesh)
        test_accuracy = test['accuracy']
        record.update(test_accuracy=test['accuracy'], test_loss=test['loss'])
      if on_epoch_end is not None:
        stop, extra_record = on_epoch_end(epoch + 1, state, history)
        record.update(extra_record or {})
        stopped_early = bool(stop) and epoch + 1 < options.epochs
        record['stopped_early'] = stopped_early
      if options.progress:
        print((f'[{label}] ' if label else '') + _format_record(record), flush=True)
      history.append(record)
      epoch, index = epoch + 1, 0
      metrics = parallel.replicate(steps.zero_metrics(), mesh)
      save(epoch, index)
      if metrics_path:
        with open(metrics_path, 'a') as f:
          f.write(json.dumps(record) + '\n')
      if board is not None:
        for name, value in record.items():  # (not `key`: that is the run's PRNG key)
          if isinstance(value, (int, float)) and not isinstance(value, bool) and name != 'epoch':
            board.add_scalar(name, value, record['epoch'])
        board.flush()
  if math.isnan(test_accuracy):
    test_accuracy = evaluate(model, state.variables, data.test, options.eval_batch_size,
                             mesh)['accuracy']
  if store is not None:
    store.close()
  if board is not None:
    board.close()
  return FitResult(state, history, epoch, stopped_early, test_accuracy,
                   time.time() - start_time)


class TensorBoardNotInstalledError(UserError):
  """tensorboard=True without tensorboardX."""


def tensorboard_writer(stage_dir: str):
  """A tensorboardX SummaryWriter on `<stage_dir>/tensorboard/` (metrics.jsonl stays the
  record; this is a view of it for `tensorboard --logdir WORKDIR`)."""
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise TensorBoardNotInstalledError(
        "tensorboard=True needs tensorboardX: pip install 'qprune[tensorboard]'") from None
  return SummaryWriter(os.path.join(stage_dir, 'tensorboard'))


def _stop_requested(signals, multi_process: bool) -> bool:
  """Whether to stop now: a pending signal here, or (multi_process) on any process of the job;
  then `signals.pending` holds the signal on every process."""
  if not multi_process:
    return signals.pending is not None
  signum = distributed.agreed_max(signals.pending or 0)
  if signum:
    signals.pending = signum
  return bool(signum)


def _preempted(signals, stage_dir, epoch, index):
  signum, signals.pending = signals.pending, None
  where = (f'saved a checkpoint in {stage_dir} at epoch {epoch + 1}, step {index}; rerun the '
           f'same command to resume' if stage_dir else
           f'stopped at epoch {epoch + 1}, step {index} (no stage_dir: nothing saved)')
  return Interrupted(signum, f'{interrupts.signal_name(signum)}: {where}')


def _format_record(record: dict) -> str:
  parts = []
  for k, v in record.items():
    if isinstance(v, float):
      parts.append(f'{k}={v:.4f}')
    elif isinstance(v, (int, bool, str)):
      parts.append(f'{k}={v}')
  return '  '.join(parts)
