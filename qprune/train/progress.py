"""Progress within an epoch: a tqdm bar on a terminal, plain periodic lines in a log.

A batch job or a launch.sh log has no terminal, and a CIFAR-10 epoch on a CPU takes minutes, so
there a line like

  [pretrain] epoch 3/30  step 120/390 (31%)  412 img/s  loss 0.8123  ETA 0:01:05

is printed every `every_s` seconds instead of the bar. The first step of a run also compiles
the train step: that is announced and timed, so a long silence has a name. Reading the running
loss synchronizes with the device, so it happens at most once per `min_interval_s`.
"""
import datetime
import sys
import time

import jax
from tqdm import tqdm


def _is_tty(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False


class EpochProgress:
  """Reports the steps of one epoch; `update(index, metrics)` after every step."""

  def __init__(self, label: str, epoch: int, epochs: int, per_epoch: int, start_index: int,
               batch_size: int, enabled: bool = True, every_s: float = 30.0,
               min_interval_s: float = 1.0, first_compile: bool = False, stream=None):
    self.stream = stream or sys.stderr
    self.prefix = f'[{label}] ' if label else ''
    self.desc = f'{self.prefix}epoch {epoch}/{epochs}'
    self.per_epoch, self.batch_size = per_epoch, batch_size
    self.enabled = enabled
    self.every_s, self.min_interval_s = every_s, min_interval_s
    self.tty = _is_tty(self.stream)
    self.start_index = start_index
    self.start = self.last_print = self.last_loss = time.time()
    self.compiling = first_compile and enabled
    self.bar: tqdm | None = None
    if enabled and self.tty:
      self.bar = tqdm(total=per_epoch, initial=start_index, desc=self.desc, leave=False,
                      mininterval=min_interval_s, file=self.stream)
    if self.compiling:
      self._line(f'{self.desc}: compiling the train step (or loading it from the compilation '
                 'cache)')

  def _line(self, text: str):
    if self.bar is not None:
      self.bar.write(text, file=self.stream)
    else:
      print(text, file=self.stream, flush=True)

  def update(self, index: int, metrics):
    """After step `index` (1-based within the epoch); metrics: the running sums on device."""
    if not self.enabled:
      return
    now = time.time()
    if self.compiling:
      jax.block_until_ready(metrics)
      now = time.time()
      self._line(f'{self.desc}: first train step (compilation included) took '
                 f'{now - self.start:.1f} s')
      self.compiling = False
      self.start, self.start_index = now, index
    if self.bar is not None:
      self.bar.update(1)
      if now - self.last_loss >= self.min_interval_s:
        self.bar.set_postfix(loss=f'{self._loss(metrics):.4f}', refresh=False)
        self.last_loss = now
    elif now - self.last_print >= self.every_s and index < self.per_epoch:
      self.last_print = now
      done = index - self.start_index
      rate = done / max(now - self.start, 1e-9)
      eta = datetime.timedelta(seconds=round((self.per_epoch - index) / max(rate, 1e-9)))
      self._line(f'{self.desc}  step {index}/{self.per_epoch} ({100 * index // self.per_epoch}%)'
                 f'  {rate * self.batch_size:.0f} img/s  loss {self._loss(metrics):.4f}'
                 f'  ETA {eta}')

  @staticmethod
  def _loss(metrics) -> float:
    sums = jax.device_get(metrics)
    return float(sums['loss']) / max(int(sums['count']), 1)

  def close(self):
    if self.bar is not None:
      self.bar.close()
      self.bar = None
