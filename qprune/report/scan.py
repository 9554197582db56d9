r"""Per-layer sensitivity scans of a finished run, as tables and plots in its workdir.

  python -m qprune.report.scan --workdir=/tmp/lenet5 --data_dir=../shared/data \
      [--eval_subset=2000] [--ks=1,2,3,4] [--ratios=0.25,0.5,0.75]

Quantization: test accuracy when only one layer is quantized to k clustered power-of-two values;
pruning: when only one channel group is pruned (L1, uniform) at a ratio, BN re-estimated on
training images. Both evaluate all variants with one compiled function (see sensitivity.py).
Writes sensitivity_quant.md, sensitivity_prune.md and their plots.
"""
import numpy as np
from absl import app, flags

from qprune.artifacts import load_saved_model
from qprune.data import pipeline
from qprune.models.spec import model_from_spec
from qprune.prune import batched
from qprune.report.markdown import write_sensitivity
from qprune.report.sensitivity import prune_sensitivity, quant_sensitivity


def define_flags():
  """The binary's flags, defined only when it runs (no duplicate --workdir beside qprune.main
  in one process)."""
  flags.DEFINE_string('workdir', None, 'Workdir of a finished qprune run.')
  flags.DEFINE_string('data_dir', None, 'Dataset folder (as --config.data_dir).')
  flags.DEFINE_integer('eval_subset', 2000, 'First N test images (0 = all).')
  flags.DEFINE_list('ks', ['1', '2', '3', '4'], 'Clustered values per layer to try.')
  flags.DEFINE_list('ratios', ['0.25', '0.5', '0.75'], 'Pruning ratios to try.')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  try:
    ks = tuple(int(k) for k in flags.FLAGS.ks)
    ratios = tuple(float(r) for r in flags.FLAGS.ratios)
  except ValueError as e:
    raise app.UsageError(f'--ks takes integers and --ratios numbers: {e}') from None
  try:
    spec, variables = load_saved_model(flags.FLAGS.workdir)
    model = model_from_spec(spec)
    data = pipeline.load_data(spec['dataset'], flags.FLAGS.data_dir, train_subset=400,
                              eval_subset=flags.FLAGS.eval_subset)
  except ValueError as e:  # every UserError is one
    raise app.UsageError(str(e)) from None
  quant_rows = quant_sensitivity(model, variables, data.test, ks)
  prune_rows = prune_sensitivity(model, variables, data.test, ratios,
                                 bn_images=batched(data.train.images, 100))
  for kind, rows in (('quant', quant_rows), ('prune', prune_rows)):
    path = write_sensitivity(rows, flags.FLAGS.workdir, kind)
    print(open(path).read())
  worst = max(quant_rows, key=lambda r: r['accuracy_drop'] if r['k'] == 1 else -np.inf)
  print(f'most sensitive layer at k=1: {worst["layer"]} (-{worst["accuracy_drop"]:.4f})')


if __name__ == '__main__':
  from qprune.ops import malloc  # pylint: disable=g-import-not-at-top
  malloc.reexec_with_hugepages()  # see qprune/ops/malloc.py
  define_flags()
  app.run(main)
