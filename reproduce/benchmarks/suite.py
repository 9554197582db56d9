r"""The GPU suite: one command that measures what qprune's speed rests on, sized for a lent device.

  python -m reproduce.benchmarks.suite --out=DIR [--data_dir=D] [--tiny] [--sections=kmeans,search]

Writes DIR/suite.json (one object: the device, versions, and per section its status, wall time,
limit and numbers or the reason it was skipped) and DIR/suite.md (the tables, also printed),
both rewritten after every section, so a suite stopped from outside keeps what it measured.
--data_dir (default $QPRUNE_DATA_DIR) holds cifar10.tar.gz or cifar10/; without it the two
real-data sections are skipped with that reason; without ml_collections (which `qprune.main`
needs; no other section imports it, nor TensorFlow) the pipeline is. --tiny: small widths, few
steps, tiny subsets, the pipeline on LeNet-5, so the whole suite runs on a CPU in a test (~2 min
of CPU time; the numbers then only show that it ran). --sections and --budget_s rerun a part.

Sections, in the order they run (cheap and all-or-nothing first; the train-step table last,
because it stops model by model and so fits whatever time is left):
  kmeans      clustered target selection for k = 1..8 on every layer of ResNet-56: one jitted
              call (`benchmarks.kmeans.time_qprune`), warm median.
  search      scoring K = 32 candidate channel masks of ResNet-20 on 10k held-out images (BN
              re-estimated per candidate): one vmapped call versus a Python loop over the same
              compiled single-candidate function (helpers of `benchmarks.prune_search`;
              synthetic images, timing only), warm medians.
  epoch       ResNet-20 CIFAR-10 epochs with the real input pipeline: the uint8 splits loaded
              by `qprune.data` onto the device, batches gathered and crop/flip-augmented on
              device inside the step, `qprune.train.loop.fit` (what every mode trains with); per
              (batch, dtype) setting the first epoch (compilation included) and the warm median.
  pipeline    the binary's mode=pipeline on CIFAR-10 ResNet-20 (pretrain -> search -> shrink ->
              fine-tune -> INQ -> export) at a short schedule, as a subprocess of
              `python -m qprune.main --config=configs/cifar10_resnet20_pipeline.py` with
              overrides: wall time and accuracies from its results.json.
  throughput  warm train-step images/s of every zoo model in float32 and bfloat16, qprune's step
              versus the plain Flax/XLA step (`benchmarks.train_step._worker`, variants qprune
              and plain), and for ResNet-20 the conv path that conv_impl='auto' does not pick on
              this backend (on a GPU: 'fast', the kernel gradient as matmuls). The variants
              alternate in one process here (on a CPU, train_step's own runs, a process per
              variant, are the fair comparison: see README, Speed).
Timing: compilation excluded (warm-up calls first), every timed call blocked on, medians of
repeats, ratios only between numbers of one run. Each section runs in its own process: the
benchmark modules reused here define absl flags at import, two of them the same (--model), and
JAX preallocates most of a GPU's memory per process (this parent never starts a backend). Each
process shares one fresh persistent compilation cache (or $JAX_COMPILATION_CACHE_DIR): on a GPU
qprune's step and the plain one are the same XLA program (conv 'auto' is XLA's conv there and no
compiler options are added), so the second compiles from the cache; compilation is never timed.

Budget on one H100/H200 (estimates from FLOPs; nothing here has run on one yet). The model MACs
per image: LeNet-5 2.3M, ResNet-20/32/56/110 41M/69M/125M/253M, VGG-11/16/19 153M/313M/398M,
AlexNet 225M; a train step is ~6 x MACs per image (forward 2, backward 4).
  kmeans       0.85M weights, 448 clusterings: milliseconds per call; ~5 s compile.   ~15 s
  search       forward 2 x 41M MACs x (10000 + 128) images x 32 candidates = 26 TFLOP a pass,
               1 + 3 passes each way: ~0.2 PFLOP, ~8 s at 25 TFLOP/s; 2 compiles.      ~30 s
  epoch        6 x 41M x 50000 = 12 TFLOP an epoch (~0.5 s at 25 TFLOP/s; at batch 128 rather
               bound by 390 steps of ~200 small kernels, ~1-2 s); 3 settings x 3 epochs, a
               compile each (~10 s), CIFAR-10 decoded once (~15 s on 16 cores).        ~60 s
  pipeline     3 pretraining + 2 fine-tuning + 2 INQ epochs (~15 s), ~8 compiles (~60 s),
               search, export, report.                                                 ~90 s
  throughput   9 models x 2 dtypes x 2 variants x 23 steps of batch 256: 0.22 PFLOP, ~5 s;
               compiles dominate (~2 s LeNet-5 to ~30 s ResNet-110 each, plain from the
               cache; 2 more for ResNet-20's other conv path).                        ~150 s
Plus ~5 s of process start-up per section: ~370 s expected. Hard limits (a section is killed at
its limit; what it finished is kept): kmeans 40 s, search 75 s, epoch 110 s, pipeline 150 s,
throughput what is left of --budget_s (480 s); epoch and throughput start a setting or model
only while the rest of their soft budget (0.8 x the limit; throughput: the limit less 10 s)
exceeds 1.2 x the longest one so far, and name the ones they skip with why.
"""
import importlib.util
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from qprune import files

_OUT = flags.DEFINE_string('out', None, 'folder for suite.json and suite.md')
_TINY = flags.DEFINE_bool('tiny', False, 'small widths, few steps, tiny subsets: a CPU smoke run')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'folder holding cifar10.tar.gz or cifar10/ (default '
                                '$QPRUNE_DATA_DIR); without it epoch and pipeline are skipped')
_SECTIONS = flags.DEFINE_list('sections', None, 'run only these sections (default: all)')
_BUDGET = flags.DEFINE_float('budget_s', None, 'the whole suite\'s time budget (default 480 s, '
                             '--tiny 900 s); sections are cut to fit it')
_SECTION = flags.DEFINE_string('section', None, 'internal: run this one section in this process')
_PARTIAL = flags.DEFINE_string('partial', None, 'internal: the JSON file a section writes')
_SECTION_BUDGET = flags.DEFINE_float('section_budget_s', None, 'internal: its soft budget')

ORDER = ('kmeans', 'search', 'epoch', 'pipeline', 'throughput')
NEEDS_DATA = ('epoch', 'pipeline')
# Hard limits per section in seconds (see the module docstring); None: what is left.
LIMITS = {'kmeans': 40, 'search': 75, 'epoch': 110, 'pipeline': 150, 'throughput': None}
TINY_LIMITS = {'kmeans': 120, 'search': 180, 'epoch': 180, 'pipeline': 300, 'throughput': None}
_GRACE_S = 10  # what the throughput section's soft budget keeps back from its hard limit

ZOO_ORDER = ('resnet20', 'lenet5', 'alexnet', 'vgg11', 'resnet32', 'vgg16', 'vgg19', 'resnet56',
             'resnet110')  # the headline model first, ResNet-110 (the longest compile) last

FULL: dict[str, dict] = {
    'kmeans': {'model': 'resnet56', 'k_max': 8, 'repeats': 21},
    'search': {'width': 1.0, 'num_images': 10000, 'candidates': 32, 'batch_size': 100,
               'bn_batches': 2, 'bn_batch_size': 64, 'repeats': 3},
    'epoch': {'width': 1.0, 'train_subset': 0, 'eval_subset': 0, 'epochs': 3,
              'settings': ((128, 'float32'), (256, 'float32'), (256, 'bfloat16'))},
    'pipeline': {'overrides': ('--config.epochs=3', '--config.prune.stop_rule=full',
                               '--config.prune.finetune_epochs=2',
                               '--config.quant.schedule=(0.5, 1.0)',
                               '--config.quant.retrain_epochs=1')},
    'throughput': {'models': ZOO_ORDER, 'batch_size': 256, 'steps': 20,
                   'dtypes': ('float32', 'bfloat16'), 'alt_conv': ('resnet20',)},
}
TINY: dict[str, dict] = {
    'kmeans': {'model': 'resnet20', 'k_max': 3, 'repeats': 3},
    'search': {'width': 0.25, 'num_images': 100, 'candidates': 4, 'batch_size': 50,
               'bn_batches': 1, 'bn_batch_size': 32, 'repeats': 1},
    'epoch': {'width': 0.25, 'train_subset': 256, 'eval_subset': 100, 'epochs': 2,
              'settings': ((32, 'float32'),)},
    # LeNet-5, not ResNet-20: its ~10 compilations take a third of the time on a CPU (the test
    # checks the full-size command with --only_check_args instead).
    'pipeline': {'overrides': (
        '--config.model=lenet5', '--config.width=0.25', '--config.train_subset=600',
        '--config.eval_subset=100', '--config.batch_size=50', '--config.eval_batch_size=100',
        '--config.epochs=1', '--config.prune.stop_rule=full', '--config.prune.holdout=200',
        '--config.prune.bn_batches=1',
        "--config.prune.search_criteria=('l1',)", '--config.prune.search_ratios=(0.5,)',
        "--config.prune.search_selections=('uniform',)", '--config.prune.finetune_epochs=1',
        '--config.quant.schedule=(0.5, 1.0)', '--config.quant.retrain_epochs=1')},
    'throughput': {'models': ('lenet5',), 'batch_size': 8, 'steps': 2,
                   'dtypes': ('float32', 'bfloat16'), 'alt_conv': ()},
}

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPELINE_CONFIG = os.path.join(REPO_ROOT, 'configs', 'cifar10_resnet20_pipeline.py')


# ---------------------------------------------------------------- sections (in their process)

class _Section:
  """What a section process has written so far: rewritten after every finished item, so a
  section killed at its hard limit still reports what it measured."""

  def __init__(self, path: str, budget_s: float | None):
    self.path, self.budget_s, self.start = path, budget_s, time.perf_counter()
    self.data: dict = {}

  def remaining(self) -> float:
    if self.budget_s is None:
      return float('inf')
    return self.budget_s - (time.perf_counter() - self.start)

  def save(self, **values):
    self.data.update(values)
    self.data['worker_s'] = time.perf_counter() - self.start
    files.write_json_atomic(self.path, self.data, indent=None)


def _environment() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {'device_kind': devices[0].device_kind, 'platform': devices[0].platform,
          'device_count': len(devices), 'jax': jax.__version__,
          'jaxlib': getattr(jaxlib, '__version__', '?'), 'flax': flax.__version__,
          'optax': optax.__version__, 'python': platform.python_version(),
          'cpu_count': os.cpu_count()}


def _dtype(name):
  from reproduce.benchmarks import train_step  # pylint: disable=g-import-not-at-top
  return train_step.DTYPES[name]


def _kmeans(size: dict, ctx: _Section, data_dir: str | None):
  del data_dir
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from reproduce.benchmarks import kmeans as kmeans_bench  # pylint: disable=g-import-not-at-top
  layers = kmeans_bench.kaiming_layers(size['model'])
  arrays = [jnp.asarray(a) for a in layers.values()]
  start = time.perf_counter()
  seconds = kmeans_bench.time_qprune(arrays, size['k_max'], size['repeats'])[0]
  ctx.save(results={'model': size['model'], 'layers': len(arrays),
                    'weights': int(sum(a.size for a in arrays)), 'k_max': size['k_max'],
                    'clusterings': len(arrays) * size['k_max'], 'repeats': size['repeats'],
                    'qprune_s': seconds,
                    'first_call_and_repeats_s': time.perf_counter() - start})


def _search(size: dict, ctx: _Section, data_dir: str | None):
  del data_dir
  import jax  # pylint: disable=g-import-not-at-top

  from qprune import prune  # pylint: disable=g-import-not-at-top
  from qprune.models import create_model, init_variables  # pylint: disable=g-import-not-at-top
  from reproduce.benchmarks import prune_search as ps  # pylint: disable=g-import-not-at-top
  model = create_model('resnet20', 10, width=size['width'])
  variables = init_variables(model, jax.random.PRNGKey(0), ps.SHAPE)
  groups = prune.derive_groups(variables, residual=True)
  bn, images, labels = ps.synthetic_data(size['num_images'], size['batch_size'],
                                         size['bn_batches'], size['bn_batch_size'])
  cands = ps.candidate_list(size['candidates'])
  masks = prune.candidate_masks(variables, groups, cands, rng=jax.random.PRNGKey(1))
  stacked = prune.stack_masks(masks)

  def vmap_fn():
    return prune.evaluate_candidates(model, groups, variables, stacked, bn, images, labels)

  def loop_fn():
    return [prune.evaluate_masks_jit(model, groups, variables, m, bn, images, labels)
            for m in masks]

  out = {'model': 'resnet20', 'width': size['width'], 'candidates': len(cands),
         'num_images': int(labels.size), 'synthetic_images': True, 'repeats': size['repeats']}
  for name, fn, needle in (('vmap', vmap_fn, 'evaluate_candidates'),
                           ('loop', loop_fn, 'evaluate_masks')):
    start = time.perf_counter()
    _, compiles = ps.count_compiles(needle, lambda f=fn: jax.block_until_ready(f()))
    out[f'{name}_first_call_s'] = time.perf_counter() - start
    out[f'{name}_compiles'] = compiles
    out[f'{name}_s'] = ps.timed(fn, size['repeats'])
    ctx.save(results=out)
  out['loop_over_vmap'] = out['loop_s'] / out['vmap_s']
  ctx.save(results=out)


def _epoch(size: dict, ctx: _Section, data_dir: str | None):
  import jax  # pylint: disable=g-import-not-at-top

  from qprune.data import pipeline  # pylint: disable=g-import-not-at-top
  from qprune.train import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  start = time.perf_counter()
  data = pipeline.load_data('cifar10', data_dir, train_subset=size['train_subset'],
                            eval_subset=size['eval_subset'], sharding=parallel.replicated(mesh),
                            allow_download=False)
  jax.block_until_ready((data.train.images, data.test.images))
  out = {'model': 'resnet20', 'width': size['width'], 'train_images': data.train.size,
         'test_images': data.test.size, 'epochs': size['epochs'],
         'data_load_s': time.perf_counter() - start, 'rows': [], 'skipped': {}}
  ctx.save(results=out)
  longest = 0.0
  for batch_size, dtype in size['settings']:
    label = f'batch {batch_size} {dtype}'
    if longest and ctx.remaining() < 1.2 * longest:
      out['skipped'][label] = (f'time box: {max(ctx.remaining(), 0):.0f} s of the section left, '
                               f'a setting took {longest:.0f} s')
      continue
    setting_start = time.perf_counter()
    try:
      out['rows'].append(_epoch_row(data, mesh, size, batch_size, dtype))
    except Exception as e:  # pylint: disable=broad-except  (one setting's failure)
      out['skipped'][label] = f'failed: {type(e).__name__}: {str(e)[:500]}'
    if out['rows'] and 'vs_first_setting' not in out['rows'][-1]:
      out['rows'][-1]['vs_first_setting'] = (out['rows'][-1]['images_per_s']
                                             / out['rows'][0]['images_per_s'])
    longest = max(longest, time.perf_counter() - setting_start)
    ctx.save(results=out)


def _epoch_row(data, mesh, size: dict, batch_size: int, dtype: str) -> dict:
  """fit() for size['epochs'] epochs at one (batch, dtype): first and warm epoch times."""
  import jax  # pylint: disable=g-import-not-at-top

  from qprune import models  # pylint: disable=g-import-not-at-top
  from qprune.train import loop  # pylint: disable=g-import-not-at-top
  info = data.info
  model = models.create_model('resnet20', info.num_classes, width=size['width'],
                              dtype=_dtype(dtype), mean=info.mean, std=info.std)
  variables = models.init_variables(model, jax.random.PRNGKey(0), info.shape)
  # The recipe of configs/cifar10_resnet20.py, the learning rate scaled with the batch as
  # configs/cifar10_resnet20_gpu.py does; progress off (no per-step host sync of a bar).
  options = loop.TrainOptions(epochs=size['epochs'], batch_size=batch_size,
                              learning_rate=0.1 * batch_size / 128, weight_decay=1e-4,
                              augment='crop_flip', eval_every=size['epochs'], progress=False)
  fit = loop.fit(model, variables, data, options, None, mesh=mesh)
  times = [h['epoch_time_s'] for h in fit.history]
  warm = statistics.median(times[1:]) if len(times) > 1 else times[0]
  steps = loop.steps_per_epoch(data.train.size, batch_size)
  return {'batch_size': batch_size, 'dtype': dtype, 'steps_per_epoch': steps,
          'first_epoch_s': times[0], 'warm_epoch_s': warm, 'epoch_times_s': times,
          'images_per_s': steps * batch_size / warm, 'test_accuracy': fit.test_accuracy,
          'fit_wall_s': fit.wall_time_s}


def _steps_summary(times, batch_size, macs) -> dict:
  step_s = statistics.median(times)
  return {'images_per_s': batch_size / step_s, 'step_s': step_s,
          'gflops_per_s': 6 * macs * batch_size / step_s / 1e9}


def _alt_conv_times(name, batch_size, n_steps, conv_impl, dtype):
  """train_step's worker loop for a conv path that is not one of its variants."""
  from reproduce.benchmarks import train_step  # pylint: disable=g-import-not-at-top
  runner = train_step._Runner(name, batch_size, conv_impl, False, dtype)
  for _ in range(3):  # compile, then let caches and allocations settle (as _worker does)
    runner.step()
  return [runner.step() for _ in range(n_steps)]


def _throughput(size: dict, ctx: _Section, data_dir: str | None):
  del data_dir
  from qprune import models  # pylint: disable=g-import-not-at-top
  from qprune.ops import compile as compile_lib  # pylint: disable=g-import-not-at-top
  from qprune.ops import conv  # pylint: disable=g-import-not-at-top
  auto = conv.resolve_impl('auto')
  alt = 'xla' if auto == 'fast' else 'fast'
  batch_size, n_steps = size['batch_size'], size['steps']
  out = {'batch_size': batch_size, 'steps': n_steps, 'warmup_steps': 3,
         'variants': ['qprune', 'plain'], 'conv_impl_auto': auto,
         'same_program_as_plain': auto == 'xla' and compile_lib.compiler_options() is None,
         'rows': [], 'skipped': {name: '--tiny: not timed' for name in models.MODELS
                                 if name not in size['models']}}
  ctx.save(results=out)
  longest = 0.0
  for name in size['models']:
    if longest and ctx.remaining() < 1.2 * longest:
      out['skipped'][name] = (f'time box: {max(ctx.remaining(), 0):.0f} s of the section left, '
                              f'the longest model so far took {longest:.0f} s')
      ctx.save(results=out)
      continue
    model_start = time.perf_counter()
    try:
      row = _model_row(name, size, alt)
    except Exception as e:  # pylint: disable=broad-except  (one model's failure, not the table's)
      row = {'model': name, 'error': f'{type(e).__name__}: {str(e)[:500]}'}
    row['wall_s'] = time.perf_counter() - model_start
    longest = max(longest, row['wall_s'])
    out['rows'].append(row)
    ctx.save(results=out)


def _model_row(name: str, size: dict, alt: str) -> dict:
  """One zoo model's images/s: qprune and plain per dtype, and the other conv path if asked."""
  from reproduce.benchmarks import train_step  # pylint: disable=g-import-not-at-top
  batch_size, n_steps = size['batch_size'], size['steps']
  row: dict = {'model': name}
  for dtype in size['dtypes']:
    per: dict = {}
    for variant in ('qprune', 'plain'):
      r = train_step._worker(name, batch_size, n_steps, variant, dtype)
      row['macs_per_image'] = r['macs']
      per[variant] = _steps_summary(r['times'], batch_size, r['macs'])
    per['speedup'] = per['qprune']['images_per_s'] / per['plain']['images_per_s']
    if name in size['alt_conv']:
      try:
        times = _alt_conv_times(name, batch_size, n_steps, alt, _dtype(dtype))
        alt_row = {'conv_impl': alt, **_steps_summary(times, batch_size, row['macs_per_image'])}
        alt_row['vs_qprune'] = alt_row['images_per_s'] / per['qprune']['images_per_s']
      except Exception as e:  # pylint: disable=broad-except  (an exploratory path may fail)
        alt_row = {'conv_impl': alt, 'error': f'{type(e).__name__}: {str(e)[:500]}'}
      per['alt_conv'] = alt_row
    row[dtype] = per
  if 'float32' in row and 'bfloat16' in row:
    row['bf16_over_f32'] = (row['bfloat16']['qprune']['images_per_s']
                            / row['float32']['qprune']['images_per_s'])
  return row


SECTIONS = {'kmeans': _kmeans, 'search': _search, 'epoch': _epoch, 'throughput': _throughput}


def _run_section_here(name: str, partial: str):
  """Section mode (--section): measure, writing `partial` (--partial) as it goes."""
  ctx = _Section(partial, _SECTION_BUDGET.value)
  ctx.save(environment=_environment())
  sizes = TINY if _TINY.value else FULL
  SECTIONS[name](sizes[name], ctx, _DATA_DIR.value or None)
  ctx.save(status='ok')


# ---------------------------------------------------------------- the parent

def find_cifar10(data_dir: str | None):
  """(data_dir, None) when it holds CIFAR-10 as qprune reads it offline, else (None, why)."""
  from qprune.data import sources  # pylint: disable=g-import-not-at-top  (numpy only, no JAX)
  if not data_dir:
    return None, ('no data: pass --data_dir (or set $QPRUNE_DATA_DIR) to a folder holding '
                  'cifar10.tar.gz or cifar10/{train,test}/')
  for candidate in sources.local_candidates('cifar10', data_dir):
    if os.path.isdir(os.path.join(candidate, 'train')) or os.path.isfile(candidate):
      return data_dir, None
  return None, f'no data: {data_dir} holds neither cifar10.tar.gz nor cifar10/train/'


def _tail(path: str, n: int = 2000) -> str:
  try:
    with open(path, errors='replace') as f:
      return f.read()[-n:]
  except OSError:
    return ''


def _run_process(cmd, limit_s: float, log_prefix: str, env: dict, capture_stdout: bool):
  """(exit status or None when killed at limit_s, stderr tail, stdout path)."""
  stdout_path, stderr_path = log_prefix + '.stdout', log_prefix + '.stderr'
  with open(stderr_path, 'w') as err, open(stdout_path, 'w') as out:
    # A new session, so that a kill at the limit takes whatever the command started with it.
    proc = subprocess.Popen(cmd, stdout=out if capture_stdout else None, stderr=err, env=env,
                            cwd=REPO_ROOT, start_new_session=True)
    try:
      rc = proc.wait(timeout=max(limit_s, 1))
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      rc = None
  return rc, _tail(stderr_path), stdout_path


def _section_env(cache: str) -> dict:
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
  env['PYTHONUNBUFFERED'] = '1'
  if not env.get('JAX_COMPILATION_CACHE_DIR'):
    env['JAX_COMPILATION_CACHE_DIR'] = cache
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def _measured_section(name, limit_s, soft_s, tmp, env, data_dir, tiny) -> dict:
  partial = os.path.join(tmp, f'{name}.json')
  cmd = [sys.executable, '-m', 'reproduce.benchmarks.suite', f'--section={name}',
         f'--partial={partial}', f'--tiny={tiny}']
  if data_dir:
    cmd.append(f'--data_dir={data_dir}')
  if soft_s is not None:
    cmd.append(f'--section_budget_s={soft_s}')
  rc, stderr, _ = _run_process(cmd, limit_s, os.path.join(tmp, name), env, capture_stdout=False)
  record = files.read_json(partial, required=()) or {}
  if rc is None:
    record.update(status='partial' if record.get('results') else 'failed',
                  reason=f'killed at its hard limit of {limit_s:.0f} s')
  elif rc != 0:
    record.update(status='failed', reason=f'exit status {rc}: {stderr}')
  elif record.get('status') != 'ok':
    record.update(status='failed', reason=f'exited without finishing its results: {stderr}')
  return record


def pipeline_command(workdir: str, data_dir: str, tiny: bool) -> list:
  """The pipeline section's `python -m qprune.main` command line."""
  sizes = TINY if tiny else FULL
  return [sys.executable, '-m', 'qprune.main', f'--config={PIPELINE_CONFIG}',
          f'--workdir={workdir}', f'--config.data_dir={data_dir}', '--config.progress=False',
          *sizes['pipeline']['overrides']]


def _pipeline_section(limit_s, tmp, env, data_dir, tiny) -> dict:
  if not os.path.isfile(PIPELINE_CONFIG):
    return {'status': 'skipped', 'reason': f'{PIPELINE_CONFIG} not found (run from a checkout)'}
  if importlib.util.find_spec('ml_collections') is None:
    return {'status': 'skipped', 'reason': (
        'ml_collections is not installed (qprune.main reads its configs with it): carry its '
        'wheel, see README "GPU suite"')}
  workdir = os.path.join(tmp, 'pipeline_run')
  cmd = pipeline_command(workdir, data_dir, tiny)
  start = time.perf_counter()
  rc, stderr, _ = _run_process(cmd, limit_s, os.path.join(tmp, 'pipeline'), env,
                               capture_stdout=True)
  wall = time.perf_counter() - start
  shown = pipeline_command('W', 'D', tiny)[1:]
  shown[2] = '--config=' + os.path.relpath(PIPELINE_CONFIG, REPO_ROOT)
  record = {'command': ' '.join(['python', *shown])}
  if rc is None:
    return {**record, 'status': 'failed', 'reason': f'killed at its hard limit of {limit_s:.0f} s'}
  if rc != 0:
    return {**record, 'status': 'failed', 'reason': f'exit status {rc}: {stderr}'}
  results = files.read_json(os.path.join(workdir, 'results.json'), required=())
  assert results is not None  # exit status 0: a finished run, which wrote its results.json
  keys = ('model', 'test_accuracy', 'pretrained_test_accuracy', 'pruned_test_accuracy',
          'finetuned_test_accuracy', 'compression_ratio', 'bits_per_weight', 'params_before',
          'params', 'macs_before', 'macs', 'pretrain_epochs', 'epochs_run', 'wall_time_s',
          'machine')
  return {**record, 'status': 'ok',
          'results': {'process_wall_s': wall, **{k: results.get(k) for k in keys}}}


def run_suite(out_dir: str, data_dir: str | None, sections, budget_s: float,
              tiny: bool) -> dict:
  """Runs the sections, writes suite.json and suite.md into out_dir; returns the JSON's object."""
  start = time.perf_counter()
  deadline = start + budget_s
  limits = TINY_LIMITS if tiny else LIMITS
  data, no_data = find_cifar10(data_dir)
  suite: dict = {'suite': 'qprune GPU suite', 'tiny': tiny, 'budget_s': budget_s,
                 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
                 'command': ' '.join(['python', '-m', 'reproduce.benchmarks.suite', *sys.argv[1:]]),
                 'data_dir': data, 'sections': {}}
  tmp = tempfile.mkdtemp(prefix='qprune-suite-')
  env = _section_env(os.path.join(tmp, 'jax_cache'))
  suite['compilation_cache'] = env['JAX_COMPILATION_CACHE_DIR']
  try:
    for name in ORDER:
      if name not in sections:
        continue
      left = deadline - time.perf_counter()
      section_start = time.perf_counter()
      if name in NEEDS_DATA and data is None:
        record = {'status': 'skipped', 'reason': no_data}
      elif left < 20:
        record = {'status': 'skipped', 'reason': f'the suite\'s {budget_s:.0f} s budget is spent'}
      else:
        cap = limits[name]
        limit = left if cap is None else min(cap, left)
        print(f'suite: {name} (hard limit {limit:.0f} s)', flush=True)
        if name == 'pipeline':
          record = _pipeline_section(limit, tmp, env, data, tiny)
        else:
          soft = limit - _GRACE_S if cap is None else limit * 0.8
          record = _measured_section(name, limit, soft, tmp, env, data, tiny)
        record['limit_s'] = limit
      record['wall_s'] = time.perf_counter() - section_start
      record.setdefault('status', 'ok')
      if 'environment' in record and 'environment' not in suite:
        suite['environment'] = record['environment']
      record.pop('environment', None)
      suite['sections'][name] = record
      print(f'suite: {name}: {record["status"]} in {record["wall_s"]:.1f} s'
            + (f' ({record["reason"].splitlines()[0]})' if record.get('reason') else ''),
            flush=True)
      _write(out_dir, suite, start)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  _write(out_dir, suite, start)
  return suite


def _write(out_dir: str, suite: dict, start: float):
  """suite.json and suite.md as they stand (after every section: a suite stopped from outside,
  e.g. at a device's command limit, still leaves what it measured)."""
  suite['wall_s'] = time.perf_counter() - start
  env_info = suite.get('environment', {})
  suite['device_kind'] = env_info.get('device_kind')
  suite['jax_version'] = env_info.get('jax')
  files.write_json_atomic(os.path.join(out_dir, 'suite.json'), suite, indent=1)
  files.write_text_atomic(os.path.join(out_dir, 'suite.md'), markdown(suite))


# ---------------------------------------------------------------- the tables

def _f(value, fmt='{:.1f}', missing='-'):
  return missing if value is None else fmt.format(value)


def _table(header, rows) -> list:
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
          + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def markdown(suite: dict) -> str:
  env = suite.get('environment', {})
  secs = suite['sections']
  lines = [f'# qprune GPU suite{" (--tiny)" if suite["tiny"] else ""}: '
           f'{env.get("device_kind", "?")} x{env.get("device_count", "?")} '
           f'({env.get("platform", "?")}), jax {env.get("jax", "?")}, flax {env.get("flax", "?")}'
           f', {env.get("cpu_count", "?")} CPU cores, {suite["started"]}', '',
           f'Total {suite["wall_s"]:.0f} s of a {suite["budget_s"]:.0f} s budget.', '']
  lines += _table(['section', 'status', 'wall s', 'hard limit s', 'note'],
                  [[n, s['status'], _f(s.get('wall_s')), _f(s.get('limit_s'), '{:.0f}'),
                    (s.get('reason') or '').splitlines()[0][:160] if s.get('reason') else '']
                   for n, s in secs.items()])
  r = secs.get('throughput', {}).get('results')
  if r:
    lines += ['', f'Train step images/s, batch {r["batch_size"]}, median of {r["steps"]} steps '
              f'after {r["warmup_steps"]} warm-up: qprune\'s step vs the plain Flax/XLA step '
              f'(conv auto = {r["conv_impl_auto"]}; same XLA program as plain: '
              f'{r["same_program_as_plain"]}).', '']
    rows = []
    for row in r['rows']:
      cells = [row['model'], _f(row.get('macs_per_image', 0) / 1e6)]
      for dtype in ('float32', 'bfloat16'):
        per = row.get(dtype, {})
        cells += [_f(per.get('qprune', {}).get('images_per_s'), '{:.0f}'),
                  _f(per.get('plain', {}).get('images_per_s'), '{:.0f}'),
                  _f(per.get('speedup'), '{:.2f}x')]
      cells.append(_f(row.get('bf16_over_f32'), '{:.2f}x'))
      rows.append(cells)
    lines += _table(['model', 'MMACs/img', 'f32 qprune', 'f32 plain', 'f32 ratio', 'bf16 qprune',
                     'bf16 plain', 'bf16 ratio', 'bf16/f32'], rows)
    for row in r['rows']:
      if row.get('error'):
        lines.append(f'\n{row["model"]} failed: {row["error"].splitlines()[0][:300]}')
      for dtype in ('float32', 'bfloat16'):
        alt = row.get(dtype, {}).get('alt_conv')
        if alt and alt.get('error'):
          lines.append(f'\n{row["model"]} {dtype} with conv_impl={alt["conv_impl"]} failed: '
                       f'{alt["error"].splitlines()[0][:300]}')
        elif alt:
          lines.append(f'\n{row["model"]} {dtype} with conv_impl={alt["conv_impl"]}: '
                       f'{alt["images_per_s"]:.0f} images/s ({alt["vs_qprune"]:.2f}x of auto).')
    if r.get('skipped'):
      lines.append('\nNot timed: ' + '; '.join(f'{k} ({v})' for k, v in r['skipped'].items()))
  r = secs.get('epoch', {}).get('results')
  if r:
    lines += ['', f'ResNet-20 (width {r["width"]}) CIFAR-10 epochs, real input pipeline '
              f'({r["train_images"]} training images, data loaded in {r["data_load_s"]:.1f} s), '
              f'{r["epochs"]} epochs per setting:', '']
    lines += _table(['batch', 'dtype', 'first epoch s (compile)', 'warm epoch s', 'images/s',
                     'vs first setting', 'test acc'],
                    [[x['batch_size'], x['dtype'], _f(x['first_epoch_s'], '{:.2f}'),
                      _f(x['warm_epoch_s'], '{:.2f}'), _f(x['images_per_s'], '{:.0f}'),
                      _f(x.get('vs_first_setting'), '{:.2f}x'), _f(x['test_accuracy'], '{:.3f}')]
                     for x in r['rows']])
    if r.get('skipped'):
      lines.append('\nNot run: ' + '; '.join(f'{k} ({v})' for k, v in r['skipped'].items()))
  r = secs.get('search', {}).get('results')
  if r and 'vmap_s' in r:
    lines += ['', f'Candidate search, ResNet-20 (width {r["width"]}), K={r["candidates"]}, '
              f'{r["num_images"]} synthetic held-out images, median of {r["repeats"]}:', '']
    lines += _table(['vmap s', 'loop s', 'loop / vmap', 'vmap first call s', 'loop first call s'],
                    [[_f(r['vmap_s'], '{:.3f}'), _f(r.get('loop_s'), '{:.3f}'),
                      _f(r.get('loop_over_vmap'), '{:.2f}x'), _f(r['vmap_first_call_s'], '{:.1f}'),
                      _f(r.get('loop_first_call_s'), '{:.1f}')]])
  r = secs.get('kmeans', {}).get('results')
  if r:
    lines += ['', f'k-means target selection: {r["model"]}, {r["layers"]} layers, '
              f'{r["weights"]} weights, k = 1..{r["k_max"]} ({r["clusterings"]} clusterings) in '
              f'one jitted call: {r["qprune_s"] * 1e3:.1f} ms (warm median of {r["repeats"]}).']
  r = secs.get('pipeline', {}).get('results')
  if r:
    lines += ['', f'CIFAR-10 {r["model"]} pipeline (pretrain, search, shrink, fine-tune, INQ, '
              f'export), short schedule: `{secs["pipeline"]["command"]}`', '']
    lines += _table(['wall s', 'test acc', 'pretrained', 'pruned', 'fine-tuned', 'compression',
                     'bits/weight', 'MACs kept', 'epochs'],
                    [[_f(r['process_wall_s']), _f(r['test_accuracy'], '{:.3f}'),
                      _f(r['pretrained_test_accuracy'], '{:.3f}'),
                      _f(r['pruned_test_accuracy'], '{:.3f}'),
                      _f(r['finetuned_test_accuracy'], '{:.3f}'),
                      _f(r['compression_ratio'], '{:.1f}x'), _f(r['bits_per_weight'], '{:.2f}'),
                      _f(r['macs'] / r['macs_before'] if r.get('macs_before') else None,
                         '{:.2f}'), r['epochs_run']]])
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  if _SECTION.value:
    if _SECTION.value not in SECTIONS or not _PARTIAL.value:
      raise app.UsageError(f'--section is one of {sorted(SECTIONS)}, with --partial')
    _run_section_here(_SECTION.value, _PARTIAL.value)
    return
  if not _OUT.value:
    raise app.UsageError('--out=DIR is required (suite.json and suite.md go there)')
  sections = _SECTIONS.value or list(ORDER)
  unknown = sorted(set(sections) - set(ORDER))
  if unknown:
    raise app.UsageError(f'unknown --sections {unknown}; choose from {list(ORDER)}')
  budget = _BUDGET.value or (900.0 if _TINY.value else 480.0)
  data_dir = _DATA_DIR.value or os.environ.get('QPRUNE_DATA_DIR') or None
  suite = run_suite(_OUT.value, data_dir, sections, budget, _TINY.value)
  print(markdown(suite), flush=True)


if __name__ == '__main__':
  app.run(main)
