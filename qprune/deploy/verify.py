r"""ONNX round trip of a finished run on a whole real test split.

  python -m qprune.deploy.verify --workdir=results/mnist_lenet5/optimal_k3 --data_dir=DATA [--json]

Exports the run's deployable model (`load_run`: the quantized export, or the shrunk model) to
ONNX, runs the full test split through onnxruntime and through qprune (jitted), and prints the
largest absolute logit difference and both accuracies.
"""
import argparse
import json
import sys

import numpy as np


def verify(workdir: str, data_dir: str, batch_size: int = 500) -> dict:
  """{'workdir', 'model', 'images', 'max_abs_logit_diff', 'qprune_accuracy', 'onnx_accuracy'}."""
  import jax  # pylint: disable=g-import-not-at-top

  from qprune.data import pipeline  # pylint: disable=g-import-not-at-top
  from qprune.deploy.onnx_export import _onnx, to_onnx  # pylint: disable=g-import-not-at-top
  from qprune.deploy.runs import load_run  # pylint: disable=g-import-not-at-top
  run = load_run(workdir)
  _onnx()  # a clear error when the onnx extra is missing
  import onnxruntime  # pylint: disable=g-import-not-at-top
  data = pipeline.load_data(run.spec['dataset'], data_dir)
  images, labels = np.asarray(data.test.images), np.asarray(data.test.labels)
  session = onnxruntime.InferenceSession(
      to_onnx(run.model, run.variables, tuple(run.spec['input_shape'])),
      providers=['CPUExecutionProvider'])
  input_name = session.get_inputs()[0].name
  apply = jax.jit(lambda v, x: run.model.apply(v, x, train=False))
  worst, correct_q, correct_o = 0.0, 0, 0
  for start in range(0, len(labels), batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    ours = np.asarray(apply(run.variables, x))
    theirs = session.run(None, {input_name: x})[0]
    worst = max(worst, float(np.max(np.abs(ours - theirs))))
    correct_q += int(np.sum(ours.argmax(-1) == y))
    correct_o += int(np.sum(theirs.argmax(-1) == y))
  return {'workdir': workdir, 'model': run.spec['name'], 'source': run.qpq_path or 'model',
          'images': int(len(labels)), 'max_abs_logit_diff': worst,
          'qprune_accuracy': correct_q / len(labels), 'onnx_accuracy': correct_o / len(labels)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m qprune.deploy.verify',
                                   description=__doc__.split('\n\n')[1])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  from qprune.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    result = verify(args.workdir, args.data_dir)
  except (UserError, ImportError) as e:
    print(f'qprune: error: {e}', file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(result))
  else:
    for key, value in result.items():
      print(f'{key:>20}: {value}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
