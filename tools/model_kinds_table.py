"""End to end on model kinds outside the zoo: trace, prune 50 %, quantize to 3 bits, save, reload,
ONNX; one markdown row per kind.

  python tools/model_kinds_table.py [--only SUBSTRING] > kinds.md

Kinds: Linen and NNX x BatchNorm / LayerNorm / GroupNorm x a depthwise block / a residual
block / a concatenation (the same architecture in both APIs; random weights, 16x16x3 inputs).
Per kind: the channel groups traced, params and MACs before -> after shrinking at ratio 0.5
(l1, uniform), max |shrunk - masked| (masked = `prune.apply_with_gates`, the function the
vmapped search evaluates), the shrunk model quantized to 3 bits (INQ's rule: 2 exponents, 5
codes), saved with `quant.save_quantized` and reloaded with `load_quantized(path, model=...)`
(max |reloaded - in-memory quantized| logits), and the reloaded model exported to ONNX and run
in onnxruntime on a batch of 8 (max |logit diff| against JAX, argmax equal).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import qprune  # noqa: E402
from qprune import deploy, prune, quant  # noqa: E402

WIDTH = 16


def linen_norm(kind, features):
  if kind == 'bn':
    return nn.BatchNorm(use_running_average=True)
  if kind == 'ln':
    return nn.LayerNorm()
  return nn.GroupNorm(num_groups=4)


class LinenNet(nn.Module):
  norm: str
  topology: str

  @nn.compact
  def __call__(self, x, train=False):
    def cnr(y, features, kernel=(3, 3), groups=1, act=True):
      y = nn.Conv(features, kernel, feature_group_count=groups, use_bias=False)(y)
      y = linen_norm(self.norm, features)(y)
      return nn.gelu(y) if act else y

    x = cnr(x, WIDTH)
    if self.topology == 'depthwise':
      x = cnr(x, WIDTH, groups=WIDTH)
      x = cnr(x, 2 * WIDTH, kernel=(1, 1))
    elif self.topology == 'residual':
      y = cnr(cnr(x, WIDTH), WIDTH, act=False)
      x = nn.gelu(x + y)
    else:
      x = jnp.concatenate([cnr(x, WIDTH), cnr(x, WIDTH // 2, kernel=(1, 1))], -1)
      x = cnr(x, WIDTH)
    x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(10)(x.mean(axis=(1, 2)))


class NnxNet(nnx.Module):
  def __init__(self, norm: str, topology: str, *, rngs: nnx.Rngs):
    self.norm_kind, self.topology = norm, topology
    self.layers = nnx.Dict()
    self._count = 0
    rngs_ = rngs

    def cnr(name, cin, cout, kernel=(3, 3), groups=1):
      conv = nnx.Conv(cin, cout, kernel, feature_group_count=groups, use_bias=False, rngs=rngs_)
      if norm == 'bn':
        norm_layer = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs_)
      elif norm == 'ln':
        norm_layer = nnx.LayerNorm(cout, rngs=rngs_)
      else:
        norm_layer = nnx.GroupNorm(cout, num_groups=4, rngs=rngs_)
      self.layers[name] = nnx.List([conv, norm_layer])

    cnr('stem', 3, WIDTH)
    if topology == 'depthwise':
      cnr('dw', WIDTH, WIDTH, groups=WIDTH)
      cnr('pw', WIDTH, 2 * WIDTH, kernel=(1, 1))
      last = 2 * WIDTH
    elif topology == 'residual':
      cnr('a', WIDTH, WIDTH)
      cnr('b', WIDTH, WIDTH)
      last = WIDTH
    else:
      cnr('left', WIDTH, WIDTH)
      cnr('right', WIDTH, WIDTH // 2, kernel=(1, 1))
      cnr('merge', WIDTH + WIDTH // 2, WIDTH)
      last = WIDTH
    self.head = nnx.Linear(last, 10, rngs=rngs)

  def _cnr(self, name, x, act=True):
    conv, norm_layer = self.layers[name]
    y = norm_layer(conv(x))
    return nnx.gelu(y) if act else y

  def __call__(self, x):
    x = self._cnr('stem', x)
    if self.topology == 'depthwise':
      x = self._cnr('pw', self._cnr('dw', x))
    elif self.topology == 'residual':
      x = nnx.gelu(x + self._cnr('b', self._cnr('a', x), act=False))
    else:
      x = jnp.concatenate([self._cnr('left', x), self._cnr('right', x)], -1)
      x = self._cnr('merge', x)
    x = nnx.max_pool(x, (2, 2), (2, 2))
    return self.head(x.mean(axis=(1, 2)))


def _maxdiff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def run_kind(api: str, norm: str, topology: str, x, folder: str) -> dict:
  """One row (see the module docstring)."""
  path = os.path.join(folder, f'{api}_{norm}_{topology}.qpq')
  if api == 'linen':
    model = LinenNet(norm, topology)
    variables = model.init(jax.random.PRNGKey(0), x)
    groups = prune.derive_groups(variables, model=model, example_input=x)
    masks = prune.make_masks(variables, groups, 'l1', 0.5)
    small, small_vars = prune.shrink(model, variables, groups, masks)
    before = (qprune.count_params(variables), qprune.count_macs(model, variables, x))
    after = (qprune.count_params(small_vars), qprune.count_macs(small, small_vars, x))
    shrunk_out = small.apply(small_vars, x, train=False)
    masked = prune.apply_with_gates(model, variables, x, groups, masks)
    targets = quant.inq_targets(quant.quantizable_layers(small_vars), 3)
    quantized = {**small_vars, 'params': quant.quantize_params(small_vars['params'], targets)}
    quant.save_quantized(path, quantized, targets, model=small, example_input=x)
    loaded_model, loaded_vars = qprune.load_quantized(path, model=LinenNet(norm, topology))
    reload_diff = _maxdiff(loaded_model.apply(loaded_vars, x, train=False),
                           small.apply(quantized, x, train=False))
    reference = loaded_model.apply(loaded_vars, x, train=False)
    data = deploy.to_onnx(loaded_model, loaded_vars, x)
  else:
    module = NnxNet(norm, topology, rngs=nnx.Rngs(0))
    groups = prune.derive_groups(module, example_input=x)
    masks = prune.make_masks(module, groups, 'l1', 0.5)
    small = prune.shrink(module, groups, masks)
    before = (qprune.count_params(module), qprune.count_macs(module, x))
    after = (qprune.count_params(small), qprune.count_macs(small, x))
    small.eval()
    shrunk_out = small(x)
    masked = prune.apply_with_gates(module, x, groups, masks)
    targets = quant.inq_targets(quant.quantizable_layers(small), 3)
    quantized = quant.quantize_params(small, targets)
    quant.save_quantized(path, quantized, targets, example_input=x)
    loaded = qprune.load_quantized(path, model=NnxNet(norm, topology, rngs=nnx.Rngs(1)))
    loaded.eval()
    quantized.eval()
    reload_diff = _maxdiff(loaded(x), quantized(x))
    reference = loaded(x)
    data = deploy.to_onnx(loaded, None, x)
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(data, providers=['CPUExecutionProvider'])
  onnx_out = session.run(None, {'images': np.asarray(x)})[0]
  return {'kind': f'{api} {norm.upper()} {topology}',
          'groups': len(groups),
          'params': f'{before[0]:,} -> {after[0]:,}', 'macs': f'{before[1]:,} -> {after[1]:,}',
          'masked': _maxdiff(shrunk_out, masked), 'reload': reload_diff,
          'onnx': _maxdiff(onnx_out, reference),
          'argmax': bool((onnx_out.argmax(-1) == np.asarray(reference).argmax(-1)).all()),
          'bytes': os.path.getsize(path)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--only', default='', help='run only kinds whose name contains this')
  args = parser.parse_args(argv)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3))
  print('| model kind | groups | params 100 % -> 50 % | MACs 100 % -> 50 % | max \\|shrunk - '
        'masked\\| | 3-bit file, reloaded: max diff | ONNX max \\|logit diff\\| (argmax equal) |')
  print('|---|---|---|---|---|---|---|')
  failed = 0
  with tempfile.TemporaryDirectory() as folder:
    for api in ('linen', 'nnx'):
      for norm in ('bn', 'ln', 'gn'):
        for topology in ('depthwise', 'residual', 'concat'):
          name = f'{api} {norm} {topology}'
          if args.only not in name:
            continue
          start = time.time()
          try:
            r = run_kind(api, norm, topology, x, folder)
          except Exception as e:  # pylint: disable=broad-except
            failed += 1
            print(f'| {name} | FAILED: {type(e).__name__}: {str(e)[:120]} |||||||')
            continue
          print(f'| {r["kind"]} | {r["groups"]} | {r["params"]} | {r["macs"]} | '
                f'{r["masked"]:.1e} | {r["bytes"]:,} B, {r["reload"]:.1e} | '
                f'{r["onnx"]:.1e} ({"yes" if r["argmax"] else "NO"}) |', flush=True)
          print(f'  {name}: {time.time() - start:.1f} s', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
