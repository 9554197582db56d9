"""qprune: fast compression of CNNs in JAX/Flax.

Pytree transforms for your own Flax params:
  quantization   `qprune.quant`  INQ-rule or clustered (k-means on log2|w|) power-of-two target
                 sets, the nearest-target quantizer, INQ freeze schedule, bit-packed export
  pruning        `qprune.prune`  channel groups, criteria, masks, vmapped search, shrink
  deployment     `qprune.deploy` ONNX export, open integer-code .npz, multiplication-free reference
and the model zoo / training loop the `qprune.main` binary is built from. Every function that
takes a Linen (model, variables) pair or a params tree also takes a Flax NNX module and returns
the same kind (docs/library.md).

Run outputs: `load_model(workdir)` returns the final (model, variables) of a finished run,
`load_quantized(path)` those of a bit-packed export (`load_quantized(path, model=YourModel())`
for a model outside the zoo). Models take uint8 NHWC images and normalize
internally: `model.apply(variables, images, train=False)` gives logits.
"""
import importlib

__version__ = '0.1.0'

# Public names -> the module that defines them. Imported on first use (PEP 562), so that
# `import qprune.records` or the sweep collector does not start JAX.
_LAZY = {
    'deploy': 'qprune.deploy', 'models': 'qprune.models', 'prune': 'qprune.prune',
    'quant': 'qprune.quant', 'records': 'qprune.records',
    'count_macs': 'qprune.models', 'count_params': 'qprune.models',
    'create_model': 'qprune.models', 'init_variables': 'qprune.models',
    'load_quantized': 'qprune.quant',
    'StepHooks': 'qprune.train', 'TrainOptions': 'qprune.train', 'evaluate': 'qprune.train',
    'fit': 'qprune.train',
}


def __getattr__(name):
  module = _LAZY.get(name)
  if module is None:
    raise AttributeError(f'module qprune has no attribute {name!r}')
  value = importlib.import_module(module)
  if module != f'qprune.{name}':
    value = getattr(value, name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_LAZY))


def load_model(workdir: str, *, conv_impl: str = 'auto'):
  """(model, variables) of the finished run in `workdir` (the shrunk model after pruning)."""
  from qprune.artifacts import load_saved_model  # pylint: disable=g-import-not-at-top
  from qprune.models.spec import model_from_spec  # pylint: disable=g-import-not-at-top
  spec, variables = load_saved_model(workdir)
  return model_from_spec(spec, conv_impl=conv_impl), variables


__all__ = ['deploy', 'models', 'prune', 'quant', 'create_model', 'init_variables', 'count_params',
           'count_macs', 'load_model', 'load_quantized', 'fit', 'evaluate', 'TrainOptions',
           'StepHooks', 'records', '__version__']
