"""ONNX for any model JAX can trace: the graph built from the model's jaxpr, one equation at a time.

`jaxpr_to_onnx(fn, example_input)` traces `fn(x)` (`jax.make_jaxpr`; the model's variables are
closed over, so they become the jaxpr's constants and the graph's initializers) and emits ONNX
nodes per primitive:

  elementwise        add sub mul div max min neg abs sign exp log tanh logistic erf sqrt rsqrt
                     pow integer_pow square floor ceil round, comparisons, and/or/not, select_n,
                     clamp, convert_element_type (Cast)
  shapes             reshape squeeze expand_dims broadcast_in_dim (Reshape + Expand) transpose
                     concatenate pad slice iota (a constant)
  reductions         reduce_sum/max/min (+ argmax/argmin), cumsum
  layers             conv_general_dilated (any dimension numbers, strides, padding, dilation,
                     feature_group_count: grouped and depthwise convs) -> Conv in NCHW between
                     two Transposes; dot_general -> Einsum (dense layers, any batch/contraction);
                     reduce_window_max / reduce_window_sum -> MaxPool / AveragePool (x window)
  calls              pjit, custom_jvp_call, custom_vjp_call, remat: their body is inlined

So whatever the model's Python does (Linen or NNX, BatchNorm / LayerNorm / GroupNorm arithmetic,
GELU, residual adds, concatenation, flatten) arrives as these primitives. The graph computes in
float32 (bfloat16 values are widened), takes the example input's dtype and shape and returns the
model's output. Its batch axis is symbolic ('batch'): the model is traced with a symbolic batch
size (JAX's shape polymorphism), and a shape that holds it becomes a Reshape's -1 or the input's
batch size read at run time. `dynamic_batch=False` fixes the batch to the example's instead (for
a model whose Python computes with the batch size). A primitive outside this list raises
`UnsupportedPrimitiveError` naming it.
"""
import string
from collections.abc import Callable

import numpy as np

from qprune.errors import UserError

OPSET = 17


class UnsupportedPrimitiveError(UserError):
  """The jaxpr holds a primitive (or a form of one) the ONNX builder does not translate."""


class OnnxNotInstalledError(ImportError):
  """The `onnx` package is missing (pip install 'qprune[onnx]')."""


def _onnx():
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise OnnxNotInstalledError(
        "ONNX export needs the 'onnx' package: pip install -e '.[onnx]'") from e
  return onnx


def _np_dtype(dtype) -> np.dtype:
  dtype = np.dtype(dtype)
  if dtype.kind == 'f' or dtype.name == 'bfloat16':
    return np.dtype(np.float32)
  return dtype


class _Graph:
  """Nodes, initializers and the names of the jaxpr's values."""

  def __init__(self):
    self.onnx = _onnx()
    self.nodes: list = []
    self.initializers: list = []
    self.counter = 0

  def fresh(self, base: str) -> str:
    self.counter += 1
    return f'{base}_{self.counter}'

  def const(self, value, dtype=None, base='const') -> str:
    array = np.asarray(value)
    array = array.astype(_np_dtype(dtype or array.dtype))
    name = self.fresh(base)
    self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
    return name

  def ints(self, values, base='shape') -> str:
    return self.const(np.asarray(values, np.int64), np.int64, base)

  def node(self, op: str, inputs, **attrs) -> str:
    out = self.fresh(op.lower())
    self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], **attrs))
    return out

  def tensor_type(self, dtype) -> int:
    return self.onnx.helper.np_dtype_to_tensor_dtype(_np_dtype(dtype))


_UNARY = {'neg': 'Neg', 'abs': 'Abs', 'sign': 'Sign', 'exp': 'Exp', 'log': 'Log', 'tanh': 'Tanh',
          'logistic': 'Sigmoid', 'erf': 'Erf', 'sqrt': 'Sqrt', 'floor': 'Floor', 'ceil': 'Ceil',
          'not': 'Not', 'sin': 'Sin', 'cos': 'Cos', 'is_finite': None}
_BINARY = {'add': 'Add', 'add_any': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div',
           'max': 'Max', 'min': 'Min', 'pow': 'Pow', 'eq': 'Equal', 'lt': 'Less',
           'le': 'LessOrEqual', 'gt': 'Greater', 'ge': 'GreaterOrEqual', 'and': 'And',
           'or': 'Or', 'rem': 'Mod'}
_IDENTITY = {'copy', 'copy_p', 'reduce_precision', 'optimization_barrier'}
_CALLS = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')
_CALL_PRIMITIVES = {'pjit', 'jit', 'closed_call', 'core_call', 'custom_jvp_call',
                    'custom_vjp_call', 'custom_vjp_call_jaxpr', 'remat', 'checkpoint', 'remat2',
                    'named_call'}


def _shape(v) -> tuple:
  """A value's shape: ints, and the symbolic batch size (or an expression of it) as is."""
  return tuple(_known(d) for d in v.aval.shape)


def _known(d):
  return int(d) if isinstance(d, (int, np.integer)) else d


def _is_symbolic(d) -> bool:
  return not isinstance(d, (int, np.integer))


def _same_symbol(a, b) -> bool:
  return _is_symbolic(a) and _is_symbolic(b) and a == b


def _ints(dims) -> list[int]:
  """`dims` as ints; UnsupportedPrimitiveError where one is symbolic."""
  if any(_is_symbolic(d) for d in dims):
    raise UnsupportedPrimitiveError(
        f'ONNX export: an operation whose parameters depend on the batch size ({dims}); export '
        'with dynamic_batch=False for a graph fixed to the example\'s batch size')
  return [int(d) for d in dims]


class _Emitter:
  """Walks a jaxpr, emitting ONNX nodes (see the module docstring)."""

  def __init__(self, graph: _Graph, input_name: str = 'images', batch=None):
    self.g = graph
    self.input_name = input_name
    self.batch = batch  # the symbolic batch size the jaxpr was traced with, or None
    self._batch_tensor: str | None = None

  def batch_tensor(self) -> str:
    """The input's batch size at run time, an int64 tensor of shape [1] (emitted once)."""
    if self._batch_tensor is None:
      self._batch_tensor = self.g.node('Shape', [self.input_name], start=0, end=1)
    return self._batch_tensor

  def shape_tensor(self, dims, keep=()) -> str:
    """An int64 shape tensor for `dims`. A symbolic dim at a position in `keep` becomes 1
    (Expand keeps the operand's size there); one equal to the batch size, the input's batch
    size; otherwise (Reshape only: `keep` is None) a single symbolic dim becomes -1."""
    if not any(_is_symbolic(d) for d in dims):
      return self.g.ints([int(d) for d in dims])
    if keep is None and sum(_is_symbolic(d) for d in dims) == 1:
      return self.g.ints([-1 if _is_symbolic(d) else int(d) for d in dims])
    pieces = []
    for i, d in enumerate(dims):
      if not _is_symbolic(d):
        pieces.append(self.g.ints([int(d)]))
      elif keep is not None and i in keep:
        pieces.append(self.g.ints([1]))
      elif self.batch is not None and d == self.batch:
        pieces.append(self.batch_tensor())
      else:
        raise UnsupportedPrimitiveError(
            f'ONNX export: a shape {dims} the graph cannot compute from the batch size; export '
            'with dynamic_batch=False for a graph fixed to the example\'s batch size')
    return self.g.node('Concat', pieces, axis=0)

  def walk(self, jaxpr, inputs: list[str], consts) -> list[str]:
    from jax.extend import core as jex_core  # pylint: disable=g-import-not-at-top
    env: dict = {}

    def read(v):
      if isinstance(v, jex_core.Literal):
        return self.g.const(np.asarray(v.val), v.aval.dtype, 'literal')
      return env[v]

    for v, c in zip(jaxpr.constvars, consts):
      env[v] = self.g.const(np.asarray(c), np.asarray(c).dtype, 'weight')
    for v, name in zip(jaxpr.invars, inputs):
      env[v] = name
    for eqn in jaxpr.eqns:
      outs = self.eqn(eqn, [read(v) for v in eqn.invars])
      for v, name in zip(eqn.outvars, outs):
        env[v] = name
    return [read(v) for v in jaxpr.outvars]

  def eqn(self, eqn, ins) -> list[str]:
    name = eqn.primitive.name
    g = self.g
    if name in _CALL_PRIMITIVES:
      for key in _CALLS:
        sub = eqn.params.get(key)
        if sub is None:
          continue
        if hasattr(sub, 'jaxpr') and hasattr(sub, 'consts'):
          return self.walk(sub.jaxpr, ins, sub.consts)
        if hasattr(sub, 'eqns'):
          return self.walk(sub, ins, ())
    if name in _IDENTITY:
      return [g.node('Identity', [ins[0]])]
    unary = _UNARY.get(name)
    if unary:
      return [g.node(unary, [ins[0]])]
    if name in _BINARY:
      return [g.node(_BINARY[name], ins)]
    handler = getattr(self, f'op_{name}', None)
    if handler is None:
      raise UnsupportedPrimitiveError(
          f'ONNX export: the model uses the primitive {name!r}, which the jaxpr builder does not '
          'translate (qprune/deploy/onnx_jaxpr.py lists what it does)')
    out = handler(eqn, ins)
    return out if isinstance(out, list) else [out]

  # -- elementwise ---------------------------------------------------------------------------

  def op_ne(self, eqn, ins):
    return self.g.node('Not', [self.g.node('Equal', ins)])

  def op_rsqrt(self, eqn, ins):
    return self.g.node('Reciprocal', [self.g.node('Sqrt', ins)])

  def op_square(self, eqn, ins):
    return self.g.node('Mul', [ins[0], ins[0]])

  def op_round(self, eqn, ins):
    method = int(eqn.params.get('rounding_method', 0))
    if method == 1:  # to nearest even: ONNX's Round
      return self.g.node('Round', ins)
    x = ins[0]  # away from zero: sign(x) * floor(|x| + 0.5)
    half = self.g.const(np.float32(0.5))
    return self.g.node('Mul', [self.g.node('Sign', [x]), self.g.node(
        'Floor', [self.g.node('Add', [self.g.node('Abs', [x]), half])])])

  def op_integer_pow(self, eqn, ins):
    y = int(eqn.params['y'])
    dtype = eqn.invars[0].aval.dtype
    return self.g.node('Pow', [ins[0], self.g.const(np.asarray(y, _np_dtype(dtype)))])

  def op_exp2(self, eqn, ins):
    return self.g.node('Pow', [self.g.const(np.float32(2.0)), ins[0]])

  def op_log1p(self, eqn, ins):
    return self.g.node('Log', [self.g.node('Add', [ins[0], self.g.const(np.float32(1.0))])])

  def op_expm1(self, eqn, ins):
    return self.g.node('Sub', [self.g.node('Exp', ins), self.g.const(np.float32(1.0))])

  def op_convert_element_type(self, eqn, ins):
    return self.g.node('Cast', ins, to=self.g.tensor_type(eqn.params['new_dtype']))

  def op_select_n(self, eqn, ins):
    pred, cases = ins[0], ins[1:]
    if len(cases) != 2:
      raise UnsupportedPrimitiveError('ONNX export: select_n with more than two cases')
    if eqn.invars[0].aval.dtype != np.bool_:
      pred = self.g.node('Cast', [pred], to=self.g.onnx.TensorProto.BOOL)
    return self.g.node('Where', [pred, cases[1], cases[0]])

  def op_clamp(self, eqn, ins):
    low, x, high = ins
    return self.g.node('Max', [self.g.node('Min', [x, high]), low])

  def op_stop_gradient(self, eqn, ins):
    return self.g.node('Identity', ins)

  # -- shapes --------------------------------------------------------------------------------

  def _reshape(self, x, shape):
    return self.g.node('Reshape', [x, self.shape_tensor(shape, keep=None)])

  def op_reshape(self, eqn, ins):
    if eqn.params.get('dimensions') is not None:
      raise UnsupportedPrimitiveError('ONNX export: reshape with a dimension permutation')
    return self._reshape(ins[0], _shape(eqn.outvars[0]))

  def op_squeeze(self, eqn, ins):
    return self._reshape(ins[0], _shape(eqn.outvars[0]))

  def op_expand_dims(self, eqn, ins):
    return self._reshape(ins[0], _shape(eqn.outvars[0]))

  def op_broadcast_in_dim(self, eqn, ins):
    out_shape = _shape(eqn.outvars[0])
    in_shape = _shape(eqn.invars[0])
    aligned = [1] * len(out_shape)
    for i, d in enumerate(eqn.params['broadcast_dimensions']):
      aligned[d] = in_shape[i]
    x = self._reshape(ins[0], aligned) if tuple(aligned) != in_shape else ins[0]
    if tuple(aligned) == out_shape:
      return self.g.node('Identity', [x])
    kept = [i for i, d in enumerate(out_shape) if _same_symbol(aligned[i], d)]
    return self.g.node('Expand', [x, self.shape_tensor(out_shape, keep=kept)])

  def op_transpose(self, eqn, ins):
    return self.g.node('Transpose', ins, perm=[int(p) for p in eqn.params['permutation']])

  def op_concatenate(self, eqn, ins):
    return self.g.node('Concat', ins, axis=int(eqn.params['dimension']))

  def op_pad(self, eqn, ins):
    config = eqn.params['padding_config']
    if any(interior for _, _, interior in config):
      raise UnsupportedPrimitiveError('ONNX export: pad with interior padding')
    pads = [int(lo) for lo, _, _ in config] + [int(hi) for _, hi, _ in config]
    return self.g.node('Pad', [ins[0], self.g.ints(pads), ins[1]], mode='constant')

  def op_slice(self, eqn, ins):
    starts = _ints(eqn.params['start_indices'])
    full = _shape(eqn.invars[0])  # (a symbolic limit is the whole axis: to its end)
    ends = [np.iinfo(np.int64).max if _same_symbol(e, full[i]) else e
            for i, e in enumerate(_known(e) for e in eqn.params['limit_indices'])]
    ends = _ints(ends)
    steps = [int(s) for s in (eqn.params.get('strides') or (1,) * len(starts))]
    return self.g.node('Slice', [ins[0], self.g.ints(starts), self.g.ints(ends),
                                 self.g.ints(range(len(starts))), self.g.ints(steps)])

  def op_iota(self, eqn, ins):
    shape = _ints(_shape(eqn.outvars[0]))
    dim = int(eqn.params['dimension'])
    values = np.broadcast_to(np.arange(shape[dim]).reshape(
        [-1 if i == dim else 1 for i in range(len(shape))]), shape)
    return self.g.const(values, eqn.params['dtype'])

  # -- reductions ----------------------------------------------------------------------------

  def op_reduce_sum(self, eqn, ins):
    return self.g.node('ReduceSum', [ins[0], self.g.ints(eqn.params['axes'])], keepdims=0)

  def op_reduce_max(self, eqn, ins):
    return self.g.node('ReduceMax', ins, axes=[int(a) for a in eqn.params['axes']], keepdims=0)

  def op_reduce_min(self, eqn, ins):
    return self.g.node('ReduceMin', ins, axes=[int(a) for a in eqn.params['axes']], keepdims=0)

  def _arg(self, op, eqn, ins):
    (axis,) = eqn.params['axes']
    out = self.g.node(op, ins, axis=int(axis), keepdims=0)
    return self.g.node('Cast', [out], to=self.g.tensor_type(eqn.params['index_dtype']))

  def op_argmax(self, eqn, ins):
    return self._arg('ArgMax', eqn, ins)

  def op_argmin(self, eqn, ins):
    return self._arg('ArgMin', eqn, ins)

  def op_cumsum(self, eqn, ins):
    return self.g.node('CumSum', [ins[0], self.g.ints(int(eqn.params['axis']))],
                       reverse=int(bool(eqn.params.get('reverse', False))))

  # -- layers --------------------------------------------------------------------------------

  def _nchw(self, x, ndim, channel_axis, batch_axis=0):
    """Permutation bringing (batch, channel, spatial...) to the front, and its inverse."""
    spatial = [a for a in range(ndim) if a not in (batch_axis, channel_axis)]
    return [batch_axis, channel_axis] + spatial

  def op_conv_general_dilated(self, eqn, ins):
    p = eqn.params
    dn = p['dimension_numbers']
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    if any(d != 1 for d in p['lhs_dilation']):
      raise UnsupportedPrimitiveError('ONNX export: a transposed convolution (lhs_dilation)')
    if int(p.get('batch_group_count', 1)) != 1:
      raise UnsupportedPrimitiveError('ONNX export: conv with batch_group_count')
    g = self.g
    x = g.node('Transpose', [ins[0]], perm=[int(a) for a in lhs_spec])
    w = g.node('Transpose', [ins[1]], perm=[int(a) for a in rhs_spec])
    pads = [int(lo) for lo, _ in p['padding']] + [int(hi) for _, hi in p['padding']]
    if any(v < 0 for v in pads):
      raise UnsupportedPrimitiveError('ONNX export: conv with negative padding')
    y = g.node('Conv', [x, w], strides=[int(s) for s in p['window_strides']], pads=pads,
               dilations=[int(d) for d in p['rhs_dilation']],
               group=int(p['feature_group_count']))
    inverse = [0] * len(out_spec)
    for i, a in enumerate(out_spec):
      inverse[int(a)] = i
    return g.node('Transpose', [y], perm=inverse)

  def op_dot_general(self, eqn, ins):
    (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
    ln, rn = len(_shape(eqn.invars[0])), len(_shape(eqn.invars[1]))
    letters = iter(string.ascii_letters)
    lhs = [next(letters) for _ in range(ln)]
    rhs = [next(letters) for _ in range(rn)]
    for a, b in list(zip(lc, rc)) + list(zip(lb, rb)):
      rhs[b] = lhs[a]
    out = ([lhs[a] for a in lb] + [lhs[a] for a in range(ln) if a not in lc and a not in lb] +
           [rhs[b] for b in range(rn) if b not in rc and b not in rb])
    equation = f'{"".join(lhs)},{"".join(rhs)}->{"".join(out)}'
    y = self.g.node('Einsum', ins, equation=equation)
    want = eqn.params.get('preferred_element_type') or eqn.outvars[0].aval.dtype
    if _np_dtype(want) != _np_dtype(eqn.invars[0].aval.dtype):
      y = self.g.node('Cast', [y], to=self.g.tensor_type(want))
    return y

  def _pool(self, op, eqn, ins):
    p = eqn.params
    dims = [int(d) for d in p['window_dimensions']]
    ndim = len(dims)
    if any(d != 1 for d in p.get('base_dilation', (1,) * ndim)) or any(
        d != 1 for d in p.get('window_dilation', (1,) * ndim)):
      raise UnsupportedPrimitiveError('ONNX export: dilated pooling')
    pooled = [a for a in range(ndim) if dims[a] != 1 or p['window_strides'][a] != 1 or
              tuple(p['padding'][a]) != (0, 0)]
    if 0 in pooled or len(pooled) > ndim - 2:
      raise UnsupportedPrimitiveError('ONNX export: pooling over the batch or every axis')
    channel = next(a for a in range(ndim - 1, 0, -1) if a not in pooled)
    rest = [a for a in range(1, ndim) if a not in pooled and a != channel]
    perm = [0] + rest + [channel] + pooled
    g = self.g
    x = g.node('Transpose', [ins[0]], perm=perm)
    shape = _shape(eqn.invars[0])
    lead = [shape[0]] + [shape[a] for a in rest]
    if rest:  # fold the other axes into the batch: ONNX pools are (N, C, spatial...)
      folded = -1 if any(_is_symbolic(d) for d in lead) else int(np.prod(lead))
      x = self._reshape(x, [folded] + [shape[channel]] + [shape[a] for a in pooled])
    pads = [int(p['padding'][a][0]) for a in pooled] + [int(p['padding'][a][1]) for a in pooled]
    attrs = dict(kernel_shape=[dims[a] for a in pooled],
                 strides=[int(p['window_strides'][a]) for a in pooled], pads=pads)
    if op == 'AveragePool':
      attrs['count_include_pad'] = 1
    y = g.node(op, [x], **attrs)
    if op == 'AveragePool':
      y = g.node('Mul', [y, g.const(np.float32(np.prod([dims[a] for a in pooled])))])
    out_shape = _shape(eqn.outvars[0])
    if rest:
      y = self._reshape(y, lead + [out_shape[channel]] + [out_shape[a] for a in pooled])
    inverse = [0] * ndim
    for i, a in enumerate(perm):
      inverse[a] = i
    return g.node('Transpose', [y], perm=inverse)

  def op_reduce_window_max(self, eqn, ins):
    return self._pool('MaxPool', eqn, ins)

  def op_reduce_window_sum(self, eqn, ins):
    return self._pool('AveragePool', eqn, ins)

  def op_reduce_window(self, eqn, ins):
    body = eqn.params['jaxpr']
    body = getattr(body, 'jaxpr', body)
    prims = [e.primitive.name for e in body.eqns]
    n = len(eqn.invars) // 2
    if n == 1 and prims in (['max'], ['add']):
      return self._pool('MaxPool' if prims == ['max'] else 'AveragePool', eqn, ins[:1])
    raise UnsupportedPrimitiveError(f'ONNX export: reduce_window with body {prims}')


def jaxpr_to_onnx(fn: Callable, example_input, *, graph_name: str = 'qprune',
                  opset: int = OPSET, input_name: str = 'images', output_name: str = 'logits',
                  dynamic_batch: bool = True):
  """An `onnx.ModelProto` computing `fn(x)` for inputs typed like `example_input` (an array or
  ShapeDtypeStruct) and shaped like it but for the batch axis, which is symbolic ('batch'); with
  `dynamic_batch=False`, fixed to the example's."""
  import jax  # pylint: disable=g-import-not-at-top
  shape = tuple(int(d) for d in example_input.shape)
  batch = None
  if dynamic_batch:
    (batch,) = jax.export.symbolic_shape('batch')
    try:
      closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((batch, *shape[1:]), example_input.dtype))
    except Exception as e:  # pylint: disable=broad-except  (whatever the model's Python raised)
      raise UnsupportedPrimitiveError(
          'ONNX export: the model does not trace with a symbolic batch size (its Python computes '
          f'with it: {type(e).__name__}: {(str(e).splitlines() or [""])[0][:160]}); export with '
          f'dynamic_batch=False for a graph fixed to the example\'s batch of {shape[0]}'
      ) from None
  else:
    closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct(shape, example_input.dtype))
  graph = _Graph()
  onnx = graph.onnx
  (out,) = _Emitter(graph, input_name, batch).walk(closed.jaxpr, [input_name], closed.consts)
  out_var = closed.jaxpr.outvars[0]
  out = graph.node('Cast', [out], to=graph.tensor_type(out_var.aval.dtype))
  graph.nodes.append(onnx.helper.make_node('Identity', [out], [output_name], name=output_name))

  def dims(values) -> list:
    return ['batch' if _is_symbolic(d) else int(d) for d in values]
  proto = onnx.helper.make_model(
      onnx.helper.make_graph(
          graph.nodes, graph_name,
          [onnx.helper.make_tensor_value_info(
              input_name, graph.tensor_type(example_input.dtype),
              ['batch', *shape[1:]] if dynamic_batch else list(shape))],
          [onnx.helper.make_tensor_value_info(output_name, graph.tensor_type(out_var.aval.dtype),
                                              dims(_shape(out_var)))],
          initializer=graph.initializers),
      producer_name='qprune', opset_imports=[onnx.helper.make_opsetid('', opset)])
  proto.ir_version = min(proto.ir_version, 8)
  onnx.checker.check_model(proto)
  return proto
