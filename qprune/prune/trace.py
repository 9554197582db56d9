"""Channel groups traced from the model itself: which layer produces and which reads each channel.

`traced_groups(model, variables, example_input)` runs `model.apply(variables, x, train=False)`
abstractly (`jax.make_jaxpr`, no FLOPs) with every call of a known layer (`nn.Conv`, `nn.Dense`,
`nn.ConvTranspose`, `nn.BatchNorm`, qprune's `layers.Conv` and `FusedBatchNorm`) intercepted
(`nn.intercept_methods`) and bracketed by two marker equations in the jaxpr. Why both: the
interception says *which module* a tensor enters and leaves (its params, its kind, its
`feature_group_count`) whatever the layer computes inside (qprune's conv is an im2col matmul on
small maps, a custom VJP elsewhere); the jaxpr says how the tensors flow *between* layers (ReLU,
pooling, residual adds, concatenation, flatten) for any plain-JAX glue code the user writes.

Abstract interpretation of the jaxpr: each tensor's channel axis carries a list of segments
`(space, length)` (concatenation makes several; a flatten tiles them `repeat` times, channel
fastest). A *space* is a set of coupled channels; spaces are merged with union-find:
* a conv / dense output starts a new space (its producer); its input segments record it as a
  consumer (at an offset after a concatenation, with `repeat` rows per channel after a flatten);
* a BatchNorm joins its input's spaces as a norm (its output is the same spaces);
* elementwise ops (activations, residual adds, BN arithmetic, masks) merge their operands'
  spaces: all members of an add share one group;
* pooling/means over other axes, transposes, reshapes that keep the channels fastest, spatial
  slices/pads pass the segments on; `pad` at the end of the channel axis (option-A shortcuts)
  makes a larger space whose prefix is the input's (members then use `mask[:length]`);
* depthwise convs (feature_group_count == in == out) are coupled: their output is their input's
  spaces and they join them as producers (filter c of the depthwise kernel is channel c); other
  grouped convs are not pruned.
Anything else that touches a channel axis (a reduction or slice over channels, an unknown
primitive, control flow, a raw `lax.conv`/`dot` outside a layer, a per-channel parameter outside
a known layer, a BatchNorm without scale) marks the spaces involved *blocked*; they are left
unpruned and one warning names the ops. The model's outputs are blocked (the classifier's units
are never pruned), as are channels that only exist in the input.

Limits (documented, not detected): constants closed over by the model are assumed uniform over
channels; `apply_with_gates` (search, taylor, attention) gates BN / producer outputs, which equals
`apply_masks` when the activations between a layer and its consumers map 0 to 0 (ReLU, GELU,
swish, tanh; not sigmoid).
"""
import dataclasses
import itertools
import math
import re
import warnings
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.extend import core as jex_core

from qprune.errors import UserError
from qprune.models import interop, layers
from qprune.models.counting import call_model, example_struct
from qprune.prune.group_types import RESIDUAL, ChannelGroup, Slot, _matches, ignore_layers


class TraceError(UserError):
  """The model cannot be traced for channel groups (bad input, or nothing prunable); a
  ValueError, reported by the binaries as one line."""


class NoPrunableChannelsError(TraceError):
  """Tracing found no channel group that can be pruned; the message says why."""


class PruningTraceWarning(UserWarning):
  """Some channels are left unpruned because an op could not be followed."""


CONV_TYPES = layers.CONV_TYPES
DENSE_TYPES = layers.DENSE_TYPES
NORM_TYPES = layers.BATCH_NORM_TYPES
CHANNEL_NORM_TYPES = layers.CHANNEL_NORM_TYPES
KNOWN_TYPES = CONV_TYPES + DENSE_TYPES + NORM_TYPES + CHANNEL_NORM_TYPES

_tag_p = jex_core.Primitive('qprune_layer_tag')
_tag_p.def_impl(lambda x, **_: x)
_tag_p.def_abstract_eval(lambda x, **_: x)

_SILENT_REASONS = ('model output', 'input channels')

_UNARY = {'neg', 'exp', 'exp2', 'log', 'log1p', 'expm1', 'tanh', 'logistic', 'sqrt', 'rsqrt',
          'cbrt', 'abs', 'sign', 'floor', 'ceil', 'round', 'erf', 'erfc', 'erf_inv', 'sin', 'cos',
          'tan', 'is_finite', 'not', 'integer_pow', 'square', 'convert_element_type', 'copy',
          'copy_p', 'reduce_precision', 'real', 'imag', 'conj', 'asin', 'acos',
          'atan', 'sinh', 'cosh', 'asinh', 'acosh', 'atanh', 'lgamma', 'digamma',
          'population_count'}
_NARY = {'add', 'sub', 'mul', 'div', 'max', 'min', 'pow', 'rem', 'atan2', 'and', 'or', 'xor',
         'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'add_any', 'nextafter', 'select_n', 'clamp',
         'shift_left', 'shift_right_logical', 'shift_right_arithmetic'}
_REDUCE = {'reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'reduce_and', 'reduce_or',
           'argmax', 'argmin'}
_WINDOW = {'reduce_window_sum', 'reduce_window_max', 'reduce_window_min', 'reduce_window'}
_CALLS = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')
# Primitives that just call a sub-jaxpr once with their operands (not scan, while, cond, reduce).
_CALL_PRIMITIVES = {'jit', 'pjit', 'closed_call', 'core_call', 'custom_jvp_call',
                    'custom_vjp_call', 'custom_vjp_call_jaxpr', 'remat', 'checkpoint', 'remat2',
                    'named_call'}


class _Const:
  """A tensor computed from literals / closed-over constants only."""

  def __repr__(self):
    return 'CONST'


class _Opaque:
  """A tensor whose channels we cannot follow (the input image, after an unknown op)."""

  def __repr__(self):
    return 'OPAQUE'


class _Silent:
  """A tensor inside a known layer: its internals are the layer's business."""

  def __repr__(self):
    return 'SILENT'


CONST, OPAQUE, SILENT = _Const(), _Opaque(), _Silent()


@dataclasses.dataclass(frozen=True)
class _Ann:
  """Channel structure of a tensor: axis `axis` is `repeat` tiles of the concatenated segments."""
  axis: int
  segs: tuple[tuple[int, int], ...]  # (space id, length)
  repeat: int = 1

  @property
  def width(self) -> int:
    return sum(n for _, n in self.segs)


@dataclasses.dataclass
class _Member:
  kind: str  # producer | norm | consumer | vector
  path: str
  length: int
  offset: int = 0
  repeat: int = 1
  period: int = 0
  order: int = 0
  depthwise: bool = False
  norm: tuple[str, int, int] | None = None  # channel norms: (kind, block, layer width)


@dataclasses.dataclass
class _Call:
  path: str
  module: nn.Module
  kind: str  # conv | dense | norm | cnorm
  params: dict[str, tuple]
  input_state: object = None


class _Spaces:
  """Union-find over channel spaces, aligned at channel 0 (a smaller member uses a prefix)."""

  def __init__(self):
    self.parent: list[int] = []
    self.size: list[int] = []
    self.members: dict[int, list[_Member]] = {}
    self.blocked: dict[int, list[str]] = {}
    self.counter = itertools.count()
    self.by_slot: dict[tuple, int] = {}

  def new(self, size: int) -> int:
    self.parent.append(len(self.parent))
    self.size.append(int(size))
    return len(self.parent) - 1

  def find(self, a: int) -> int:
    while self.parent[a] != a:
      self.parent[a] = self.parent[self.parent[a]]
      a = self.parent[a]
    return a

  def union(self, a: int, b: int) -> int:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return ra
    if ra > rb:
      ra, rb = rb, ra
    self.parent[rb] = ra
    self.size[ra] = max(self.size[ra], self.size[rb])
    self.members.setdefault(ra, []).extend(self.members.pop(rb, []))
    self.blocked.setdefault(ra, []).extend(self.blocked.pop(rb, []))
    return ra

  def block(self, space: int, reason: str):
    self.blocked.setdefault(self.find(space), []).append(reason)

  def add(self, space: int, member: _Member):
    """Register a member; the same layer slice seen twice (a shared layer) merges the spaces."""
    member.order = next(self.counter)
    key = (member.kind, member.path, member.offset)
    if member.kind != 'vector' and key in self.by_slot:
      space = self.union(space, self.by_slot[key])
    self.by_slot.setdefault(key, space)
    self.members.setdefault(self.find(space), []).append(member)


def _where(eqn) -> str:
  stack = str(eqn.source_info.name_stack)
  return f'{eqn.primitive.name} (in {stack})' if stack else eqn.primitive.name


class _Tracer:
  """Abstract interpretation of the jaxpr (see the module docstring)."""

  def __init__(self, calls: list[_Call]):
    self.calls = calls
    self.spaces = _Spaces()

  # -- helpers -----------------------------------------------------------------------------------

  def block(self, state, reason: str):
    if isinstance(state, _Ann):
      for space, _ in state.segs:
        self.spaces.block(space, reason)

  def fresh(self, ndim: int, size: int) -> _Ann:
    return _Ann(ndim - 1, ((self.spaces.new(size), size),))

  def unify(self, a: _Ann, b: _Ann, where: str) -> bool:
    if (a.axis, a.repeat, [n for _, n in a.segs]) != (b.axis, b.repeat, [n for _, n in b.segs]):
      reason = f'{where}: operands with different channel structure'
      self.block(a, reason)
      self.block(b, reason)
      return False
    for (sa, _), (sb, _) in zip(a.segs, b.segs):
      self.spaces.union(sa, sb)
    return True

  # -- the walk ----------------------------------------------------------------------------------

  def walk(self, jaxpr, in_states, consts=()):
    env = {}

    def read(v):
      if isinstance(v, jex_core.Literal):
        return CONST
      return env.get(v, CONST)

    for v in jaxpr.constvars:
      env[v] = CONST
    for v, s in zip(jaxpr.invars, in_states):
      env[v] = s
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      outs = self.eqn(eqn, ins)
      for v, s in zip(eqn.outvars, outs):
        env[v] = s
    return [read(v) for v in jaxpr.outvars]

  def eqn(self, eqn, ins):
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    if name == 'qprune_layer_tag':
      return [self.tag(eqn, ins[0])]
    if any(s is SILENT for s in ins):
      return [SILENT] * n_out
    anns = [s for s in ins if isinstance(s, _Ann)]
    sub = self.sub_jaxpr(eqn)
    if sub is not None:
      closed, consts = sub
      if len(closed.invars) == len(ins):
        return self.walk(closed, ins, consts)
    if not anns:
      return [CONST if all(s is CONST for s in ins) else OPAQUE] * n_out
    where = _where(eqn)
    if name in _UNARY:
      return [ins[0]] * n_out
    if name in _NARY:
      return [self.elementwise(eqn, ins, where)] * n_out
    handler = getattr(self, f'op_{name}', None)
    if handler is not None:
      out = handler(eqn, ins, where)
      return out if isinstance(out, list) else [out] * n_out
    if name in _REDUCE:
      return [self.reduce(eqn, ins[0], tuple(eqn.params['axes']), where)] * n_out
    if name in _WINDOW:
      return [self.window(eqn, ins[0], where)] * n_out
    for s in ins:
      self.block(s, f'{where}: not followed')
    return [OPAQUE] * n_out

  @staticmethod
  def sub_jaxpr(eqn):
    if eqn.primitive.name not in _CALL_PRIMITIVES:
      return None
    for key in _CALLS:
      sub = eqn.params.get(key)
      if sub is None:
        continue
      if hasattr(sub, 'jaxpr') and hasattr(sub, 'consts'):
        return sub.jaxpr, sub.consts
      if hasattr(sub, 'eqns'):
        return sub, ()
    return None

  # -- layers ------------------------------------------------------------------------------------

  def tag(self, eqn, state):
    call = self.calls[eqn.params['call']]
    if eqn.params['role'] == 'in':
      call.input_state = state
      return SILENT
    if call.input_state is SILENT:
      return SILENT
    out_ndim = len(eqn.outvars[0].aval.shape)
    return getattr(self, f'layer_{call.kind}')(call, call.input_state, out_ndim)

  def consume(self, call: _Call, state, ndim_in: int) -> bool:
    """Register `call` as a consumer of its input's channels (last axis); False if it cannot."""
    if not isinstance(state, _Ann):
      return True
    if state.axis != ndim_in - 1:
      self.block(state, f'{call.path}: reads channels that are not on its input\'s last axis')
      return False
    width = state.width
    offset = 0
    for space, length in state.segs:
      period = width if state.repeat > 1 and width != length else 0
      self.spaces.add(space, _Member('consumer', call.path, length, offset, state.repeat, period))
      offset += length
    return True

  def layer_conv(self, call: _Call, state, out_ndim):
    module = call.module
    kernel = call.params['kernel']
    groups = int(getattr(module, 'feature_group_count', 1) or 1)
    features = int(kernel[-1])
    if isinstance(module, layers.TRANSPOSE_CONV_TYPES) and getattr(module, 'transpose_kernel',
                                                                    False):
      self.block(state, f'{call.path}: ConvTranspose(transpose_kernel=True)')
      return self.blocked_fresh(out_ndim, features, f'{call.path}: ConvTranspose(transpose_kernel)')
    if groups == 1:
      self.consume(call, state, out_ndim)
      return self.produce(call, out_ndim, features)
    in_channels = groups * int(kernel[-2])
    depthwise = int(kernel[-2]) == 1 and features == in_channels
    if depthwise and isinstance(state, _Ann) and state.axis == out_ndim - 1 and state.repeat == 1:
      offset = 0
      for space, length in state.segs:
        self.spaces.add(space, _Member('producer', call.path, length, offset, depthwise=True))
        offset += length
      return state
    reason = f'{call.path}: grouped conv (feature_group_count={groups}) is not pruned'
    self.block(state, reason)
    return self.blocked_fresh(out_ndim, features, reason)

  def blocked_fresh(self, ndim, size, reason):
    ann = self.fresh(ndim, size)
    self.block(ann, reason)
    return ann

  def produce(self, call: _Call, out_ndim: int, features: int):
    ann = self.fresh(out_ndim, features)
    self.spaces.add(ann.segs[0][0], _Member('producer', call.path, features))
    return ann

  def layer_dense(self, call: _Call, state, out_ndim):
    self.consume(call, state, out_ndim)
    return self.produce(call, out_ndim, int(call.params['kernel'][-1]))

  def layer_norm(self, call: _Call, state, out_ndim):
    if not isinstance(state, _Ann):
      return state
    axis = getattr(call.module, 'axis', -1)
    if state.axis != out_ndim - 1 or axis not in (-1, out_ndim - 1) or state.repeat != 1:
      self.block(state, f'{call.path}: BatchNorm over an axis other than the channels')
      return state
    if 'scale' not in call.params:
      self.block(state, f'{call.path}: BatchNorm without scale (a masked channel would not be 0)')
      return state
    offset = 0
    for space, length in state.segs:
      self.spaces.add(space, _Member('norm', call.path, length, offset))
      offset += length
    return state

  def layer_cnorm(self, call: _Call, state, out_ndim):
    """LayerNorm / RMSNorm / GroupNorm over the channel axis: a norm member that couples the
    channels it normalizes (see `qprune.prune.masks`: masked evaluation normalizes over the kept
    channels only; GroupNorm channels are pruned in whole groups)."""
    if not isinstance(state, _Ann):
      return state
    module, name = call.module, type(call.module).__name__
    last = (-1, out_ndim - 1)
    if state.axis != out_ndim - 1 or state.repeat != 1:
      self.block(state, f'{call.path}: {name} whose input channels are not its last axis')
      return state
    width = state.width
    if isinstance(module, layers.GROUP_NORM_TYPES):
      reduction = getattr(module, 'reduction_axes', None)
      if reduction is not None and set(np.atleast_1d(reduction) % out_ndim) != set(
          range(1, out_ndim)):
        self.block(state, f'{call.path}: {name} with reduction_axes={reduction}')
        return state
      num_groups = getattr(module, 'num_groups', None)
      group_size = getattr(module, 'group_size', None)
      if num_groups:
        groups = int(num_groups)
      else:
        assert group_size is not None, 'a GroupNorm sets num_groups or group_size'
        groups = width // int(group_size)
      block, kind = width // groups, 'group'
    else:
      reduction = tuple(np.atleast_1d(getattr(module, 'reduction_axes', -1)))
      features = tuple(np.atleast_1d(getattr(module, 'feature_axes', -1)))
      if not set(reduction) <= set(last) or not set(features) <= set(last):
        self.block(state, f'{call.path}: {name} over axes other than the channels '
                   f'(reduction_axes={reduction}, feature_axes={features})')
        return state
      block, kind = 1, 'rms' if isinstance(module, layers.RMS_NORM_TYPES) else 'layer'
    offset = 0
    for _, length in state.segs:
      if offset % block or length % block:
        self.block(state, f'{call.path}: {name} groups of {block} channels straddle the inputs '
                   'of a concatenation')
        return state
      offset += length
    offset = 0
    for space, length in state.segs:
      self.spaces.add(space, _Member('norm', call.path, length, offset,
                                     norm=(kind, block, width)))
      offset += length
    return state

  # -- plain ops ---------------------------------------------------------------------------------

  def elementwise(self, eqn, ins, where):
    anns = [s for s in ins if isinstance(s, _Ann)]
    ref = anns[0]
    for s, v in zip(ins, eqn.invars):
      shape = tuple(getattr(v.aval, 'shape', ()))
      if isinstance(s, _Ann):
        if s is not ref:
          self.unify(ref, s, where)
      elif s is OPAQUE and len(shape) > ref.axis and shape[ref.axis] != 1:
        self.block(ref, f'{where}: channels combined with a tensor we cannot follow')
    return ref

  def reduce(self, eqn, s, axes, where):
    if not isinstance(s, _Ann):
      return OPAQUE
    if s.axis in axes:
      self.block(s, f'{where}: reduction over the channel axis')
      return OPAQUE
    return dataclasses.replace(s, axis=s.axis - sum(a < s.axis for a in axes))

  def window(self, eqn, s, where):
    if not isinstance(s, _Ann):
      return OPAQUE
    p = eqn.params
    a = s.axis
    ok = (p['window_dimensions'][a] == 1 and p['window_strides'][a] == 1 and
          tuple(p['padding'][a]) == (0, 0) and p.get('base_dilation', (1,) * 99)[a] == 1 and
          p.get('window_dilation', (1,) * 99)[a] == 1)
    if not ok:
      self.block(s, f'{where}: pooling window across channels')
      return OPAQUE
    return s

  def op_broadcast_in_dim(self, eqn, ins, where):
    s = ins[0]
    if not isinstance(s, _Ann):
      return OPAQUE
    in_shape = eqn.invars[0].aval.shape
    out_axis = eqn.params['broadcast_dimensions'][s.axis]
    if eqn.params['shape'][out_axis] != in_shape[s.axis]:
      self.block(s, f'{where}: broadcast of the channel axis')
      return OPAQUE
    return dataclasses.replace(s, axis=out_axis)

  def op_transpose(self, eqn, ins, where):
    s = ins[0]
    return dataclasses.replace(s, axis=list(eqn.params['permutation']).index(s.axis))

  def op_squeeze(self, eqn, ins, where):
    s = ins[0]
    dims = [d % len(eqn.invars[0].aval.shape) for d in eqn.params['dimensions']]
    return dataclasses.replace(s, axis=s.axis - sum(d < s.axis for d in dims))

  def op_reshape(self, eqn, ins, where):
    s = ins[0]
    if eqn.params.get('dimensions') is not None:
      self.block(s, f'{where}: reshape with a dimension permutation')
      return OPAQUE
    in_shape = tuple(eqn.invars[0].aval.shape)
    out_shape = tuple(eqn.params['new_sizes'])
    inner = int(np.prod(in_shape[s.axis + 1:], dtype=np.int64))
    size = in_shape[s.axis]
    for b in range(len(out_shape)):
      if int(np.prod(out_shape[b + 1:], dtype=np.int64)) != inner:
        continue
      if out_shape[b] == size:
        return dataclasses.replace(s, axis=b)
      if out_shape[b] % size == 0 and out_shape[b] > size:
        return _Ann(b, s.segs, out_shape[b] // s.width)
    self.block(s, f'{where}: reshape that splits the channels or moves them off the fastest '
               'position (e.g. flattening a channels-first tensor)')
    return OPAQUE

  def op_concatenate(self, eqn, ins, where):
    d = eqn.params['dimension']
    anns = [s for s in ins if isinstance(s, _Ann)]
    if all(s.axis != d for s in anns):
      return self.elementwise(eqn, ins, where)
    if any(s.axis != d or s.repeat != 1 for s in anns):
      for s in anns:
        self.block(s, f'{where}: concatenation of tensors with different channel structure')
      return OPAQUE
    segs = []
    for s, v in zip(ins, eqn.invars):
      if isinstance(s, _Ann):
        segs.extend(s.segs)
      else:
        size = int(v.aval.shape[d])
        space = self.spaces.new(size)
        self.spaces.block(space, 'input channels')
        segs.append((space, size))
    return _Ann(d, tuple(segs))

  def op_pad(self, eqn, ins, where):
    s = ins[0]
    if not isinstance(s, _Ann):
      return OPAQUE
    lo, hi, interior = eqn.params['padding_config'][s.axis]
    if (lo, hi, interior) == (0, 0, 0):
      return s
    if lo == 0 and interior == 0 and hi > 0 and len(s.segs) == 1 and s.repeat == 1:
      size = s.width + hi
      space = self.spaces.new(size)
      self.spaces.union(space, s.segs[0][0])
      return _Ann(s.axis, ((space, size),))
    self.block(s, f'{where}: padding of the channel axis other than zeros at its end')
    return OPAQUE

  def op_slice(self, eqn, ins, where):
    s = ins[0]
    a = s.axis
    size = eqn.invars[0].aval.shape[a]
    strides = eqn.params.get('strides') or (1,) * len(eqn.invars[0].aval.shape)
    if eqn.params['start_indices'][a] == 0 and eqn.params['limit_indices'][a] == size and \
        strides[a] == 1:
      return s
    self.block(s, f'{where}: slice of the channel axis')
    return OPAQUE

  def op_dynamic_slice(self, eqn, ins, where):
    s = ins[0]
    if isinstance(s, _Ann) and eqn.params['slice_sizes'][s.axis] == \
        eqn.invars[0].aval.shape[s.axis]:
      for other in ins[1:]:
        self.block(other, f'{where}: channels used as an index')
      return s
    for other in ins:
      self.block(other, f'{where}: slice of the channel axis')
    return OPAQUE

  def op_cumsum(self, eqn, ins, where):
    s = ins[0]
    if s.axis == eqn.params['axis']:
      self.block(s, f'{where}: cumulative op over the channel axis')
      return OPAQUE
    return s

  op_cumprod = op_cummax = op_cummin = op_cumlogsumexp = op_cumsum

  def op_conv_general_dilated(self, eqn, ins, where):
    for s in ins:
      self.block(s, f'{where}: a raw lax convolution outside nn.Conv / qprune layers.Conv')
    return OPAQUE

  def op_dot_general(self, eqn, ins, where):
    for s in ins:
      self.block(s, f'{where}: a raw matmul outside nn.Dense')
    return OPAQUE


def _flat_variables(variables) -> dict[str, jax.ShapeDtypeStruct]:
  return {'/'.join(map(str, k)): v for k, v in traverse_util.flatten_dict(
      jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)),
                             dict(variables))).items()}


def _kind(module) -> str | None:
  if isinstance(module, CONV_TYPES):
    return 'conv'
  if isinstance(module, DENSE_TYPES):
    return 'dense'
  if isinstance(module, NORM_TYPES):
    return 'norm'
  if isinstance(module, CHANNEL_NORM_TYPES):
    return 'cnorm'
  return None


@dataclasses.dataclass(frozen=True)
class TraceResult:
  """What the trace found: the groups, and what could not be pruned and why."""
  groups: tuple[ChannelGroup, ...]
  skipped: tuple[tuple[str, tuple[str, ...]], ...]  # (group name, reasons)
  layers: tuple[tuple[str, str], ...]              # (path, kind) of every known layer called


def trace_model(model: nn.Module, variables, example_input) -> TraceResult:
  """Trace `model` and derive its channel groups (see the module docstring)."""
  flat = _flat_variables(variables)
  calls: list[_Call] = []

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    kind = _kind(module)
    if (context.method_name != '__call__' or kind is None or not args or
        not hasattr(args[0], 'shape')):
      return next_fun(*args, **kwargs)
    path = interop.layer_path(context)
    owners = tuple('/'.join(p for p in (col, path) if p) for col in ('params', 'batch_stats'))
    params = {k.rsplit('/', 1)[1]: tuple(v.shape) for k, v in flat.items()
              if k.rsplit('/', 1)[0] in owners}
    index = len(calls)
    calls.append(_Call(path, module, kind, params))
    x = _tag_p.bind(args[0], call=index, role='in')
    out = next_fun(x, *args[1:], **kwargs)
    if not hasattr(out, 'shape'):
      raise TraceError(f'layer {path} returned {type(out).__name__}, not an array')
    return _tag_p.bind(out, call=index, role='out')

  x = example_struct(example_input)
  try:
    with interop.intercept_layers(intercept):
      closed = jax.make_jaxpr(lambda v, x: call_model(model, v, x))(variables, x)
  except TraceError:
    raise
  except Exception as e:  # the model itself fails on this input: say so in one line
    raise TraceError(f'model.apply(variables, x, train=False) failed on an input of shape '
                     f'{x.shape} {x.dtype}: {type(e).__name__}: {e}') from e

  tracer = _Tracer(calls)
  leaves = jax.tree_util.tree_leaves_with_path(variables)  # the jaxpr's invar order
  in_states: list = []
  for keypath, leaf in leaves:
    path = '/'.join(str(getattr(k, 'key', k)) for k in keypath)
    shape = np.shape(leaf)
    if len(shape) == 1:
      space = tracer.spaces.new(shape[0])
      tracer.spaces.add(space, _Member('vector', path, shape[0]))
      in_states.append(_Ann(0, ((space, shape[0]),)))
    else:
      in_states.append(CONST if len(shape) == 0 else OPAQUE)
  in_states.append(OPAQUE)  # the input
  outs = tracer.walk(closed.jaxpr, in_states, closed.consts)
  for s in outs:
    tracer.block(s, 'model output')
  groups, skipped = _groups(tracer.spaces, model)
  layer_list = tuple(dict.fromkeys((c.path, c.kind) for c in calls))
  return TraceResult(groups, skipped, layer_list)


def _slot(m: _Member) -> Slot:
  return Slot(m.path, m.length, m.repeat, m.offset, m.period)


def _groups(spaces: _Spaces, model):
  roots = sorted({spaces.find(i) for i in range(len(spaces.parent))})
  found, skipped = [], []
  for root in roots:
    members = sorted(spaces.members.get(root, []), key=lambda m: m.order)
    producers = [m for m in members if m.kind == 'producer']
    if not producers:
      continue
    name = producers[0].path
    reasons = list(dict.fromkeys(spaces.blocked.get(root, [])))
    size = spaces.size[root]
    vectors = [m.path for m in members if m.kind == 'vector']
    if vectors:
      reasons.append(f'per-channel parameter {vectors[0]} outside a known layer')
    if max(m.length for m in producers) != size:
      reasons.append('zero-padded channels that no layer produces')
    channel_norms = tuple(dict.fromkeys((m.path, *m.norm) for m in members if m.norm))
    block = math.lcm(1, *(n[2] for n in channel_norms))
    if any(m.length % block for m in members):
      reasons.append(f'GroupNorm groups of {block} channels do not divide every member')
    if reasons:
      skipped.append((name, tuple(reasons)))
      continue
    found.append(ChannelGroup(
        name, size, tuple(_slot(m) for m in producers),
        tuple(_slot(m) for m in members if m.kind == 'norm'),
        tuple(_slot(m) for m in members if m.kind == 'consumer'), (),
        depthwise=tuple(dict.fromkeys(m.path for m in producers if m.depthwise)),
        channel_norms=channel_norms))
  # single-producer groups in trace order, then residual streams (several producers)
  found.sort(key=lambda g: len(g.producers) - len(g.depthwise) > 1)
  found = _unique_names(found)
  from qprune.models.base import ZooModel  # pylint: disable=g-import-not-at-top
  if isinstance(model, ZooModel):
    found = _zoo_names_and_widths(found)
  return tuple(found), tuple(skipped)


def _unique_names(groups):
  seen: dict[str, int] = {}
  out = []
  for g in groups:
    name = g.name
    if name in seen:
      seen[name] += 1
      name = f'{name}#{seen[g.name]}'
    else:
      seen[name] = 0
    out.append(dataclasses.replace(g, name=name))
  return out


def _zoo_key(path: str) -> str:
  """The `channels=` override key of a zoo producer (see `qprune.models.base.ZooModel.ch`)."""
  if path == 'stem_conv':
    return 'stage1'
  head, _, tail = path.partition('/')
  if tail == 'conv2' and head.startswith('stage') and '_block' in head:
    return head.split('_block')[0]
  return path


def _zoo_names_and_widths(groups):
  """Zoo models: the residual stream is named RESIDUAL and widths are `channels=` keys."""
  out = []
  for g in groups:
    widths = tuple(dict.fromkeys((_zoo_key(s.path), s.length) for s in g.producers))
    name = RESIDUAL if len(g.producers) > 1 else g.name
    out.append(dataclasses.replace(g, name=name, widths=widths))
  return out


_HOW_TO_GO_ON = ('To go on: build that part from layers the trace knows (nn.Conv / nn.Dense / '
                 'nn.BatchNorm / nn.LayerNorm / nn.GroupNorm / nn.RMSNorm, or their nnx '
                 'counterparts), or pass ignored_layers=[...] naming these layers to leave them '
                 'unpruned without a word.')
_SCOPED = re.compile(r'^(?P<op>[\w.]+) \(in (?P<scope>[^)]*)\): (?P<text>.*)$')
_PATHED = re.compile(r'^(?P<scope>[^\s:]+): (?P<text>.*)$')


def _where_and_what(reason: str) -> tuple[str, str]:
  """('scope', 'op: text') of a block reason, so that reasons can be merged per layer."""
  m = _SCOPED.match(reason)
  if m:
    return m['scope'], f'{m["op"]}: {m["text"]}'
  m = _PATHED.match(reason)
  if m and '/' in m['scope'] or m and not m['scope'].islower():
    return m['scope'], m['text']
  return reason, ''


def skipped_summary(skipped, max_lines: int = 6) -> list:
  """A few lines for everything left unpruned: one per layer (or op) the trace could not follow,
  naming the first op there and the channels it left unpruned (each said once)."""
  by_scope: dict[str, dict] = {}
  for name, reasons in skipped:
    for reason in reasons:
      if reason in _SILENT_REASONS:
        continue
      scope, what = _where_and_what(reason)
      entry = by_scope.setdefault(scope, {'what': [], 'groups': []})
      if what and what not in entry['what']:
        entry['what'].append(what)
      if name not in entry['groups']:
        entry['groups'].append(name)
  lines = []
  for scope, entry in by_scope.items():
    what = entry['what']
    op = (f': {what[0]}' + (f' (and {len(what) - 1} more ops there)' if len(what) > 1 else '')
          if what else '')
    names = entry['groups']
    left = ', '.join(names[:3]) + (f' and {len(names) - 3} more' if len(names) > 3 else '')
    lines.append(f'  {scope}{op} -> left unpruned: channels of {left}')
  if len(lines) > max_lines:
    lines = lines[:max_lines] + [f'  ... and {len(lines) - max_lines} more']
  return lines


def report_skipped(result: TraceResult, quiet=()):
  """One warning for everything left unpruned (silent for outputs, input channels, and the
  groups named in `quiet`)."""
  skipped = [(n, r) for n, r in result.skipped if n not in quiet]
  lines = skipped_summary(skipped)
  if lines:
    warnings.warn('qprune.prune: some channels are left unpruned, the trace could not follow:\n' +
                  '\n'.join(lines) + '\n' + _HOW_TO_GO_ON, PruningTraceWarning, stacklevel=3)


def model_name(model) -> str:
  """The user's class name of a model (an NNX module's, not its adapter's)."""
  return getattr(model, 'class_name', None) or type(model).__name__


def traced_groups(model: nn.Module, variables, example_input, *, residual: bool = True,
                  dense: bool = True, warn: bool = True,
                  ignored_layers: Sequence[str] = ()) -> tuple[ChannelGroup, ...]:
  """Channel groups of any Flax model, traced (see module docstring).

  residual=False drops residual-stream groups (several non-depthwise producers); dense=False
  drops groups produced only by dense layers; ignored_layers drops the groups those layers
  produce (`group_types.ignore_layers`) and silences the warning about them. Raises
  NoPrunableChannelsError when no group is left, naming why; warns once (PruningTraceWarning)
  about channels it could not follow.
  """
  result = trace_model(model, variables, example_input)
  known = {p for p, _ in result.layers}
  kept = ignore_layers(result.groups, ignored_layers, known)
  kinds = dict(result.layers)
  groups = [g for g in kept
            if (residual or len(g.producers) - len(g.depthwise) <= 1) and
            (dense or any(kinds.get(s.path) != 'dense' for s in g.producers))]
  if not groups:
    convs = [p for p, k in result.layers if k in ('conv', 'dense')]
    hint = ''
    if not convs:
      why = ('the model calls no conv or dense layer the trace knows (nn.Conv, nn.Dense, '
             'nn.ConvTranspose, qprune layers.Conv, nnx.Conv, nnx.Linear, nnx.ConvTranspose)')
    elif not result.groups and not result.skipped:
      why = 'every layer output reaches the model output directly'
    elif not result.groups:
      why = 'the trace could not follow:\n' + '\n'.join(skipped_summary(result.skipped))
      hint = '\n' + _HOW_TO_GO_ON.split(', or pass')[0] + '.'

      if not skipped_summary(result.skipped):
        why = 'every layer output reaches the model output (' + ', '.join(
            sorted({r for _, rs in result.skipped for r in rs})) + ')'
        hint = ''
    else:
      why = (f'the {len(result.groups)} groups found were all excluded by residual={residual}, '
             f'dense={dense}, ignored_layers={list(ignored_layers)}')
    raise NoPrunableChannelsError(
        f'no prunable channel group in {model_name(model)}: {why}{hint}')
  if warn:
    report_skipped(result, quiet={n for n, _ in result.skipped if _matches(n, ignored_layers)})
  return tuple(groups)
