"""ONNX export: the zoo's own graphs here; any other model (Linen, NNX) from its jaxpr
(`qprune.deploy.onnx_jaxpr`, chosen by `to_onnx_model(..., builder='auto')`).

The zoo models (full, pruned/shrunk, or quantized-then-dequantized):

The graph is built directly with the `onnx` package's helper API from the model's *variables*
(layer widths are read from the kernel shapes, so a shrunk model needs no extra information) and
mirrors exactly what the Flax zoo computes at inference (`train=False`):

  images uint8 [N, H, W, C]  (the same NHWC uint8 input `model.apply` takes)
    -> Cast float32 -> Sub mean·255 -> Div std·255 (the model's built-in normalization)
    -> Transpose to NCHW (ONNX runtimes' native conv layout)
    -> per architecture: Conv (BatchNorm folded into the conv's weights and bias, or kept as a
       per-channel Mul + Add with `fold_bn=False`), Relu, MaxPool, GlobalAveragePool, Flatten,
       Gemm (dense), Add + Slice/Pad (ResNet option-A shortcuts)
    -> logits float32 [N, classes]

`SAME` paddings are computed from the static spatial shape exactly as XLA does (the extra pixel
at the end), so odd sizes and stride 2 match. The batch dimension is symbolic ('batch').
LeNet/AlexNet flatten NHWC activations: the first dense kernel's rows are permuted to NCHW order
instead of transposing the activations back.

The graph always computes in float32, whatever the model's compute dtype (a bfloat16-trained
model's export matches its float32 evaluation, not its bfloat16 one).

BatchNorm folding changes float rounding (W·mul is rounded once), so logits differ from qprune's
by float32 rounding only (~1e-6 relative); tests require <= 1e-4.
"""
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qprune.deploy.onnx_jaxpr import OnnxNotInstalledError, _onnx  # noqa: F401  (re-exported)
from qprune.errors import UserError

OPSET = 17
BN_EPSILON = 1e-5  # the zoo's BatchNorm epsilon (qprune.models.layers.batch_norm)


class UnsupportedModelError(UserError):
  """The model is not one of the zoo architectures the ONNX exporter knows."""


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of XLA's 'SAME' along one axis: the odd pixel goes at the end."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _out_size(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> int:
  return (size + pads[0] + pads[1] - kernel) // stride + 1


class _Builder:
  """Accumulates nodes and initializers; tracks the current tensor's (channels, H, W)."""

  def __init__(self):
    self.onnx = _onnx()
    self.nodes: list[Any] = []
    self.initializers: list[Any] = []
    self._names = set()

  def name(self, base: str) -> str:
    base = base.replace('/', '.')
    name, i = base, 1
    while name in self._names:
      i += 1
      name = f'{base}_{i}'
    self._names.add(name)
    return name

  def const(self, base: str, value, dtype=np.float32) -> str:
    name = self.name(base)
    self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def node(self, op: str, inputs: Sequence[str], base: str, **attrs) -> str:
    out = self.name(base)
    self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
    return out


class _Tensor:
  """A graph value in NCHW with its static channel count and spatial size."""

  def __init__(self, name: str, channels: int, height: int, width: int):
    self.name, self.channels, self.height, self.width = name, channels, height, width


def _bn_affine(bn_params, bn_stats) -> tuple[np.ndarray, np.ndarray]:
  """(mul, shift) of inference BatchNorm, computed like qprune.ops.batchnorm (float32)."""
  scale = np.asarray(bn_params['scale'], np.float32)
  var = np.asarray(bn_stats['var'], np.float32)
  mean = np.asarray(bn_stats['mean'], np.float32)
  mul = (scale / np.sqrt(var + np.float32(BN_EPSILON))).astype(np.float32)
  shift = (np.asarray(bn_params['bias'], np.float32) - mean * mul).astype(np.float32)
  return mul, shift


class _ZooGraph:
  """Layer helpers over a `_Builder` and the model's variables."""

  def __init__(self, variables: Mapping, fold_bn: bool):
    self.b = _Builder()
    self.params = variables['params']
    self.stats = variables.get('batch_stats', {})
    self.fold_bn = fold_bn

  def _module(self, path: str, tree) -> Mapping:
    node = tree
    for part in path.split('/'):
      if part not in node:
        raise UnsupportedModelError(f'variables have no {path!r}: not the expected zoo layout')
      node = node[part]
    return node

  def conv_bn(self, x: _Tensor, conv: str, bn: str | None, strides=(1, 1),
              padding: str = 'SAME', relu: bool = False) -> _Tensor:
    kernel = np.asarray(self._module(conv, self.params)['kernel'], np.float32)
    kh, kw, cin, cout = kernel.shape
    if cin != x.channels:
      raise UnsupportedModelError(f'{conv}: kernel expects {cin} input channels, has {x.channels}')
    w = np.transpose(kernel, (3, 2, 0, 1))  # (out, in, kh, kw)
    if padding == 'SAME':
      ph, pw = same_pads(x.height, kh, strides[0]), same_pads(x.width, kw, strides[1])
    else:
      ph, pw = (0, 0), (0, 0)
    inputs = [x.name]
    affine = (None if bn is None
              else _bn_affine(self._module(bn, self.params), self._module(bn, self.stats)))
    if affine is not None and self.fold_bn:
      mul, shift = affine
      w = (w * mul[:, None, None, None]).astype(np.float32)
      inputs += [self.b.const(f'{conv}/weight', w), self.b.const(f'{conv}/bias', shift)]
    else:
      inputs += [self.b.const(f'{conv}/weight', w)]
    y = self.b.node('Conv', inputs, conv, kernel_shape=[kh, kw], strides=list(strides),
                    pads=[ph[0], pw[0], ph[1], pw[1]])
    if bn is not None and affine is not None and not self.fold_bn:
      mul, shift = affine
      y = self.b.node('Mul', [y, self.b.const(f'{bn}/mul', mul.reshape(-1, 1, 1))], f'{bn}/mul')
      y = self.b.node('Add', [y, self.b.const(f'{bn}/shift', shift.reshape(-1, 1, 1))], bn)
    if relu:
      y = self.b.node('Relu', [y], f'{bn or conv}/relu')
    return _Tensor(y, cout, _out_size(x.height, kh, strides[0], ph),
                   _out_size(x.width, kw, strides[1], pw))

  def max_pool(self, x: _Tensor, window: int, stride: int, padding: str = 'VALID') -> _Tensor:
    if padding == 'SAME':
      ph, pw = same_pads(x.height, window, stride), same_pads(x.width, window, stride)
    else:
      ph, pw = (0, 0), (0, 0)
    y = self.b.node('MaxPool', [x.name], 'maxpool', kernel_shape=[window, window],
                    strides=[stride, stride], pads=[ph[0], pw[0], ph[1], pw[1]])
    return _Tensor(y, x.channels, _out_size(x.height, window, stride, ph),
                   _out_size(x.width, window, stride, pw))

  def flatten_nhwc_dense(self, x: _Tensor, dense: str, relu: bool) -> tuple[str, int]:
    """Flatten (NCHW) + Gemm whose kernel rows, stored in NHWC order, are permuted to NCHW."""
    module = self._module(dense, self.params)
    kernel = np.asarray(module['kernel'], np.float32)
    c, h, w = x.channels, x.height, x.width
    if kernel.shape[0] != c * h * w:
      raise UnsupportedModelError(f'{dense}: kernel has {kernel.shape[0]} inputs, the flattened '
                                  f'activation {c}x{h}x{w}')
    kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
    flat = self.b.node('Flatten', [x.name], 'flatten', axis=1)
    return self._gemm(flat, dense, kernel, module, relu), kernel.shape[1]

  def dense(self, x: str, dense: str, relu: bool) -> tuple[str, int]:
    module = self._module(dense, self.params)
    kernel = np.asarray(module['kernel'], np.float32)
    return self._gemm(x, dense, kernel, module, relu), kernel.shape[1]

  def _gemm(self, x: str, dense: str, kernel, module, relu: bool) -> str:
    bias = np.asarray(module.get('bias', np.zeros(kernel.shape[1])), np.float32)
    y = self.b.node('Gemm', [x, self.b.const(f'{dense}/weight', kernel),
                             self.b.const(f'{dense}/bias', bias)], dense)
    return self.b.node('Relu', [y], f'{dense}/relu') if relu else y

  def global_mean(self, x: _Tensor) -> str:
    y = self.b.node('GlobalAveragePool', [x.name], 'global_pool')
    return self.b.node('Flatten', [y], 'global_pool/flatten', axis=1)


# ---------------------------------------------------------------------------------------------
# Architectures (mirror qprune/models/*.py).

def _lenet(g: _ZooGraph, x: _Tensor) -> str:
  for i in (1, 2):
    x = g.conv_bn(x, f'conv{i}', f'bn{i}', padding='VALID', relu=True)
    x = g.max_pool(x, 2, 2)
  y, _ = g.flatten_nhwc_dense(x, 'fc1', relu=True)
  return g.dense(y, 'fc2', relu=False)[0]


def _alexnet(g: _ZooGraph, x: _Tensor) -> str:
  for i, pool in enumerate((True, True, False, False, True), start=1):
    x = g.conv_bn(x, f'conv{i}', f'bn{i}', relu=True)
    if pool:
      x = g.max_pool(x, 3, 2, padding='SAME')
  y, _ = g.flatten_nhwc_dense(x, 'fc1', relu=True)
  y, _ = g.dense(y, 'fc2', relu=True)
  return g.dense(y, 'fc3', relu=False)[0]


def _vgg(g: _ZooGraph, x: _Tensor, depth: int) -> str:
  from qprune.models.vgg import CONFIGS  # pylint: disable=g-import-not-at-top
  i = 0
  for item in CONFIGS[depth]:
    if item == 'M':
      x = g.max_pool(x, 2, 2)
      continue
    i += 1
    x = g.conv_bn(x, f'conv{i}', f'bn{i}', relu=True)
  return g.dense(g.global_mean(x), 'fc', relu=False)[0]


def _resnet(g: _ZooGraph, x: _Tensor, depth: int) -> str:
  n = (depth - 2) // 6
  x = g.conv_bn(x, 'stem_conv', 'stem_bn', relu=True)
  for s in (1, 2, 3):
    for b in range(1, n + 1):
      name = f'stage{s}_block{b}'
      stride = 2 if (s > 1 and b == 1) else 1
      y = g.conv_bn(x, f'{name}/conv1', f'{name}/bn1', strides=(stride, stride), relu=True)
      y = g.conv_bn(y, f'{name}/conv2', f'{name}/bn2')
      shortcut = x.name
      if stride > 1:
        shortcut = g.b.node('Slice', [shortcut, g.b.const('ss/starts', [0, 0], np.int64),
                                      g.b.const('ss/ends', [2 ** 62, 2 ** 62], np.int64),
                                      g.b.const('ss/axes', [2, 3], np.int64),
                                      g.b.const('ss/steps', [stride, stride], np.int64)],
                            f'{name}/subsample')
      extra = y.channels - x.channels
      if extra > 0:
        pads = g.b.const(f'{name}/pads', [0, 0, 0, 0, 0, extra, 0, 0], np.int64)
        shortcut = g.b.node('Pad', [shortcut, pads], f'{name}/pad_channels')
      elif extra < 0:
        shortcut = g.b.node('Slice', [shortcut, g.b.const('sc/starts', [0], np.int64),
                                      g.b.const('sc/ends', [y.channels], np.int64),
                                      g.b.const('sc/axes', [1], np.int64)],
                            f'{name}/crop_channels')
      out = g.b.node('Add', [y.name, shortcut], f'{name}/add')
      x = _Tensor(g.b.node('Relu', [out], f'{name}/relu'), y.channels, y.height, y.width)
  return g.dense(g.global_mean(x), 'fc', relu=False)[0]


def _unwrap(model):
  """The zoo model inside prune's `ShrunkModel` wrapper (widths are read from the variables)."""
  inner = getattr(model, 'model', None)
  return inner if type(model).__name__ == 'ShrunkModel' and inner is not None else model


def _architecture(model):
  """The builder of `model`'s zoo class; UnsupportedModelError for anything else."""
  from qprune.models.alexnet import AlexNet  # pylint: disable=g-import-not-at-top
  from qprune.models.lenet import LeNet5  # pylint: disable=g-import-not-at-top
  from qprune.models.resnet import ResNetCifar  # pylint: disable=g-import-not-at-top
  from qprune.models.vgg import VGG  # pylint: disable=g-import-not-at-top
  if isinstance(model, LeNet5):
    return _lenet
  if isinstance(model, AlexNet):
    return _alexnet
  if isinstance(model, VGG):
    return lambda g, x: _vgg(g, x, model.depth)
  if isinstance(model, ResNetCifar):
    if (model.depth - 2) % 6:
      raise UnsupportedModelError(f'CIFAR ResNet depth must be 6n+2, got {model.depth}')
    return lambda g, x: _resnet(g, x, model.depth)
  raise UnsupportedModelError(
      f'ONNX export knows the qprune zoo (lenet5, alexnet, vgg*, resnet*), not '
      f'{type(model).__name__}')


def _is_zoo(model) -> bool:
  from qprune.models.base import ZooModel  # pylint: disable=g-import-not-at-top
  return isinstance(_unwrap(model), ZooModel)


def to_onnx_model(model, variables: Mapping, input_shape, *, fold_bn: bool = True,
                  opset: int = OPSET, graph_name: str = 'qprune', builder: str = 'auto',
                  dynamic_batch: bool = True):
  """An `onnx.ModelProto` computing `model.apply(variables, images, train=False)`.

  model: any Flax model: a zoo model (`qprune.create_model`, `load_model`, `load_quantized`, a
  shrunk one), any Linen model (a `prune.ShrunkModel` too), or an nnx.Module (variables None).
  variables: its {'params', 'batch_stats'} (numpy or jax arrays).
  input_shape: (H, W, C) of uint8 images, or an example input with a batch axis (array or
  ShapeDtypeStruct; its dtype is the graph input's).
  dynamic_batch: the graph's batch axis is symbolic ('batch'), as the zoo's always is; False
  (the jaxpr builder only) fixes it to the example's batch size, for a model whose Python
  computes with the batch size.
  builder: 'zoo' (the zoo's own layer-by-layer graph; fold_bn folds inference BatchNorm into the
  conv), 'jaxpr' (any model, from its jaxpr: `qprune.deploy.onnx_jaxpr`), 'auto' (zoo models
  the first, everything else the second).
  The graph's input is 'images', its output 'logits'.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if builder not in ('auto', 'zoo', 'jaxpr'):
    raise UnsupportedModelError(f"builder must be 'auto', 'zoo' or 'jaxpr', got {builder!r}")
  from qprune.models import interop  # pylint: disable=g-import-not-at-top
  if interop.is_nnx(model):
    model, variables = interop.split(model)
  traced = builder == 'jaxpr' or (builder == 'auto' and not _is_zoo(model))
  if not dynamic_batch and not traced:
    raise UnsupportedModelError("dynamic_batch=False applies to the jaxpr builder only (the zoo's "
                                "graph always has a symbolic batch): pass builder='jaxpr'")
  if traced:
    from qprune.deploy import onnx_jaxpr  # pylint: disable=g-import-not-at-top
    from qprune.models.counting import call_model  # pylint: disable=g-import-not-at-top
    if hasattr(input_shape, 'shape') and hasattr(input_shape, 'dtype'):
      example = input_shape
    else:
      example = jax.ShapeDtypeStruct((1, *input_shape), np.uint8)
    frozen = jax.device_get(variables)
    _onnx()
    try:
      jax.eval_shape(lambda x: call_model(model, frozen, x), example)
    except Exception as e:  # pylint: disable=broad-except
      raise UnsupportedModelError(
          f'{type(model).__name__} does not run on an input of shape {tuple(example.shape)} '
          f'{np.dtype(example.dtype)} with these variables (not a zoo model: the ONNX graph is '
          f'built from its jaxpr): {type(e).__name__}: {(str(e).splitlines() or [""])[0][:200]}'
      ) from None
    return onnx_jaxpr.jaxpr_to_onnx(lambda x: call_model(model, frozen, x), example,
                                    graph_name=graph_name, opset=opset,
                                    dynamic_batch=dynamic_batch)
  if hasattr(input_shape, 'shape'):
    input_shape = tuple(input_shape.shape[1:])
  if len(input_shape) != 3:
    raise UnsupportedModelError(f'input_shape must be (H, W, C), got {tuple(input_shape)}')
  model = _unwrap(model)
  build = _architecture(model)
  variables = jax.device_get(variables)
  g = _ZooGraph(variables, fold_bn)
  onnx = g.b.onnx
  h, w, c = (int(d) for d in input_shape)
  mean = np.asarray(model.mean, np.float32) * np.float32(255.0)
  std = np.asarray(model.std, np.float32) * np.float32(255.0)
  x = g.b.node('Cast', ['images'], 'to_float', to=onnx.TensorProto.FLOAT)
  x = g.b.node('Sub', [x, g.b.const('norm/mean', mean)], 'norm/sub')
  x = g.b.node('Div', [x, g.b.const('norm/std', std)], 'norm/div')
  x = g.b.node('Transpose', [x], 'to_nchw', perm=[0, 3, 1, 2])
  logits = build(g, _Tensor(x, c, h, w))
  g.b.nodes.append(onnx.helper.make_node('Identity', [logits], ['logits'], name='logits'))
  graph = onnx.helper.make_graph(
      g.b.nodes, graph_name,
      [onnx.helper.make_tensor_value_info('images', onnx.TensorProto.UINT8, ['batch', h, w, c])],
      [onnx.helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT,
                                          ['batch', int(model.num_classes)])],
      initializer=g.b.initializers)
  proto = onnx.helper.make_model(graph, producer_name='qprune',
                                 opset_imports=[onnx.helper.make_opsetid('', opset)])
  proto.ir_version = min(proto.ir_version, 8)  # readable by older runtimes too (opset 17 needs 8)
  onnx.checker.check_model(proto)
  return proto


def to_onnx(model, variables: Mapping, input_shape, path: str | None = None,
            **kwargs) -> bytes:
  """Serialized ONNX model (see `to_onnx_model`); also written atomically to `path` if given."""
  data = to_onnx_model(model, variables, input_shape, **kwargs).SerializeToString()
  if path is not None:
    from qprune import files  # pylint: disable=g-import-not-at-top
    files.write_bytes_atomic(path, data)
  return data


def num_nodes(data: bytes) -> int:
  """Number of nodes of a serialized ONNX model (a cheap sanity figure)."""
  proto = _onnx().load_from_string(data)
  return len(proto.graph.node)

