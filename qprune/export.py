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


def export(workdir: str, fmt: str, out: str = None, fold_bn: bool = True) -> dict:
  """Writes the export; returns {'format', 'out', 'bytes', 'source'} (ExportError if it cannot)."""
  from qprune import deploy  # pylint: disable=g-import-not-at-top
  out = out or os.path.join(workdir, DEFAULT_NAMES[fmt])
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
  from qprune import deploy  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  try:
    result = export(f.workdir, f.format, f.out, f.fold_bn)
  except (deploy.ExportError, deploy.UnsupportedModelError, deploy.OnnxNotInstalledError,
          deploy.CodesFormatError) as e:
    print(f'qprune.export: error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
