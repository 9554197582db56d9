r"""CPU training speed side by side with PyTorch: the same models, optimizer and batches.

  pip install -e '.[bench]'     # in the checkout: PyTorch; CPU-only wheels:
  pip install torch --index-url https://download.pytorch.org/whl/cpu
  python -m reproduce.benchmarks.vs_pytorch [--json]           # both benchmarks (~5 min, 2 cores)
  python -m reproduce.benchmarks.vs_pytorch --benchmarks=lenet5 --rounds=3
  python -m reproduce.benchmarks.vs_pytorch --tiny                # smoke test, seconds

Two figures, each qprune's time against PyTorch's in ONE process, the two alternating (A, B, A,
B, ...) so that load from other processes hits both alike; reported are medians and the ratio:
  resnet20  the train step on CIFAR-shaped data (32x32x3) at --resnet_batch (256), images/s;
            PyTorch in channels_last. `ratio` = qprune img/s / PyTorch img/s (> 1: qprune faster).
  lenet5    a training epoch on MNIST-shaped data (60k x 28x28x1) at --lenet_batch (128), s.
            `ratio` = qprune s / PyTorch s (< 1: qprune faster).
qprune runs its real jitted train step (`qprune.train.steps.make_train_step`, what `qprune.fit`
runs: on-device batch gather from the uint8 split, augmentation, SGD, metrics accumulated on
device), with `conv_impl='auto'`, qprune's CPU compiler options and, as `python -m qprune.main`
does, glibc's huge-page malloc (this binary re-executes itself the same way, so PyTorch shares
that allocator setting). PyTorch runs the same models built here (`TorchLeNet5`,
`TorchResNet20`: same layer shapes and parameter counts, BatchNorm momentum 0.9 in Flax's sense,
eps 1e-5, conv kernels without bias, option-A shortcuts), the same work per step (index the
uint8 split by a random permutation, for ResNet-20 the same zero-pad-4 random crop + horizontal
flip, normalize inside the model, cross-entropy, SGD with Nesterov momentum 0.9, weight decay
5e-4 on conv/dense kernels only, cosine learning rate, loss and accuracy summed without a host
sync) and `torch.set_num_threads(--threads)` (default: all cores). Data are synthetic uint8
images of the real shapes (speed does not depend on their values).

Warm-up is excluded on both sides: XLA's compile plus --warmup steps, PyTorch's --warmup steps.
Every qprune timing blocks on its result (`jax.block_until_ready`); PyTorch on CPU is
synchronous. Between the two sides the process sleeps --switch_pause_s, so that one library's
worker threads, which spin for a while after their last task, have gone idle before the other
starts. With --json the last line is one JSON object with both ratios and the load average.
"""
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qprune import models
from qprune.data import pipeline
from qprune.ops import malloc
from qprune.train import loop, parallel, steps
from qprune.train.state import create_state

BENCHMARKS = ('resnet20', 'lenet5')

_MEAN, _STD = 0.5, 0.5  # the zoo models' default input normalization (fractions of 255)


# ---------------------------------------------------------------------------------------------
# PyTorch side. torch is imported lazily: it is an optional extra (.[bench]).

def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise app.UsageError("this benchmark needs PyTorch: pip install -e '.[bench]' in the "
                         'checkout (CPU wheels: --index-url https://download.pytorch.org/whl/cpu)'
                         ) from None
  return torch


def _normalize(torch, images):
  """uint8 NCHW -> float, the same arithmetic as qprune's `normalize_images`."""
  return (images.to(torch.float32) - _MEAN * 255.0) / (_STD * 255.0)


def torch_lenet5(num_classes: int = 10):
  """qprune's zoo `lenet5` in PyTorch: conv 20@5x5 VALID -> BN -> ReLU -> maxpool 2 -> conv
  50@5x5 -> BN -> ReLU -> maxpool 2 -> dense 500 -> ReLU -> dense (431k params)."""
  torch = _torch()
  nn = torch.nn

  class TorchLeNet5(nn.Module):  # type: ignore[name-defined]  # torch is imported lazily

    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(1, 20, 5, bias=False), nn.BatchNorm2d(20, eps=1e-5, momentum=0.1), nn.ReLU(),
          nn.MaxPool2d(2), nn.Conv2d(20, 50, 5, bias=False),
          nn.BatchNorm2d(50, eps=1e-5, momentum=0.1), nn.ReLU(), nn.MaxPool2d(2))
      self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, num_classes)

    def forward(self, images):
      x = self.features(_normalize(torch, images))
      return self.fc2(torch.relu(self.fc1(x.flatten(1))))

  return TorchLeNet5()


def torch_resnet20(num_classes: int = 10):
  """qprune's zoo `resnet20` in PyTorch: 3x3 stem 16, 3 stages of 3 basic blocks (16, 32, 64
  channels), option-A shortcuts (stride-2 subsampling, zero-padded channels), global average
  pool, dense (0.27M params)."""
  torch = _torch()
  nn, functional = torch.nn, torch.nn.functional

  def conv_bn(c_in, c_out, stride):
    # Flax's BatchNorm momentum 0.9 (weight of the old statistics) is PyTorch's momentum 0.1.
    return (nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1))

  class Block(nn.Module):  # type: ignore[name-defined]

    def __init__(self, c_in, c_out, stride):
      super().__init__()
      self.conv1, self.bn1 = conv_bn(c_in, c_out, stride)
      self.conv2, self.bn2 = conv_bn(c_out, c_out, 1)
      self.stride, self.extra = stride, c_out - c_in

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
      if self.extra:
        shortcut = functional.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
      return torch.relu(y + shortcut)

  class TorchResNet20(nn.Module):  # type: ignore[name-defined]

    def __init__(self):
      super().__init__()
      self.conv, self.bn = conv_bn(3, 16, 1)
      blocks, c_in = [], 16
      for c_out in (16, 32, 64):
        for b in range(3):
          blocks.append(Block(c_in, c_out, 2 if (c_out > 16 and b == 0) else 1))
          c_in = c_out
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(64, num_classes)

    def forward(self, images):
      x = torch.relu(self.bn(self.conv(_normalize(torch, images))))
      return self.fc(self.blocks(x).mean((2, 3)))

  return TorchResNet20()


def torch_param_count(model) -> int:
  return sum(p.numel() for p in model.parameters())


class TorchRunner:
  """PyTorch's train step over a uint8 NCHW split, doing the work qprune's step does."""

  def __init__(self, model, images_nhwc: np.ndarray, labels: np.ndarray, batch_size: int,
               total_steps: int, crop_flip: bool, channels_last: bool,
               dtype: str = 'float32'):
    torch = self.torch = _torch()
    self.channels_last = channels_last
    if dtype not in ('float32', 'bfloat16'):
      raise ValueError(f'dtype must be float32 or bfloat16, not {dtype!r}')
    # bfloat16: PyTorch's CPU mixed precision (float32 parameters, autocast to bfloat16), the
    # counterpart of qprune's compute_dtype=bfloat16.
    self.bf16_autocast = dtype == 'bfloat16'
    self.model = model.train()
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.images = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    self.labels = torch.from_numpy(labels.astype(np.int64))
    self.batch_size, self.crop_flip = batch_size, crop_flip
    # Weight decay on conv/dense kernels only, as qprune's `optim.decay_mask`.
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    self.opt = torch.optim.SGD([{'params': decay, 'weight_decay': 5e-4},
                                {'params': rest, 'weight_decay': 0.0}],
                               lr=0.1, momentum=0.9, nesterov=True)
    self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(total_steps, 1))
    self.generator = torch.Generator().manual_seed(0)
    self.loss_sum, self.correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
    self.perm = torch.randperm(len(self.labels), generator=self.generator)

  def new_epoch(self):
    self.perm = self.torch.randperm(len(self.labels), generator=self.generator)

  def _augment(self, x):
    """Zero-pad 4, per-image random crop back to HxW, random horizontal flip (NCHW uint8)."""
    torch = self.torch
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b, 1, 1, 1), generator=self.generator)
    dx = torch.randint(0, 9, (b, 1, 1, 1), generator=self.generator)
    flip = torch.rand((b, 1, 1, 1), generator=self.generator) < 0.5
    cols = torch.arange(w).view(1, 1, 1, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx
    rows = torch.arange(h).view(1, 1, h, 1) + dy
    n = torch.arange(b).view(b, 1, 1, 1)
    c = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    return padded[n, c, rows, cols]

  def step(self, index: int):
    torch = self.torch
    idx = self.perm[index * self.batch_size:(index + 1) * self.batch_size]
    x, y = self.images[idx], self.labels[idx]
    if self.crop_flip:
      x = self._augment(x)
    if self.channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bf16_autocast):
      logits = self.model(x)
      loss = torch.nn.functional.cross_entropy(logits, y)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    self.schedule.step()
    with torch.no_grad():
      self.loss_sum += loss.detach() * self.batch_size
      self.correct += (logits.argmax(-1) == y).sum()

  def sync(self):
    return float(self.loss_sum)  # CPU ops are synchronous; this only reads the sum


# ---------------------------------------------------------------------------------------------
# qprune side.

class QpruneRunner:
  """qprune's jitted train step (the one `qprune.fit` builds) over a device-resident split."""

  def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, batch_size: int,
               augment: str, dtype: str = 'float32'):
    shape = images.shape[1:]
    self.model = models.create_model(name, 10, dtype=jnp.dtype(dtype))
    variables = models.init_variables(self.model, jax.random.PRNGKey(0), shape)
    mesh = parallel.make_mesh()
    n = len(labels)
    self.images = jax.device_put(images, parallel.replicated(mesh))
    self.labels = jax.device_put(labels, parallel.replicated(mesh))
    options = loop.TrainOptions(epochs=1, batch_size=batch_size, augment=augment)
    tx = loop.make_optimizer(options, n)
    self.state = jax.device_put(create_state(variables, tx), parallel.replicated(mesh))
    self.step_fn = steps.make_train_step(model=self.model, tx=tx, batch_size=batch_size,
                                         augment=pipeline.AUGMENTATIONS[augment],
                                         batch_sharding=parallel.batch_sharded(mesh))
    self.key = jax.random.PRNGKey(0)
    self.metrics = jax.device_put(steps.zero_metrics(), parallel.replicated(mesh))
    self.epoch, self.n = 0, n
    self.perm = pipeline.epoch_permutation(self.key, 0, n)

  def new_epoch(self):
    self.epoch += 1
    self.perm = pipeline.epoch_permutation(self.key, self.epoch, self.n)

  def step(self, index: int):
    self.state, self.metrics = self.step_fn(self.state, self.images, self.labels, self.perm,
                                            jnp.int32(index), self.key, {}, self.metrics)

  def sync(self):
    jax.block_until_ready((self.state, self.metrics))


# ---------------------------------------------------------------------------------------------

def _data(n: int, shape, seed: int = 0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
          rng.integers(0, 10, (n,), dtype=np.int32))


def _timed(runner, indices, pause_s: float) -> float:
  time.sleep(pause_s)
  start = time.perf_counter()
  for i in indices:
    runner.step(i)
  runner.sync()
  return time.perf_counter() - start


def _load() -> list:
  return [round(v, 2) for v in os.getloadavg()]


def bench_resnet20(batch_size: int, n_steps: int, block: int, warmup: int,
                   pause_s: float = 0.3, dtype: str = 'float32') -> dict:
  """Images/s of one train step, the sides alternating every `block` steps."""
  images, labels = _data(batch_size * 2, (32, 32, 3))
  q = QpruneRunner('resnet20', images, labels, batch_size, 'crop_flip', dtype)
  t = TorchRunner(torch_resnet20(), images, labels, batch_size, 10**6, crop_flip=True,
                  channels_last=True, dtype=dtype)
  for runner in (q, t):
    for i in range(warmup + 1):  # qprune: the first call compiles
      runner.step(i % 2)
    runner.sync()
  times: dict = {'qprune': [], 'pytorch': []}
  load_before = _load()
  done = 0
  while done < n_steps:
    k = min(block, n_steps - done)
    for side, runner in (('qprune', q), ('pytorch', t)):
      for j in range(k):
        times[side].append(_timed(runner, [(done + j) % 2], pause_s if j == 0 else 0.0))
    done += k
  q_s, t_s = statistics.median(times['qprune']), statistics.median(times['pytorch'])
  return {'benchmark': 'resnet20_train_step', 'dtype': dtype, 'batch_size': batch_size,
          'steps': n_steps,
          'qprune_images_per_s': batch_size / q_s, 'pytorch_images_per_s': batch_size / t_s,
          'ratio': t_s / q_s, 'ratio_means': 'qprune img/s / PyTorch img/s',
          'qprune_step_s': q_s, 'pytorch_step_s': t_s,
          'qprune_params': models.count_params(q.state.params),
          'pytorch_params': torch_param_count(t.model),
          'load_before': load_before, 'load_after': _load()}


def bench_lenet5(batch_size: int, n_images: int, rounds: int, warmup: int,
                 pause_s: float = 0.3, dtype: str = 'float32') -> dict:
  """Seconds of one training epoch (n_images // batch_size steps), sides alternating by epoch."""
  images, labels = _data(n_images, (28, 28, 1))
  per_epoch = loop.steps_per_epoch(n_images, batch_size)
  q = QpruneRunner('lenet5', images, labels, batch_size, 'none', dtype)
  t = TorchRunner(torch_lenet5(), images, labels, batch_size, per_epoch * (rounds + 1),
                  crop_flip=False, channels_last=False, dtype=dtype)
  for runner in (q, t):
    for i in range(warmup + 1):
      runner.step(i % per_epoch)
    runner.sync()
  times: dict = {'qprune': [], 'pytorch': []}
  load_before = _load()
  for _ in range(rounds):
    for side, runner in (('qprune', q), ('pytorch', t)):
      runner.new_epoch()
      times[side].append(_timed(runner, range(per_epoch), pause_s))
  q_s, t_s = statistics.median(times['qprune']), statistics.median(times['pytorch'])
  return {'benchmark': 'lenet5_epoch', 'dtype': dtype, 'batch_size': batch_size,
          'images': n_images,
          'steps_per_epoch': per_epoch, 'rounds': rounds,
          'qprune_epoch_s': q_s, 'pytorch_epoch_s': t_s, 'ratio': q_s / t_s,
          'ratio_means': 'qprune s / PyTorch s', 'qprune_epochs_s': times['qprune'],
          'pytorch_epochs_s': times['pytorch'],
          'qprune_images_per_s': per_epoch * batch_size / q_s,
          'pytorch_images_per_s': per_epoch * batch_size / t_s,
          'qprune_params': models.count_params(q.state.params),
          'pytorch_params': torch_param_count(t.model),
          'load_before': load_before, 'load_after': _load()}


def define_flags() -> None:
  """The command-line flags, defined only when run as a script: importing the module (tests) must
  not clash with the other benchmarks' flags of the same names."""
  flags.DEFINE_list('benchmarks', list(BENCHMARKS), f'any of {BENCHMARKS}')
  flags.DEFINE_integer('resnet_batch', 256, 'ResNet-20 batch size', lower_bound=1)
  flags.DEFINE_integer('resnet_steps', 24, 'timed ResNet-20 steps per side', lower_bound=1)
  flags.DEFINE_integer('resnet_block', 3, 'ResNet-20 steps per turn of a side', lower_bound=1)
  flags.DEFINE_integer('lenet_batch', 128, 'LeNet-5 batch size', lower_bound=1)
  flags.DEFINE_integer('lenet_images', 60000, 'LeNet-5 training-set size', lower_bound=1)
  flags.DEFINE_integer('rounds', 3, 'timed LeNet-5 epochs per side, alternating', lower_bound=1)
  flags.DEFINE_integer('warmup', 5, 'untimed warm-up steps per side (after compiling)',
                       lower_bound=1)
  flags.DEFINE_integer('threads', None, 'torch.set_num_threads (default: all cores)')
  flags.DEFINE_float('switch_pause_s', 0.3, 'sleep before each turn of a side')
  flags.DEFINE_bool('tiny', False, 'smoke-test sizes: batch 8/32, 2 steps, 1 round')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                    'compute dtype of both sides: qprune compute_dtype, PyTorch CPU autocast')
  flags.DEFINE_bool('json', False, 'print one JSON object as the last line')


def main(argv):
  del argv
  f = flags.FLAGS
  unknown = sorted(set(f.benchmarks) - set(BENCHMARKS))
  if unknown:
    raise app.UsageError(f'unknown --benchmarks {unknown}; choose from {BENCHMARKS}')
  torch = _torch()
  threads = f.threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  tiny = f.tiny
  rows = []
  print(f'{f.dtype}: {"benchmark":12s} {"qprune":>12s} {"PyTorch":>12s} {"ratio":>7s}  '
        'load (1/5/15 min)')
  if 'resnet20' in f.benchmarks:
    r = bench_resnet20(8 if tiny else f.resnet_batch, 2 if tiny else f.resnet_steps,
                       1 if tiny else f.resnet_block, 1 if tiny else f.warmup,
                       f.switch_pause_s, f.dtype)
    rows.append(r)
    print(f'{"resnet20 step, b=" + str(r["batch_size"]):22s} {r["qprune_images_per_s"]:8.1f} '
          f'im/s {r["pytorch_images_per_s"]:8.1f} im/s {r["ratio"]:6.2f}x  {r["load_after"]}',
          flush=True)
  if 'lenet5' in f.benchmarks:
    r = bench_lenet5(32 if tiny else f.lenet_batch, 256 if tiny else f.lenet_images,
                     1 if tiny else f.rounds, 1 if tiny else f.warmup, f.switch_pause_s,
                     f.dtype)
    rows.append(r)
    print(f'{"lenet5 epoch, b=" + str(r["batch_size"]):22s} {r["qprune_epoch_s"]:10.2f} s '
          f'{r["pytorch_epoch_s"]:10.2f} s {r["ratio"]:6.2f}x  {r["load_after"]}', flush=True)
  if f.json:
    summary = {'backend': jax.default_backend(), 'cpu_count': os.cpu_count(),
               'torch_threads': threads, 'torch_version': torch.__version__,
               'jax_version': jax.__version__, 'anon_huge_mib': malloc.anon_huge_mib(),
               'dtype': f.dtype, 'tiny': tiny, 'rows': rows}
    for r in rows:
      summary[r['benchmark'] + '_ratio'] = r['ratio']
    print(json.dumps(summary))


if __name__ == '__main__':
  malloc.reexec_with_hugepages()  # as qprune.main does: see qprune/ops/malloc.py
  define_flags()
  app.run(main)
