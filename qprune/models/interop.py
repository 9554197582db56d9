"""Flax NNX at the library's boundary: an `nnx.Module` in, the same kind out, one implementation.

Every algorithm in qprune (tracing, criteria, masks, search, shrink, quantization, counting)
works on a Linen-style pair `(model, variables)`: `variables = {'params': ..., 'batch_stats':
...}` nested dicts keyed by layer path, and `model.apply(variables, x, train=False)`. A Flax NNX
module holds its state inside; it is converted once, at the public function's boundary:

    nnx.split(module)  ->  graphdef + state
      state's Param leaves      -> variables['params']      (keys as strings: nnx.List's 0 -> '0')
      state's BatchStat leaves  -> variables['batch_stats']
      every other Variable      -> kept as is inside the adapter (RNG streams, user variables)
    NnxModel(graphdef, ...)     -> `.apply(variables, x, train=False, mutable=...)`: nnx.merge with
                                   the given arrays (any shapes: a shrunk model's are smaller), then
                                   `module.eval()` / `module.train()` and `module(x)`

and back with `merge(model, variables)` (a new module; the caller's module is never touched).
So a layer path is the NNX attribute path joined by '/' ('blocks/0/conv'), the same string the
Linen path of an equivalent model would give.

Layer interception. The tracer, the MAC counter and the masked evaluation see every call of a
known layer through `nn.intercept_methods` (Linen). `intercept_layers(fn)` installs the same
interceptor for NNX layers too (`NNX_LAYER_TYPES`), by wrapping their classes' `__call__` while the
context is open; a call is intercepted only inside `NnxModel.apply`, which knows each submodule's
path. `layer_path(context)` reads the path of either kind of context.
"""
import contextlib
import contextvars
import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from qprune.errors import UserError

PARAMS, BATCH_STATS = 'params', 'batch_stats'

# NNX layers whose calls are intercepted (the counterparts of the Linen layers qprune knows).
NNX_LAYER_TYPES = (nnx.Conv, nnx.ConvTranspose, nnx.Linear, nnx.BatchNorm, nnx.LayerNorm,
                   nnx.GroupNorm, nnx.RMSNorm)


class NotAModelError(UserError):
  """An argument that should be a model (Linen module or nnx.Module) or its variables is not."""


def is_nnx(x) -> bool:
  """Whether `x` is a Flax NNX module (its state inside)."""
  return isinstance(x, nnx.Module)


def _collection(variable) -> str | None:
  if isinstance(variable, nnx.Param):
    return PARAMS
  if isinstance(variable, nnx.BatchStat):
    return BATCH_STATS
  return None


def _str_path(path) -> tuple[str, ...]:
  return tuple(str(p) for p in path)


@dataclasses.dataclass(frozen=True, eq=False)
class NnxModel:
  """A Linen-like view of an NNX module: `.apply(variables, x, ...)` runs the module with those
  arrays. Hashable (a `jax.jit` static argument) by its graph definition and kept variables.

  graphdef: `nnx.split(module)[0]`. leaves: ((state path, collection or None), ...) in state
  order. templates: the Variables of the split (their types and metadata; params and
  batch_stats get their values from `variables`, the others keep theirs).
  """
  graphdef: Any
  leaves: tuple[tuple[tuple, str | None], ...]
  templates: tuple[Any, ...]
  class_name: str = 'NnxModel'
  overrides: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # set_widths' fields

  def _key(self):
    kept = tuple(id(t.get_value()) for t, (_, col) in zip(self.templates, self.leaves)
                 if col is None)
    return (self.graphdef, self.leaves, kept, self.overrides)

  def __hash__(self):
    return hash((self.graphdef, self.leaves, self.overrides))

  def with_widths(self, overrides) -> 'NnxModel':
    """This model with layer widths overridden ({path: {field: value}}, see `set_widths`):
    what a shrunk module's adapter is before any array is sliced (cost estimates)."""
    frozen = tuple(sorted((str(p), tuple(sorted((str(f), int(v)) for f, v in fields.items())))
                          for p, fields in overrides.items()))
    return dataclasses.replace(self, overrides=frozen)

  def __eq__(self, other):
    return isinstance(other, NnxModel) and self._key() == other._key()

  def module(self, variables) -> nnx.Module:
    """A new module holding `variables` (any shapes) and the kept variables."""
    flat = {col: _flatten(variables.get(col, {})) for col in (PARAMS, BATCH_STATS)}
    pairs = []
    for (path, col), template in zip(self.leaves, self.templates):
      if col is None:
        pairs.append((path, template.replace(template.get_value())))
        continue
      key = _str_path(path)
      if key not in flat[col]:
        known = sorted('/'.join(_str_path(p)) for p, c in self.leaves if c == col)
        raise NotAModelError(f"variables['{col}'] has no {'/'.join(key)!r}; the model's "
                             f'leaves are {known[:8]}')
      pairs.append((path, template.replace(flat[col][key])))
    state = nnx.from_flat_state(pairs)
    module = nnx.merge(self.graphdef, state)
    if self.overrides:
      module = set_widths(module, {p: dict(f) for p, f in self.overrides})
    return module

  def apply(self, variables, x, *args, train: bool = False, mutable=False, **kwargs):
    module = self.module(variables)
    if train:
      module.train()
    else:
      module.eval()
    token = _PATHS.set(_module_paths(module))
    try:
      out = module(x, *args, **kwargs)
    finally:
      _PATHS.reset(token)
    if not mutable:
      return out
    return out, {BATCH_STATS: _state_dict(nnx.state(module, nnx.BatchStat))}

  def init(self, rng, x, *args, **kwargs):
    """The module's own variables (NNX modules are initialized when built; rng is unused)."""
    del rng, x, args, kwargs
    return self.variables()

  def variables(self) -> dict:
    """The split's own variables ({'params', 'batch_stats'})."""
    out: dict[str, dict] = {PARAMS: {}, BATCH_STATS: {}}
    for (path, col), template in zip(self.leaves, self.templates):
      if col is not None:
        _set(out[col], _str_path(path), template.get_value())
    return {col: tree for col, tree in out.items() if tree or col == PARAMS}


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  if isinstance(tree, dict) or (hasattr(tree, 'items') and not hasattr(tree, 'shape')):
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
  else:
    out[prefix] = tree
  return out


def _set(tree: dict, path: tuple[str, ...], value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _state_dict(state) -> dict:
  out: dict = {}
  for path, variable in nnx.to_flat_state(state):
    _set(out, _str_path(path), variable.get_value() if hasattr(variable, 'get_value')
         else variable)
  return out


def split(module: nnx.Module) -> tuple[NnxModel, dict]:
  """(Linen-like model, variables) of an NNX module; the module is not changed."""
  if not is_nnx(module):
    raise NotAModelError(f'expected an nnx.Module, got {type(module).__name__}')
  graphdef, state = nnx.split(module)
  leaves, templates = [], []
  for path, variable in nnx.to_flat_state(state):
    leaves.append((tuple(path), _collection(variable)))
    templates.append(variable)
  model = NnxModel(graphdef, tuple(leaves), tuple(templates), type(module).__name__)
  return model, model.variables()


def merge(model: NnxModel, variables) -> nnx.Module:
  """A new NNX module with `variables` (the inverse of `split`)."""
  return model.module(variables)


def replace_variables(module: nnx.Module, variables) -> nnx.Module:
  """A new module like `module` (same graph) holding `variables`; `module` is not changed."""
  model, _ = split(module)
  return model.module(variables)


def params_of(params_or_module):
  """The params of an NNX module, an nnx.State or whole variables ({'params': ...}); a params
  tree is returned as is."""
  if is_nnx(params_or_module):
    return split(params_or_module)[1][PARAMS]
  if isinstance(params_or_module, nnx.State):
    return state_to_dict(params_or_module)
  if isinstance(params_or_module, Mapping) and isinstance(params_or_module.get(PARAMS), Mapping):
    return params_or_module[PARAMS]
  return params_or_module


def state_to_dict(state) -> dict:
  """A pure nested dict with string keys of an nnx.State (Variables or raw arrays as leaves)."""
  return _state_dict(state)


def dict_to_state_like(template, tree: dict):
  """`tree` (string keys, like `state_to_dict(template)`) in the pytree structure of `template`
  (an nnx.State, e.g. the params an nnx.Optimizer hands to optax)."""
  flat = _flatten(tree)
  leaves_with_paths = jax.tree_util.tree_flatten_with_path(template)[0]
  treedef = jax.tree_util.tree_structure(template)
  values = []
  for keypath, _ in leaves_with_paths:
    key = tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in keypath)
    key = tuple(k for k in key if k not in ('value', 'raw_value'))
    values.append(flat[key])
  return jax.tree_util.tree_unflatten(treedef, values)


def as_variables(x, argname: str = 'variables') -> dict:
  """{'params', ...} from Flax variables, a bare params dict, an nnx.State of params or an
  nnx.Module; NotAModelError naming `argname` for anything else (a typed error at the boundary
  instead of a KeyError deep inside)."""
  if is_nnx(x):
    return split(x)[1]
  if isinstance(x, nnx.State):
    return {PARAMS: state_to_dict(x)}
  if isinstance(x, Mapping):
    if PARAMS in x:
      if not isinstance(x[PARAMS], Mapping):
        raise NotAModelError(f"{argname}['params'] is a {type(x[PARAMS]).__name__}, not a dict "
                             'of layers')
      return dict(x)
    leaves = jax.tree_util.tree_leaves(x)
    if leaves and all(hasattr(leaf, 'shape') and hasattr(leaf, 'dtype') for leaf in leaves):
      return {PARAMS: dict(x)}  # a bare params tree
    if not leaves:
      raise NotAModelError(f'{argname} is empty: pass the model\'s variables '
                           "({'params': ...}) or an nnx.Module")
  raise NotAModelError(f"{argname}: expected Flax variables ({{'params': ..., 'batch_stats': "
                       f"...}}), a params dict or an nnx.Module, got {type(x).__name__}")


def accepts_module(fn):
  """`fn(model, variables, *rest)` also callable as `fn(nnx_module, *rest)` (split at the
  boundary; the result is whatever `fn` returns)."""

  @functools.wraps(fn)
  def wrapper(model, *args, **kwargs):
    if is_nnx(model):
      adapter, variables = split(model)
      return fn(adapter, variables, *args, **kwargs)
    return fn(model, *args, **kwargs)

  return wrapper


def as_model(model, variables=None):
  """(model, variables): an NNX module is split; a Linen model is returned with `variables`."""
  if is_nnx(model):
    return split(model)
  return model, variables


# ---------------------------------------------------------------------------------------------
# Layer interception for NNX modules (see the module docstring).

_PATHS: contextvars.ContextVar = contextvars.ContextVar('qprune_nnx_paths', default=None)
_STACK: list = []
_ORIGINAL: dict[type, Callable] = {}
_LOCK = threading.RLock()


def _module_paths(module) -> dict[int, tuple[str, ...]]:
  return {id(node): _str_path(path) for path, node in nnx.iter_graph(module)
          if isinstance(node, nnx.Module)}


@dataclasses.dataclass
class NnxContext:
  """What an interceptor is told about an NNX layer call (cf. Linen's InterceptorContext)."""
  module: Any
  method_name: str
  path: tuple[str, ...]


def layer_path(context) -> str:
  """'a/b/c' of the intercepted layer (Linen or NNX context)."""
  if isinstance(context, NnxContext):
    return '/'.join(context.path)
  return '/'.join(context.module.path)


def _wrapped(cls):
  original = cls.__call__

  @functools.wraps(original)
  def call(self, *args, **kwargs):
    paths = _PATHS.get()
    path = None if paths is None else paths.get(id(self))
    if path is None or not _STACK:
      return original(self, *args, **kwargs)
    context = NnxContext(self, '__call__', path)
    stack = list(_STACK)

    def run(i, *a, **k):
      if i < 0:
        return original(self, *a, **k)
      return stack[i](functools.partial(run, i - 1), a, k, context)

    return run(len(stack) - 1, *args, **kwargs)

  return original, call


@contextlib.contextmanager
def _nnx_intercept(interceptor):
  with _LOCK:
    if not _STACK:
      for cls in NNX_LAYER_TYPES:
        original, call = _wrapped(cls)
        _ORIGINAL[cls] = original
        cls.__call__ = call
    _STACK.append(interceptor)
  try:
    yield
  finally:
    with _LOCK:
      _STACK.remove(interceptor)
      if not _STACK:
        for cls, original in _ORIGINAL.items():
          cls.__call__ = original
        _ORIGINAL.clear()


@contextlib.contextmanager
def intercept_layers(interceptor):
  """`nn.intercept_methods(interceptor)` for Linen modules and the same for NNX layers.

  interceptor(next_fun, args, kwargs, context): context.module is the layer, `layer_path(context)`
  its path, context.method_name the method ('__call__' for NNX layers)."""
  with nn.intercept_methods(interceptor), _nnx_intercept(interceptor):
    yield


# ---------------------------------------------------------------------------------------------
# Widths of NNX layers.

def _value(variable):
  return None if variable is None else variable.get_value()


def set_widths(module, overrides=None):
  """`module` with every NNX layer's width attributes set from its arrays (after they were
  sliced or loaded smaller), so that the module's own code (GroupNorm's reshape, a depthwise
  conv's feature_group_count) sees the new widths. overrides: {path: {field: value}} for what the
  arrays do not tell (a depthwise conv's feature_group_count, a GroupNorm's num_groups)."""
  overrides = overrides or {}
  for path, node in nnx.iter_graph(module):
    fields = overrides.get('/'.join(str(p) for p in path), {})
    if isinstance(node, (nnx.Conv, nnx.ConvTranspose)):
      kernel = np.shape(_value(node.kernel))
      groups = int(fields.get('feature_group_count', getattr(node, 'feature_group_count', 1)))
      if hasattr(node, 'feature_group_count'):
        node.feature_group_count = groups
      node.out_features = int(kernel[-1])
      node.in_features = int(kernel[-2]) * groups
    elif isinstance(node, nnx.Linear):
      kernel = np.shape(_value(node.kernel))
      node.in_features, node.out_features = int(kernel[0]), int(kernel[1])
    elif isinstance(node, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
      leaves = [getattr(node, n, None) for n in ('scale', 'bias', 'mean')]
      shapes = [np.shape(_value(v)) for v in leaves if v is not None]
      if isinstance(node, nnx.GroupNorm) and 'num_groups' in fields:
        node.num_groups = fields['num_groups']
        node.group_size = fields['group_size']
        node.num_features = fields['num_groups'] * fields['group_size']
      elif shapes:
        node.num_features = int(shapes[0][-1])
  return module


def width_fields(module) -> dict[str, dict[str, int]]:
  """{path: fields} that `set_widths` needs to rebuild this module's widths from its arrays."""
  out: dict[str, dict[str, int]] = {}
  for path, node in nnx.iter_graph(module):
    key = '/'.join(str(p) for p in path)
    groups = int(getattr(node, 'feature_group_count', 1) or 1)
    if isinstance(node, (nnx.Conv, nnx.ConvTranspose)) and groups != 1:
      out[key] = {'feature_group_count': groups}
    elif isinstance(node, nnx.GroupNorm):
      out[key] = {'num_groups': int(node.num_groups), 'group_size': int(node.group_size)}
  return out
