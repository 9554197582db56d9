"""Which model a finished run hands to deployment: its quantized export if any, else its model."""
import os
from typing import Any, NamedTuple

from qprune import files
from qprune.errors import UserError


class ExportError(UserError):
  """A workdir or path cannot be exported (no finished run, no quantized export, bad format)."""


class RunModel(NamedTuple):
  model: Any  # a flax.linen.Module
  variables: dict
  spec: dict
  qpq_path: str | None  # the .qpq export the model was read from (quantized runs), else None


def find_qpq(workdir: str) -> str | None:
  """The quantized export of a finished quantize/pipeline run in `workdir`, or None."""
  for folder in (workdir, os.path.join(workdir, 'quantize')):
    results = files.read_json(os.path.join(folder, 'results.json'))
    if results and results.get('export_path'):
      path = results['export_path']
      here = os.path.realpath(folder)
      if os.path.isabs(path) and not os.path.realpath(path).startswith(here + os.sep):
        # Written before paths were relative to the run; the run was copied since: its own
        # copy, never the original's file (which may differ from what this folder holds).
        path = os.path.basename(path)
      path = os.path.join(folder, path)
      if os.path.exists(path):
        return path
  return None


def load_run(workdir: str) -> RunModel:
  """The deployable model of a finished run: `load_quantized` of its export for quantized runs
  (weights dequantized exactly), else `load_model` (the shrunk model after pruning)."""
  from qprune.quant import export as qpq  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(workdir):
    raise ExportError(f'workdir {workdir!r} does not exist')
  if files.read_json(os.path.join(workdir, 'results.json')) is None:
    raise ExportError(f'{workdir} holds no finished run (results.json missing)')
  path = find_qpq(workdir)
  if path is not None:
    model, variables = qpq.load_quantized(path)  # first: its errors name the file
    with open(path, 'rb') as f:
      spec, _ = qpq.decode_variables(f.read())
    return RunModel(model, variables, spec, path)
  from qprune.artifacts import ModelNotFoundError, load_saved_model  # pylint: disable=g-import-not-at-top
  from qprune.models.spec import model_from_spec  # pylint: disable=g-import-not-at-top
  try:
    spec, variables = load_saved_model(workdir)
  except ModelNotFoundError as e:
    raise ExportError(str(e)) from e
  return RunModel(model_from_spec(spec), variables, spec, None)
