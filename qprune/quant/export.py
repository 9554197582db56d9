"""A small file for a power-of-two quantized model: bit-packed codes + exponent tables + float leaves.

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
from typing import Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from qprune import files
from qprune.errors import UserError
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
                    zero: bool) -> Tuple[dict, bytes]:
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


def _float_leaf(path: str, x) -> Tuple[dict, bytes]:
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


def save_quantized(path: str, variables, targets: targets_lib.Targets, spec: Mapping,
                   path_filter: targets_lib.PathFilter = targets_lib.default_path_filter, *,
                   entropy_coding: bool = False, zero: bool = True) -> int:
  """Writes the export atomically (temp file + os.replace); returns its size on disk in bytes.

  entropy_coding=True stores each quantized layer's codes xz-compressed where that is smaller.
  zero=False: `targets` are zero-free sets (`targets.quantize`).
  """
  return files.write_bytes_atomic(path, encode_variables(variables, targets, spec, path_filter,
                                                         entropy_coding=entropy_coding, zero=zero))


# ---------------------------------------------------------------------------------------------
# Load.

def _parse_header(data: bytes) -> Tuple[dict, memoryview]:
  """(header, payload) after checking magic, version, lengths and checksum; ValueError if bad."""
  if len(data) < _PREAMBLE.size:
    raise ExportFormatError(f'quantized export truncated: {len(data)} bytes, shorter than its preamble')
  magic, version, header_nbytes = _PREAMBLE.unpack_from(data)
  if magic != MAGIC:
    raise ExportFormatError(f'not a qprune quantized export (bad magic {magic!r})')
  if version not in READABLE_VERSIONS:
    raise ExportFormatError(f'unsupported quantized export version {version}; this qprune reads versions '
                     f'{", ".join(map(str, READABLE_VERSIONS))}')
  start = _PREAMBLE.size + header_nbytes
  if len(data) < start:
    raise ExportFormatError(f'quantized export truncated inside its header ({len(data)} of >= {start} bytes)')
  try:
    header = json.loads(zlib.decompress(data[_PREAMBLE.size:start]))
  except (zlib.error, ValueError) as e:
    raise ExportFormatError(f'quantized export has a corrupt header: {e}') from e
  payload = memoryview(data)[start:]
  _check_header(header, version)
  if len(payload) != header['payload_nbytes']:
    raise ExportFormatError(f'quantized export truncated or padded: payload is {len(payload)} bytes, '
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
      raise ExportFormatError(f'quantized export leaf {meta["path"]}: corrupt xz codes ({e})') from e
    if codes.size != count:
      raise ExportFormatError(f'quantized export leaf {meta["path"]}: {codes.size} codes for shape '
                       f'{meta["shape"]}')
  elif codec == 'packed':
    codes = unpack_codes(data, count, meta['bits'])
  else:
    raise ExportFormatError(f'quantized export leaf {meta["path"]}: unknown codec {codec!r} (this '
                     f'qprune reads {", ".join(CODECS)})')
  return codes


def decode_variables(data: bytes) -> Tuple[dict, dict]:
  """(spec, variables as nested dicts of numpy float32) from export bytes."""
  header, payload = _parse_header(data)
  flat = {meta['path']: _decode_leaf(meta, payload) for meta in header['leaves']}
  return header['spec'], traverse_util.unflatten_dict(flat, sep='/')


def load_quantized(path: str):
  """(model, variables) from `save_quantized`'s file; weights are the exact dequantized values.

  ExportFormatError naming the file if it is damaged or its leaves do not fit its model."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    spec, variables = decode_variables(data)
    model = model_from_spec(spec)
    _check_leaves_fit(model, spec, variables)
  except ExportFormatError as e:
    raise ExportFormatError(f'{path}: {e}') from None
  except (KeyError, TypeError, ValueError) as e:  # a spec the model zoo cannot build
    raise ExportFormatError(f'{path}: quantized export header: bad model spec ({type(e).__name__}: '
                            f'{e})') from None
  return model, jax.tree.map(jnp.asarray, variables)


def _check_leaves_fit(model, spec, variables):
  """ExportFormatError if the stored leaves are not exactly the model's (paths and shapes)."""
  images = jax.ShapeDtypeStruct((1, *spec['input_shape']), jnp.uint8)
  expected = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected, sep='/').items()}
  have = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(variables, sep='/').items()}
  for key in sorted(set(want) | set(have)):
    if want.get(key) != have.get(key):
      raise ExportFormatError(f'quantized export leaf {key!r}: stored shape {have.get(key)}, its '
                              f'model ({spec.get("name")}) needs {want.get(key)}')


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
