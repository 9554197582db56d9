"""What every mode shares: data, model and variables from a config, and the run's files.

A run's workdir holds:
  config.json      the config it was started with
  model.json       the final model's spec (`qprune.models.spec`), model/  its variables
  results.json     written last, atomically: a finished run
  metrics.jsonl, checkpoints/   from the training loop (or per stage, in subfolders)
"""
import os
import shutil
from typing import Optional

import jax

from qprune import configs, files
from qprune.artifacts import (MODEL_DIR, MODEL_JSON, load_saved_model,  # noqa: F401 (re-exported)
                              save_model)
from qprune.data import pipeline, sources
from qprune.errors import UserError
from qprune.models import count_macs, count_params, init_variables
from qprune.models.spec import model_from_spec, model_spec
from qprune.train import parallel
from qprune.train.loop import TrainOptions

RESULTS_JSON, CONFIG_JSON = 'results.json', 'config.json'


class RunError(UserError):
  """A run cannot start (bad init_from, a workdir of another run, ...)."""


def data_dir(config) -> Optional[str]:
  return config.data_dir or os.environ.get('QPRUNE_DATA_DIR') or None


def load_data(config, mesh) -> pipeline.Data:
  return pipeline.load_data(config.dataset, data_dir(config), train_subset=config.train_subset,
                            eval_subset=config.eval_subset, cache_dir=config.cache_dir or None,
                            sharding=parallel.replicated(mesh))


def spec_for(config) -> dict:
  info = sources.dataset_info(config.dataset)
  return model_spec(config.model, info.num_classes, info.shape, width=config.width,
                    mean=info.mean, std=info.std, dataset=config.dataset)


def build(spec, config):
  return model_from_spec(spec, dtype=config.compute_dtype, conv_impl=config.conv_impl)


def initial_model(config):
  """(spec, variables) to start from: `init_from`'s final model, or a fresh init."""
  if config.init_from:
    if not os.path.isdir(config.init_from):
      raise RunError(f'init_from={config.init_from!r} does not exist')
    spec, variables = load_saved_model(config.init_from)
    if spec['name'] != config.model or spec['dataset'] != config.dataset:
      raise RunError(f'init_from={config.init_from!r} holds a {spec["name"]} trained on '
                     f'{spec["dataset"]}, but this config asks for {config.model} on '
                     f'{config.dataset}')
    return spec, variables
  spec = spec_for(config)
  model = build(spec, config)
  variables = init_variables(model, jax.random.PRNGKey(config.seed), spec['input_shape'])
  return spec, variables


def model_counts(spec, variables, config) -> dict:
  model = build(spec, config)
  return {'params': count_params(variables['params']),
          'macs': count_macs(model, variables, spec['input_shape'])}


def train_options(config, **overrides) -> TrainOptions:
  return TrainOptions.from_config(config, **overrides)


def prepare_workdir(config, workdir: str) -> Optional[dict]:
  """Creates the workdir; returns the results of an identical finished run, if any.

  Refuses a workdir holding a run of a different config unless config.overwrite is set.
  """
  os.makedirs(workdir, exist_ok=True)
  previous = files.read_json(os.path.join(workdir, CONFIG_JSON))
  if previous is not None:
    previous = configs.with_new_defaults(previous)
  wanted = configs.semantic_dict(config)
  if previous is not None and previous != wanted and not config.overwrite:
    changed = sorted(k for k in set(previous) | set(wanted) if previous.get(k) != wanted.get(k))
    raise RunError(f'workdir {workdir} holds a run of a different config (differs in: '
                   f'{", ".join(changed)}); use another --workdir, or pass '
                   f'--config.overwrite=True to start over there')
  if previous is not None and previous != wanted:  # overwrite=True: drop the other run's outputs
    for name in os.listdir(workdir):
      if name != CONFIG_JSON:
        path = os.path.join(workdir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
  files.write_json_atomic(os.path.join(workdir, CONFIG_JSON), wanted)
  if previous == wanted:
    return files.read_json(os.path.join(workdir, RESULTS_JSON))
  return None
