"""Export a finished run for deployment.

    python -m qprune.export --workdir=W --format=onnx  [--out=PATH] [--nofold_bn]
    python -m qprune.export --workdir=W --format=codes [--out=PATH]

onnx:  the run's final model as ONNX (uint8 NHWC images in, logits out): the shrunk model of a
       prune run; for a quantize/pipeline run the model read back from its .qpq export with
       `qprune.load_quantized` (power-of-two weights, dequantized to float32). Default out:
       W/model.onnx.
codes: a quantized run's open integer-code .npz (see `qprune.deploy.codes`, README
       "Deployment"); default out: W/model_codes.npz.
Prints one JSON line {'format', 'out', 'bytes', 'source'}. Bad input: one line, exit status 2.
"""
import json
import os
import sys

from absl import app, flags, logging


def define_flags():
  """The binary's flags, defined only when it runs (so importing this module next to another
  absl binary, e.g. in a test process, defines no duplicate --workdir)."""
  flags.DEFINE_string('workdir', None, 'workdir of a finished qprune run')
  flags.DEFINE_enum('format', 'onnx', ['onnx', 'codes'], 'what to write')
  flags.DEFINE_string('out', None, 'output path (default: inside the workdir)')
  flags.DEFINE_bool('fold_bn', True, 'onnx: fold BatchNorm into the convs')


DEFAULT_NAMES = {'onnx': 'model.onnx', 'codes': 'model_codes.npz'}


# What each format writes: an existing file of another kind inside a run is never replaced.
EXTENSIONS = {'onnx': '.onnx', 'codes': '.npz'}
# A folder holding one of these is a run (or a pipeline stage) whose files --out must not touch.
RUN_MARKERS = ('results.json', 'config.json', 'model.json')


def _enclosing_run(path: str):
  """The nearest folder above `path` that is a run (holds RUN_MARKERS), or None."""
  folder = os.path.dirname(os.path.abspath(path))
  while True:
    if any(os.path.isfile(os.path.join(folder, m)) for m in RUN_MARKERS):
      return folder
    parent = os.path.dirname(folder)
    if parent == folder:
      return None
    folder = parent


def check_out(out: str, fmt: str) -> None:
  """ExportError unless `out` is a new file, or a former export of this format, outside every
  run's own files: inside a run folder only directly in it (not in model/, checkpoints/, ...)
  and never over a run file (results.json, model.qpq, ...)."""
  from qprune import deploy  # pylint: disable=g-import-not-at-top
  if os.path.isdir(out):
    raise deploy.ExportError(f'--out={out} is a folder: pass a file path, e.g. '
                             f'{os.path.join(out, DEFAULT_NAMES[fmt])}')
  run = _enclosing_run(out)
  if run is None:
    return
  inside = os.path.relpath(os.path.abspath(out), run)
  name = os.path.basename(out)
  if os.sep in inside:
    raise deploy.ExportError(f'--out={out} is inside the run {run} ({inside.split(os.sep)[0]}/ '
                             f'holds its state): write next to it, e.g. '
                             f'{os.path.join(run, DEFAULT_NAMES[fmt])}')
  if name in RUN_MARKERS or name.endswith('.qpq') or name in _run_files(run) or (
      os.path.exists(out) and not name.endswith(EXTENSIONS[fmt])):
    raise deploy.ExportError(f'--out={out} is one of the run\'s own files: pick a new path, '
                             f'e.g. {os.path.join(run, DEFAULT_NAMES[fmt])}')


def _run_files(run: str) -> set:
  """The run's files named in its results.json and config.json (its export, ...)."""
  from qprune import files  # pylint: disable=g-import-not-at-top
  names = {'metrics.jsonl', 'report.md', 'search.json', '.qprune.lock'}
  try:
    results = files.read_json(os.path.join(run, 'results.json')) or {}
  except ValueError:  # damaged: the export reports that, its name is still a run file
    results = {}
  if isinstance(results, dict) and isinstance(results.get('export_path'), str):
    names.add(os.path.basename(results['export_path']))
  return names


def export(workdir: str, fmt: str, out: str | None = None, fold_bn: bool = True) -> dict:
  """Writes the export; returns {'format', 'out', 'bytes', 'source'} (a UserError if it cannot:
  no finished run, damaged run files, an --out that is one of a run's own files)."""
  from qprune import deploy  # pylint: disable=g-import-not-at-top
  out = out or os.path.join(workdir, DEFAULT_NAMES[fmt])
  check_out(out, fmt)
  if fmt == 'codes':
    if not os.path.isdir(workdir):
      raise deploy.ExportError(f'workdir {workdir!r} does not exist')
    qpq = deploy.find_qpq(workdir)
    if qpq is None:
      raise deploy.ExportError(f'{workdir} has no quantized export (.qpq): the integer-code '
                               f'format needs a finished quantize or pipeline run')
    nbytes = deploy.qpq_file_to_codes(qpq, out)
    return {'format': fmt, 'out': os.path.abspath(out), 'bytes': nbytes, 'source': qpq}
  run = deploy.load_run(workdir)
  data = deploy.to_onnx(run.model, run.variables, run.spec['input_shape'], out, fold_bn=fold_bn)
  return {'format': fmt, 'out': os.path.abspath(out), 'bytes': len(data),
          'source': run.qpq_path or os.path.abspath(workdir)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.workdir:
    print('qprune.export: error: --workdir is required', file=sys.stderr, flush=True)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)
  sys.exit(run(f.workdir, f.format, f.out, f.fold_bn))


def run(workdir: str, fmt: str, out: str | None = None, fold_bn: bool = True) -> int:
  """The binary's answer: the JSON line and 0, or one 'qprune.export: error:' line and 2 for bad
  input (any UserError: a damaged .qpq, model.json or model/, no finished run, a bad --out; an
  OSError such as a full disk). Anything else keeps its traceback (a bug)."""
  from qprune import deploy, files  # pylint: disable=g-import-not-at-top
  from qprune.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    result = export(workdir, fmt, out, fold_bn)
  except (UserError, deploy.OnnxNotInstalledError) as e:
    print(f'qprune.export: error: {e}', file=sys.stderr, flush=True)
    return 2
  except OSError as e:
    print(f'qprune.export: error: {files.os_error_message(e)}', file=sys.stderr, flush=True)
    return 2
  print(json.dumps(result), flush=True)
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
