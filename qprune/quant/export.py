"""A small file for a power-of-two quantized model: bit-packed codes + exponent tables + float
leaves.

Layout (all integers little-endian):

    magic   8 bytes  b'QPRUNEQ\\x00'
    version uint16   FORMAT_VERSION
    hlen    uint32   length of the compressed header
    header  hlen     zlib(JSON): {'spec', 'payload_nbytes', 'payload_crc32', 'leaves': [...]}
    payload          the leaves' bytes, back to back

Each header leaf is {'path': 'params/conv1/kernel', 'shape', 'offset', 'nbytes', 'kind'} with
kind 'codes' (quantized; plus 'exponents', 'bits' and, from version 2, 'codec') or 'float32'
(raw float32 C-order bytes). A quantized weight is a code of `bits = ceil(log2(2n+1))` bits
(n = number of exponents): 0 -> 0, i in 1..n -> +2^e_i, n+i -> -2^e_i (exponents ascending).
From version 3 a leaf may say 'zero': false (a zero-free set, `targets` module docstring): then
`bits = ceil(log2(2n))` and i in 0..n-1 -> +2^e_(i+1), n+i -> -2^e_(i+1). A file is written as
version 3 only when it holds such a leaf (older readers refuse it instead of misreading it).
codec 'packed' (the only one of version 1): codes bit-packed LSB-first
(`numpy.packbits(bitorder='little')` of each code's bits, low bit first) into ceil(N·bits/8) bytes.
codec 'xz' (entropy coding, `entropy_coding=True`): one uint8 per code, compressed with xz (LZMA2,
Python's `lzma` module); chosen per leaf only where it is smaller than 'packed' (cf. the Huffman
stage of Deep Compression, Han et al. 2016). It gains where the codes are skewed (many zeros);
the error-optimal sets spread codes almost evenly (LeNet-5 at 3 bits: 2.8 bits of entropy), so
there it saves little.
Weights not yet on their layer's set are quantized (`targets.quantize`) when saved.
"""
import json
import lzma
import struct
import zlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune import files
from qprune.errors import UserError
from qprune.models import interop
from qprune.models.counting import _takes_train, example_struct
from qprune.models.shrunk import ShrunkModel
from qprune.models.spec import model_from_spec
from qprune.quant import targets as targets_lib


class ExportFormatError(UserError):
  """A file is not a readable quantized export (truncated, corrupt, a bad header)."""


MAGIC = b'QPRUNEQ\x00'
FORMAT_VERSION = 2
ZERO_FREE_VERSION = 3  # the version of files with zero-free leaves
READABLE_VERSIONS = (1, 2, 3)
CODECS = ('packed', 'xz')
_PREAMBLE = struct.Struct('<8sHI')


# ---------------------------------------------------------------------------------------------
# Codes <-> values, bit packing.

def code_table(exponents, zero: bool = True) -> np.ndarray:
  """float32 [2n+1]: value of each code (0, +2^e ascending, then −2^e ascending); zero=False:
  [2n] without the zero code."""
  powers = np.ldexp(np.float32(1.0), np.asarray(sorted(exponents), np.int32)).astype(np.float32)
  return np.concatenate([np.zeros(int(zero), np.float32), powers, -powers])


def encode(quantized: np.ndarray, exponents, zero: bool = True) -> np.ndarray:
  """uint32 codes of values that are all in the set (0 or ±2^e; zero=False: ±2^e only); raises
  ValueError otherwise."""
  q = np.asarray(quantized, np.float32).reshape(-1)
  n = len(exponents)
  magnitudes = code_table(exponents, zero)[:n + int(zero)]  # (0,) then 2^e ascending
  index = np.minimum(np.searchsorted(magnitudes, np.abs(q)), n - 1 + int(zero))
  if not np.array_equal(magnitudes[index], np.abs(q)) or (not zero and np.any(q == 0)):
    raise ValueError('value outside the target set; quantize before encoding')
  return np.where(q < 0, index + n, index).astype(np.uint32)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
  """Bit-packs codes (< 2^bits) LSB-first: ceil(len·bits/8) bytes."""
  if bits == 0:
    return b''
  planes = (codes.reshape(-1, 1) >> np.arange(bits, dtype=np.uint32)) & 1
  return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder='little').tobytes()


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
  """Inverse of `pack_codes`: uint32 [count]."""
  if bits == 0:
    return np.zeros(count, np.uint32)
  planes = np.unpackbits(np.frombuffer(data, np.uint8), count=count * bits, bitorder='little')
  weights = (np.uint32(1) << np.arange(bits, dtype=np.uint32))
  return planes.reshape(count, bits).astype(np.uint32) @ weights


# ---------------------------------------------------------------------------------------------
# Save.

def xz_codes(codes: np.ndarray) -> bytes:
  """Codes (< 256) as uint8, xz-compressed (codec 'xz')."""
  return lzma.compress(codes.astype(np.uint8).tobytes(), format=lzma.FORMAT_XZ,
                       check=lzma.CHECK_NONE, preset=9 | lzma.PRESET_EXTREME)


def _quantized_leaf(path: str, w, exponents, entropy_coding: bool,
                    zero: bool) -> tuple[dict, bytes]:
  exponents = tuple(sorted(int(e) for e in exponents))
  q = np.asarray(targets_lib.quantize(w, np.asarray(exponents, np.int32), zero=zero))
  bits = targets_lib.bits_per_weight(len(exponents), zero)
  codes = encode(q, exponents, zero)
  codec, data = 'packed', pack_codes(codes, bits)
  if entropy_coding and len(exponents) < 128:
    compressed = xz_codes(codes)
    if len(compressed) < len(data):
      codec, data = 'xz', compressed
  meta = {'path': path, 'kind': 'codes', 'shape': list(np.shape(w)),
          'exponents': list(exponents), 'bits': bits, 'codec': codec}
  if not zero:
    meta['zero'] = False
  return meta, data


def _float_leaf(path: str, x) -> tuple[dict, bytes]:
  data = np.ascontiguousarray(np.asarray(x, np.float32)).astype('<f4').tobytes()
  return {'path': path, 'kind': 'float32', 'shape': list(np.shape(x))}, data


def _targeted_paths(variables, targets, path_filter) -> dict:
  """{'params/…/kernel': exponents} for the quantized leaves of variables['params']."""
  out = {}
  for path, leaf in traverse_util.flatten_dict(variables['params']).items():
    name = targets_lib.layer_name(path)
    if path_filter(path, leaf) and name in targets:
      out['/'.join(('params',) + path)] = targets[name]
  return out


def encode_variables(variables, targets: targets_lib.Targets, spec: Mapping,
                     path_filter: targets_lib.PathFilter = targets_lib.default_path_filter, *,
                     entropy_coding: bool = False, zero: bool = True) -> bytes:
  """The export file's bytes (see module docstring); zero=False: the sets are zero-free."""
  targeted = _targeted_paths(variables, targets, path_filter)
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  leaves, chunks, offset = [], [], 0
  for path in sorted(flat):
    meta, data = (_quantized_leaf(path, flat[path], targeted[path], entropy_coding, zero)
                  if path in targeted else _float_leaf(path, flat[path]))
    meta.update(offset=offset, nbytes=len(data))
    leaves.append(meta)
    chunks.append(data)
    offset += len(data)
  payload = b''.join(chunks)
  header = zlib.compress(json.dumps(
      {'spec': dict(spec), 'payload_nbytes': len(payload),
       'payload_crc32': zlib.crc32(payload), 'leaves': leaves},
      separators=(',', ':')).encode(), 9)
  version = FORMAT_VERSION if zero or not targeted else ZERO_FREE_VERSION
  return _PREAMBLE.pack(MAGIC, version, len(header)) + header + payload


class SaveError(UserError):
  """save_quantized's arguments do not describe a model that load_quantized could rebuild."""


USER_MODEL = 'user_model'  # spec key of a model outside the zoo: {'framework', 'class', ...}


def user_spec(variables_or_module, model=None, example_input=None) -> dict:
  """The header spec of a model outside the zoo: its framework and class, the width overrides of
  a shrunk model (`ShrunkModel.overrides_dict()`, an NNX module's `interop.width_fields`), and
  the example input (shape and dtype) when given, so that loading can check the leaves fit."""
  if interop.is_nnx(variables_or_module):
    info = {'framework': 'nnx', 'class': type(variables_or_module).__name__,
            'overrides': interop.width_fields(variables_or_module)}
  else:
    inner = getattr(model, 'model', model)
    info = {'framework': 'linen', 'class': type(inner).__name__ if inner is not None else '',
            'overrides': dict(model.overrides_dict()) if isinstance(model, ShrunkModel) else {}}
  if example_input is not None:
    x = example_struct(example_input)
    info['input'] = {'shape': [int(d) for d in x.shape[1:]], 'dtype': str(np.dtype(x.dtype))}
  return {USER_MODEL: info}


def save_quantized(path: str, variables, targets: targets_lib.Targets, spec: Mapping | None = None,
                   path_filter: targets_lib.PathFilter = targets_lib.default_path_filter, *,
                   entropy_coding: bool = False, zero: bool = True, model=None,
                   example_input=None) -> int:
  """Writes the export atomically (temp file + os.replace); returns its size on disk in bytes.

  variables: the model's variables (bare params are taken too) or an nnx.Module.
  targets: {layer: exponents} of the layers to store as codes ({} stores every leaf as float32:
    a pruned, unquantized model).
  spec: a zoo model's `model_spec(...)`, so that `load_quantized(path)` rebuilds it alone; None
    for any other model: then `load_quantized(path, model=YourModel())` rebuilds it. model: the
    Linen model the variables belong to when it is a shrunk one (`prune.shrink`'s ShrunkModel:
    its width overrides are stored). example_input: an input (or ShapeDtypeStruct) with a batch
    axis; stored so that loading can check the leaves fit the model.
  entropy_coding=True stores each quantized layer's codes xz-compressed where that is smaller.
  zero=False: `targets` are zero-free sets (`targets.quantize`).
  Checks everything before writing (SaveError, TargetsError): a spec that does not build these
  variables, targets for layers the model lacks or with non-integer exponents.
  """
  if interop.is_nnx(variables):
    header_spec = user_spec(variables, example_input=example_input)
    variables = interop.split(variables)[1]
  else:
    variables = interop.as_variables(variables, 'variables')
    header_spec = None
  targets_lib.check_targets(targets, targets_lib.quantizable_layers(variables['params'],
                                                                    path_filter))
  if spec is not None:
    if not isinstance(spec, Mapping) or 'name' not in spec:
      raise SaveError(f'spec {spec!r:.80} is not a zoo model spec (qprune.models.spec.model_spec); '
                      'leave spec=None for any other model')
    try:
      _check_leaves_fit(model_from_spec(spec), spec, jax.device_get(variables))
    except ExportFormatError as e:
      raise SaveError(f'spec does not describe these variables: {e}') from None
    except (KeyError, TypeError, ValueError) as e:
      raise SaveError(f'bad model spec ({type(e).__name__}: {e})') from None
    header_spec = dict(spec)
  elif header_spec is None:
    header_spec = user_spec(variables, model, example_input)
  return files.write_bytes_atomic(path, encode_variables(variables, targets, header_spec,
                                                         path_filter,
                                                         entropy_coding=entropy_coding, zero=zero))


# ---------------------------------------------------------------------------------------------
# Load.

def _parse_header(data: bytes) -> tuple[dict, memoryview]:
  """(header, payload) after checking magic, version, lengths and checksum; ValueError if bad."""
  if len(data) < _PREAMBLE.size:
    raise ExportFormatError(f'quantized export truncated: {len(data)} bytes, '
                            'shorter than its preamble')
  magic, version, header_nbytes = _PREAMBLE.unpack_from(data)
  if magic != MAGIC:
    raise ExportFormatError(f'not a qprune quantized export (bad magic {magic!r})')
  if version not in READABLE_VERSIONS:
    raise ExportFormatError(f'unsupported quantized export version {version}; '
                            f'this qprune reads versions {", ".join(map(str, READABLE_VERSIONS))}')
  start = _PREAMBLE.size + header_nbytes
  if len(data) < start:
    raise ExportFormatError('quantized export truncated inside its header '
                            f'({len(data)} of >= {start} bytes)')
  try:
    header = json.loads(zlib.decompress(data[_PREAMBLE.size:start]))
  except (zlib.error, ValueError) as e:
    raise ExportFormatError(f'quantized export has a corrupt header: {e}') from e
  payload = memoryview(data)[start:]
  _check_header(header, version)
  if len(payload) != header['payload_nbytes']:
    raise ExportFormatError('quantized export truncated or padded: '
                            f'payload is {len(payload)} bytes, '
                            f'header says {header["payload_nbytes"]}')
  if zlib.crc32(payload) != header['payload_crc32']:
    raise ExportFormatError('quantized export payload is corrupt (CRC32 mismatch)')
  return header, payload


def _is_count(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_header(header, version: int = FORMAT_VERSION) -> None:
  """ExportFormatError naming the first header field that is missing or inconsistent (the CRC
  covers the payload only, so a crafted or buggy header must be checked field by field)."""
  def bad(where, what):
    raise ExportFormatError(f'quantized export header: {where} {what}' if where else
                            f'quantized export header {what}')

  if not isinstance(header, dict):
    bad('', f'is a JSON {type(header).__name__}, not an object')
  for key, ok in (('spec', lambda v: isinstance(v, dict)), ('payload_nbytes', _is_count),
                  ('payload_crc32', _is_count), ('leaves', lambda v: isinstance(v, list))):
    if key not in header:
      bad(f'field {key!r}', 'is missing')
    if not ok(header[key]):
      bad(f'field {key!r}', f'has a bad value {header[key]!r:.80}')
  paths = set()
  for i, meta in enumerate(header['leaves']):
    if not isinstance(meta, dict):
      bad(f'leaf {i}', 'is not an object')
    where = f'leaf {meta.get("path", i)!r}'
    for key in ('path', 'kind', 'shape', 'offset', 'nbytes'):
      if key not in meta:
        bad(where, f'has no {key!r}')
    if not isinstance(meta['path'], str) or not meta['path'] or meta['path'] in paths:
      bad(where, 'has an empty or repeated path')
    paths.add(meta['path'])
    shape = meta['shape']
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
      bad(where, f'has a bad shape {shape!r:.80}')
    if not _is_count(meta['offset']) or not _is_count(meta['nbytes']) or (
        meta['offset'] + meta['nbytes'] > header['payload_nbytes']):
      bad(where, f'has bytes {meta["offset"]!r}+{meta["nbytes"]!r} outside the payload')
    count = int(np.prod(shape, dtype=np.int64))
    if meta['kind'] == 'float32':
      if meta['nbytes'] != 4 * count:
        bad(where, f'holds {meta["nbytes"]} bytes for shape {shape} (float32 needs {4 * count})')
    elif meta['kind'] == 'codes':
      exponents, bits = meta.get('exponents'), meta.get('bits')
      if not isinstance(exponents, list) or not all(
          isinstance(e, int) and targets_lib.MIN_EXPONENT <= e <= targets_lib.MAX_EXPONENT
          for e in exponents) or len(set(exponents)) != len(exponents):
        bad(where, f'has bad exponents {exponents!r:.80}')
      zero = meta.get('zero', True)
      if not isinstance(zero, bool) or (not zero and (not exponents or
                                                      version < ZERO_FREE_VERSION)):
        bad(where, f'has a bad zero flag {zero!r:.20} (false needs exponents and version '
            f'{ZERO_FREE_VERSION})')
      need = targets_lib.bits_per_weight(len(exponents), zero)
      if bits != need:
        bad(where, f'has bits={bits!r}, but {len(exponents)} exponents'
            f'{"" if zero else " (zero-free)"} need {need}')
      codec = meta.get('codec', 'packed')
      if codec not in CODECS:
        bad(where, f'has an unknown codec {codec!r} (this qprune reads {", ".join(CODECS)})')
      if codec == 'packed' and meta['nbytes'] != -(-count * bits // 8):
        bad(where, f'holds {meta["nbytes"]} bytes, but {count} codes of {bits} bits need '
            f'{-(-count * bits // 8)}')
    else:
      bad(where, f'has an unknown kind {meta["kind"]!r} (codes or float32)')


def _decode_leaf(meta: dict, payload: memoryview) -> np.ndarray:
  data = payload[meta['offset']:meta['offset'] + meta['nbytes']]
  shape = tuple(meta['shape'])
  if meta['kind'] == 'float32':
    return np.frombuffer(data, '<f4').astype(np.float32).reshape(shape)
  table = code_table(meta['exponents'], meta.get('zero', True))
  return table[leaf_codes(meta, data)].reshape(shape)


def leaf_codes(meta: dict, data) -> np.ndarray:
  """The flat uint codes of a 'codes' leaf from its bytes, whatever its codec."""
  count = int(np.prod(tuple(meta['shape']), dtype=np.int64))
  codec = meta.get('codec', 'packed')
  if codec == 'xz':
    try:
      codes = np.frombuffer(lzma.decompress(data), np.uint8)
    except lzma.LZMAError as e:
      raise ExportFormatError(
          f'quantized export leaf {meta["path"]}: corrupt xz codes ({e})') from e
    if codes.size != count:
      raise ExportFormatError(f'quantized export leaf {meta["path"]}: {codes.size} codes for shape '
                       f'{meta["shape"]}')
  elif codec == 'packed':
    codes = unpack_codes(data, count, meta['bits'])
  else:
    raise ExportFormatError(f'quantized export leaf {meta["path"]}: unknown codec {codec!r} (this '
                     f'qprune reads {", ".join(CODECS)})')
  return codes


def decode_variables(data: bytes) -> tuple[dict, dict]:
  """(spec, variables as nested dicts of numpy float32) from export bytes."""
  header, payload = _parse_header(data)
  flat = {meta['path']: _decode_leaf(meta, payload) for meta in header['leaves']}
  return header['spec'], traverse_util.unflatten_dict(flat, sep='/')


def load_quantized(path: str, model=None):
  """The model of `save_quantized`'s file; weights are the exact dequantized values.

  A zoo model's file: (model, variables), rebuilt from its spec. Any other model: pass the
  model it was saved from, `model=YourModel(...)` (a Linen module: (model, variables) back, a
  `prune.ShrunkModel` around it when the file stores width overrides; an nnx.Module: a new
  module holding the file's arrays, the one passed unchanged).
  ExportFormatError naming the file if it is damaged or its leaves do not fit the model."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise ExportFormatError(f'{path}: cannot read it ({e.strerror or e})') from None
  try:
    spec, variables = decode_variables(data)
    if USER_MODEL in spec or model is not None:
      return _load_user_model(spec, variables, model)
    model = model_from_spec(spec)
    _check_leaves_fit(model, spec, variables)
  except ExportFormatError as e:
    raise ExportFormatError(f'{path}: {e}') from None
  except (KeyError, TypeError, ValueError) as e:  # a spec the model zoo cannot build
    raise ExportFormatError(f'{path}: quantized export header: bad model spec ({type(e).__name__}: '
                            f'{e})') from None
  return model, jax.tree.map(jnp.asarray, variables)


def _leaf_shapes(tree) -> dict:
  return {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(tree, sep='/').items()}


def _load_user_model(spec, variables, model):
  info = spec.get(USER_MODEL)
  if model is None:
    what = f'{info.get("framework", "")} {info.get("class") or "model"}'.strip()
    call = f'{info["class"]}(...)' if info.get('class') else 'the model it was saved from'
    raise ExportFormatError(f'holds a model outside the zoo (a {what}): pass the model, '
                            f'load_quantized(path, model={call})')
  info = info if isinstance(info, Mapping) else {}
  given = type(getattr(model, 'model', model)).__name__
  if info.get('class') and info['class'] != given:
    raise ExportFormatError(f'holds a {info["class"]}; the given model is a {given}')
  overrides = info.get('overrides') or {}
  if not isinstance(overrides, Mapping):
    raise ExportFormatError(f'quantized export header: bad overrides {overrides!r:.80}')
  variables = jax.tree.map(jnp.asarray, variables)
  if interop.is_nnx(model):
    if info.get('framework') == 'linen':
      raise ExportFormatError(f'holds a Linen model ({info.get("class")}); an nnx.Module was given')
    template = interop.split(model)[1]
    want, have = _leaf_shapes(template), _leaf_shapes(variables)
    for key in sorted(set(want) | set(have)):
      if (key in want) != (key in have) or len(want.get(key, ())) != len(have.get(key, ())):
        raise ExportFormatError(f'leaf {key!r}: stored shape {have.get(key)}, the given '
                                f'{type(model).__name__} has {want.get(key)}')
    module = interop.set_widths(interop.replace_variables(model, variables), overrides)
    _check_runs(module, None, info, type(model).__name__)
    return module
  if info.get('framework') == 'nnx':
    raise ExportFormatError(f'holds an NNX module ({info.get("class")}); a Linen model was given')
  if overrides and not isinstance(model, ShrunkModel):
    model = ShrunkModel.from_dict(model, overrides)
  _check_runs(model, variables, info, type(getattr(model, 'model', model)).__name__)
  return model, variables


def _check_runs(model, variables, info, name):
  """With a stored example input: the model must run on it with the stored leaves (shapes
  checked by Linen's init, by the NNX layers' own code)."""
  example = info.get('input')
  if not example:
    return
  x = jax.ShapeDtypeStruct((1, *example['shape']), jnp.dtype(example['dtype']))
  try:
    if variables is None:
      adapter, own = interop.split(model)
      jax.eval_shape(adapter.apply, own, x)
    else:
      rng = jax.random.PRNGKey(0)
      expected = jax.eval_shape(lambda x: model.init(rng, x, train=False)
                                if _takes_train(model) else model.init(rng, x), x)
      want, have = _leaf_shapes(expected), _leaf_shapes(variables)
      for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
          raise ExportFormatError(f'leaf {key!r}: stored shape {have.get(key)}, the given {name} '
                                  f'needs {want.get(key)}')
  except ExportFormatError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ExportFormatError(f'the stored leaves do not fit the given {name}: {type(e).__name__}: '
                            f'{(str(e).splitlines() or [""])[0][:200]}') from None


def _check_leaves_fit(model, spec, variables):
  """ExportFormatError if the stored leaves are not exactly the model's (paths and shapes)."""
  images = jax.ShapeDtypeStruct((1, *spec['input_shape']), jnp.uint8)
  expected = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected, sep='/').items()}
  have = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(variables, sep='/').items()}
  for key in sorted(set(want) | set(have)):
    if want.get(key) != have.get(key):
      stored = 'not stored' if key not in have else f'stored shape {have[key]}'
      needed = 'has no such leaf' if key not in want else f'needs {want[key]}'
      raise ExportFormatError(f'quantized export leaf {key!r}: {stored}, its model '
                              f'({spec.get("name")}) {needed}')


def read_targets(path: str) -> dict:
  """{layer_name: exponents} stored in an export (without decoding the weights)."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    header, _ = _parse_header(data)
  except ExportFormatError as e:
    raise ExportFormatError(f'{path}: {e}') from None
  return {targets_lib.layer_name(tuple(m['path'].split('/')[1:])): tuple(m['exponents'])
          for m in header['leaves'] if m['kind'] == 'codes'}


def float32_nbytes(variables) -> int:
  """Size of all leaves stored as float32 (the uncompressed baseline)."""
  return 4 * sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(variables))
