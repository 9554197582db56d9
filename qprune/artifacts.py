"""The saved-model format a finished run or stage hands on: `model.json` (the spec,
`qprune.models.spec`) beside `model/` (its variables, Orbax).

Written by the modes, read by `qprune.load_model`, `qprune.report` and `qprune.deploy`; it sits
above train (it uses its checkpoint code) and below modes and report, so none of its readers
imports a mode.
"""
import os

from qprune import distributed, files
from qprune.errors import UserError
from qprune.train import checkpoint

MODEL_JSON, MODEL_DIR = 'model.json', 'model'


class ModelNotFoundError(UserError):
  """A folder holds no finished model."""


def save_model(directory: str, spec: dict, variables):
  """The model a stage hands on: spec + variables, the variables written first (a folder with
  model.json always has its variables)."""
  checkpoint.save_variables(os.path.join(directory, MODEL_DIR), variables)
  if distributed.is_primary():  # one writer on a multi-process job's shared workdir
    files.write_json_atomic(os.path.join(directory, MODEL_JSON), spec)
  distributed.barrier('save_model')  # the others may read it next (pipeline stages)


def load_saved_model(directory: str):
  """(spec, variables) of a finished run or stage; ModelNotFoundError when there is none."""
  spec = files.read_json(os.path.join(directory, MODEL_JSON))
  if spec is None:
    raise ModelNotFoundError(f'{directory} holds no finished model ({MODEL_JSON} missing): '
                             f'point init_from to the workdir of a finished run')
  return spec, checkpoint.load_variables(os.path.join(directory, MODEL_DIR))
