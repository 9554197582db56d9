"""What every mode shares: data, model and variables from a config, and the run's files.

A run's workdir holds:
  config.json      the config it was started with
  model.json       the final model's spec (`qprune.models.spec`), model/  its variables
  results.json     written last, atomically: a finished run
  metrics.jsonl, checkpoints/   from the training loop (or per stage, in subfolders)
"""
import atexit
import errno
import os
import shutil

import jax

from qprune import configs, distributed, files, prune
from qprune.artifacts import MODEL_DIR, MODEL_JSON, load_saved_model, save_model  # noqa: F401 (re-exported)
from qprune.data import pipeline, sources
from qprune.errors import UserError
from qprune.models import init_variables
from qprune.models.spec import model_from_spec, model_spec
from qprune.train import parallel
from qprune.train.loop import TrainOptions

RESULTS_JSON, CONFIG_JSON = 'results.json', 'config.json'


class RunError(UserError):
  """A run cannot start (bad init_from, a workdir of another run, ...)."""


def data_dir(config) -> str | None:
  return config.data_dir or os.environ.get('QPRUNE_DATA_DIR') or None


def load_data(config, mesh) -> pipeline.Data:
  """The config's dataset on device; says what it loads and how long it took (a first run
  decodes the images and caches them as uint8 arrays, later runs read the cache)."""
  import time  # pylint: disable=g-import-not-at-top
  start = time.time()
  if config.progress:
    print(f'data: loading {config.dataset} (decoded once, then read from the uint8 cache)',
          flush=True)
  data = pipeline.load_data(config.dataset, data_dir(config), train_subset=config.train_subset,
                            eval_subset=config.eval_subset, cache_dir=config.cache_dir,
                            sharding=parallel.replicated(mesh))
  if config.progress:
    print(f'data: {data.train.size:,} training and {data.test.size:,} test images on device in '
          f'{time.time() - start:.1f} s', flush=True)
  return data


def spec_for(config) -> dict:
  info = sources.dataset_info(config.dataset)
  return model_spec(config.model, info.num_classes, info.shape, width=config.width,
                    mean=info.mean, std=info.std, dataset=config.dataset)


def build(spec, config):
  return model_from_spec(spec, dtype=config.compute_dtype, conv_impl=config.conv_impl)


def initial_spec(config) -> dict:
  """The spec of the model the run starts from: `init_from`'s (checked against the config's
  model and dataset), or the config's own; reads no variables."""
  if not config.init_from:
    return spec_for(config)
  if not os.path.isdir(config.init_from):
    raise RunError(f'init_from={config.init_from!r} does not exist')
  spec = files.read_json(os.path.join(config.init_from, MODEL_JSON), ('name', 'dataset'))
  if spec is None:
    raise RunError(f'init_from={config.init_from!r} holds no finished model ({MODEL_JSON} '
                   f'missing): point it to the workdir of a finished run')
  if spec['name'] != config.model or spec['dataset'] != config.dataset:
    raise RunError(f'init_from={config.init_from!r} holds a {spec["name"]} trained on '
                   f'{spec["dataset"]}, but this config asks for {config.model} on '
                   f'{config.dataset}')
  return spec


def initial_model(config):
  """(spec, variables) to start from: `init_from`'s final model, or a fresh init."""
  if config.init_from:
    initial_spec(config)
    return load_saved_model(config.init_from)
  spec = spec_for(config)
  model = build(spec, config)
  variables = init_variables(model, jax.random.PRNGKey(config.seed), spec['input_shape'])
  return spec, variables


def model_counts(spec, variables, config) -> dict:
  """{'params', 'macs'} of the model `spec` describes (`prune.model_cost` of it)."""
  return prune.model_cost(build(spec, config), variables, spec['input_shape'])


def train_options(config, **overrides) -> TrainOptions:
  return TrainOptions.from_config(config, **overrides)


FINISHED_KEYS = ('mode', 'test_accuracy')  # what a finished run's results.json must hold
_LOCKS = {}  # realpath of a workdir -> the WorkdirLock this process holds on it


def check_workdir(workdir: str) -> str:
  """The workdir path, or RunError when it cannot be one (empty, a file)."""
  if not workdir or not workdir.strip():
    raise RunError('--workdir is empty: pass a folder for the run, e.g. --workdir=/tmp/run')
  if '://' in workdir:
    raise RunError(f'workdir {workdir}: remote URLs are not supported; mount the bucket (e.g. '
                   f'gcsfuse) and pass the mounted path')
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise RunError(f'workdir {workdir} is a file, not a folder: use another --workdir')
  return workdir


def _has_outputs(workdir: str) -> bool:
  """Whether the workdir holds anything of a run beyond config.json (a checkpoint, metrics, a
  stage, ...): a config.json alone is a run that failed before its first output."""
  for root, _, names in os.walk(workdir):
    for name in names:
      if root == workdir and (name in (CONFIG_JSON, files.LOCK_NAME) or name.startswith('.tmp-')):
        continue
      return True
  return False


def lock_workdir(workdir: str):
  """Locks the workdir for this process (once; see files.WorkdirLock) until release_workdirs().

  In a multi-host job only process 0 locks: the others run the same job on the same workdir."""
  if not parallel.is_primary():
    return None
  key = os.path.realpath(workdir)
  if key not in _LOCKS:
    try:
      _LOCKS[key] = files.WorkdirLock(workdir).acquire()
    except OSError as e:
      if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise RunError(f'workdir {workdir} is not writable ({e.strerror}): make it writable or '
                       f'use another --workdir') from None
      raise RunError(f'cannot lock workdir {workdir}: {files.os_error_message(e)}') from None
  return _LOCKS[key]


def release_workdirs():
  """Releases every workdir lock this process holds (also at exit)."""
  while _LOCKS:
    _LOCKS.popitem()[1].release()


atexit.register(release_workdirs)


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_sources(config, workdir: str) -> None:
  """RunError where a folder the run reads (init_from, prune.decide_from) is the workdir, or lies
  inside a workdir that overwrite would empty first."""
  sources = [('init_from', config.init_from)]
  if config.mode in ('prune', 'pipeline'):
    sources.append(('prune.decide_from', config.prune.decide_from))
  for field, path in sources:
    if not path:
      continue
    if os.path.realpath(path) == os.path.realpath(workdir):
      raise RunError(f'{field}={path!r} is the workdir itself: the run would write over the '
                     f'model it reads; use another --workdir')
    if config.overwrite and _inside(path, workdir):
      raise RunError(f'{field}={path!r} is inside the workdir {workdir}, which '
                     f'overwrite=True would empty first; use another --workdir')


def _reuse_error(config, workdir: str, previous: dict | None) -> str | None:
  """Why the workdir cannot take this config (it holds a run of another one), or None."""
  wanted = configs.semantic_dict(config)
  if previous is None or previous == wanted or config.overwrite or not _has_outputs(workdir):
    return None
  changed = sorted(k for k in set(previous) | set(wanted) if previous.get(k) != wanted.get(k))
  return (f'workdir {workdir} holds a run of a different config (differs in: '
          f'{", ".join(changed)}); use another --workdir, or pass --config.overwrite=True to '
          f'start over there')


def preflight(config, workdir: str) -> None:
  """Everything about the run's folders that can be checked before any work, writing nothing:
  the workdir (a folder, not one of another config's runs unless overwrite), init_from and
  decide_from (present, not what overwrite would delete), and the layers quant.exclude and
  prune.ignored_layers name (against the model the run starts from)."""
  check_workdir(workdir)
  check_sources(config, workdir)
  if os.path.isdir(workdir):
    previous = files.read_json(os.path.join(workdir, CONFIG_JSON))
    error = _reuse_error(config, workdir, previous and configs.with_new_defaults(previous))
    if error:
      raise RunError(error)
  spec = initial_spec(config)
  decide_from = config.mode in ('prune', 'pipeline') and config.prune.decide_from
  if decide_from and not os.path.isdir(decide_from):
    raise RunError(f'prune.decide_from={decide_from!r} does not exist')
  budget_of = config.mode in ('prune', 'pipeline') and config.prune.budget_of
  if budget_of and not os.path.isdir(budget_of):
    raise RunError(f'prune.budget_of={budget_of!r} does not exist: point it to the workdir or '
                   'published folder of a finished prune run')
  check_layers(config, spec)


def layer_names(spec, config):
  """(every module path of the model, its quantizable layers) from shapes alone."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  from qprune import quant  # pylint: disable=g-import-not-at-top
  model = build(spec, config)
  images = jax.ShapeDtypeStruct((1, *spec['input_shape']), jnp.uint8)
  shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0),
                          images)
  paths = traverse_util.flatten_dict(shapes['params'])
  modules = {'/'.join(p[:i]) for p in paths for i in range(1, len(p))}
  return modules, sorted(quant.quantizable_layers(shapes['params']))


def check_layers(config, spec) -> None:
  """RunError naming a layer of quant.exclude / prune.ignored_layers the model lacks, or a
  quant.exclude that leaves nothing to quantize."""
  q, r = config.quant, config.prune
  check_quant = config.mode in ('quantize', 'pipeline') and q.exclude
  check_prune = config.mode in ('prune', 'pipeline') and r.ignored_layers
  if not (check_quant or check_prune):
    return
  modules, quantizable = layer_names(spec, config)
  if check_quant:
    unknown = sorted(set(q.exclude) - set(quantizable))
    if unknown:
      raise RunError(f'quant.exclude names {", ".join(unknown)}, which the model does not '
                     f'have; its quantizable layers are {", ".join(quantizable)}')
    if set(quantizable) <= set(q.exclude):
      raise RunError(f'quant.exclude names every quantizable layer ({", ".join(quantizable)}): '
                     f'nothing would be quantized; keep at least one out of it')
  if check_prune:
    unknown = [p for p in r.ignored_layers
               if not (p in modules or (p.endswith('/') and any(m.startswith(p)
                                                                 for m in modules)))]
    if unknown:
      raise RunError(f'prune.ignored_layers names {", ".join(unknown)}, which the model does '
                     f'not have; its layers are {", ".join(sorted(modules))}')


def stamp(record, config, mode: str):
  """The header every results.json carries (a run's and each pipeline stage's): what ran, on
  which model and data."""
  record.mode, record.model, record.dataset = mode, config.model, config.dataset
  return record


def prepare_workdir(config, workdir: str) -> dict | None:
  """Creates and locks the workdir; returns the results of an identical finished run, if any.

  In a multi-process job process 0 alone prepares it; the others take its outcome (the same
  results, or the same RunError), so that they never race to create or clear it.
  """
  if distributed.process_count() == 1:
    return _prepare_workdir(config, workdir)
  outcome: dict | None = None
  if distributed.is_primary():
    try:
      outcome = {'finished': _prepare_workdir(config, workdir)}
    except UserError as e:
      outcome = {'error': str(e)}
  outcome = distributed.share(outcome, 'prepare_workdir')
  if 'error' in outcome:
    raise RunError(outcome['error'])
  return outcome['finished']


def _prepare_workdir(config, workdir: str) -> dict | None:
  """prepare_workdir on one process.

  Refuses a workdir holding a run of a different config unless config.overwrite is set (a
  config.json without any other output is a run that failed before it started: replaced). A
  finished identical run is reported without writing anything (works on a read-only workdir).
  """
  check_workdir(workdir)
  check_sources(config, workdir)
  config_path = os.path.join(workdir, CONFIG_JSON)
  wanted = configs.semantic_dict(config)
  previous = files.read_json(config_path) if os.path.isdir(workdir) else None
  if previous is not None:
    previous = configs.with_new_defaults(previous)
    if previous == wanted:
      finished = files.read_json(os.path.join(workdir, RESULTS_JSON), FINISHED_KEYS)
      if finished is not None:
        return finished
  if not os.path.isdir(workdir):
    try:
      os.makedirs(workdir)
    except OSError as e:
      raise RunError(f'cannot create workdir {workdir} ({e.strerror}): check the path and its '
                     f'permissions, or use another --workdir') from None
  lock_workdir(workdir)
  previous = files.read_json(config_path)  # again, under the lock
  if previous is not None:
    previous = configs.with_new_defaults(previous)
  if previous is not None and previous != wanted and not _has_outputs(workdir):
    previous = None  # only the config.json of a run that failed before it started
  error = _reuse_error(config, workdir, previous)
  if error:
    raise RunError(error)
  if previous is not None and previous != wanted:  # overwrite=True: drop the other run's outputs
    for name in os.listdir(workdir):
      if name not in (CONFIG_JSON, files.LOCK_NAME):
        path = os.path.join(workdir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
  if previous != wanted and parallel.is_primary():
    files.write_json_atomic(config_path, wanted)
  if previous == wanted:
    return files.read_json(os.path.join(workdir, RESULTS_JSON), FINISHED_KEYS)
  return None
