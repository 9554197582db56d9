"""qprune: fast compression of CNNs in JAX/Flax.

Pytree transforms for your own Flax params:
  quantization   `qprune.quant`  INQ-rule or clustered (k-means on log2|w|) power-of-two target
                 sets, eq. 3.1 quantizer, INQ freeze schedule, bit-packed export
  pruning        `qprune.prune`  channel groups, criteria, masks, vmapped search, shrink
  deployment     `qprune.deploy` ONNX export, open integer-code .npz, multiplication-free reference
and the model zoo / training loop the `qprune.main` binary is built from.

Run outputs: `load_model(workdir)` returns the final (model, variables) of a finished run,
`load_quantized(path)` those of a bit-packed export. Models take uint8 NHWC images and normalize
internally: `model.apply(variables, images, train=False)` gives logits.
"""
from qprune import deploy, models, prune, quant
from qprune.models import count_macs, count_params, create_model, init_variables
from qprune.quant import load_quantized
from qprune.train import StepHooks, TrainOptions, evaluate, fit


def load_model(workdir: str, *, conv_impl: str = 'auto'):
  """(model, variables) of the finished run in `workdir` (the shrunk model after pruning)."""
  from qprune.artifacts import load_saved_model  # pylint: disable=g-import-not-at-top
  from qprune.models.spec import model_from_spec  # pylint: disable=g-import-not-at-top
  spec, variables = load_saved_model(workdir)
  return model_from_spec(spec, conv_impl=conv_impl), variables


__all__ = ['deploy', 'models', 'prune', 'quant', 'create_model', 'init_variables', 'count_params',
           'count_macs', 'load_model', 'load_quantized', 'fit', 'evaluate', 'TrainOptions',
           'StepHooks']
