"""An open integer-code export of a power-of-two model: a plain numpy `.npz`, readable without
qprune.

Entries (keys are the '/'-joined variable paths, e.g. 'params/conv1/kernel'):

  '__format__'           str    'qprune-codes-v1'
  '__spec__'             str    JSON model spec (`qprune.models.spec.model_spec`)
  '<path>.sign'          int8   same shape as the weight: -1, 0 or +1   (quantized kernels)
  '<path>.index'         uint8  same shape: 0 for a zero weight, i >= 1 for 2^exponents[i-1]
  '<path>.exponents'     int32  [n] the layer's exponent table, ascending
  '<path>'               float32 every other leaf (biases, BatchNorm scale/bias/mean/var)

so a quantized weight is `sign * 2.0**exponents[index - 1]` (0 where index == 0, and there sign
is 0 too). README's "Deployment" section has a 20-line numpy loader; `load_codes` here does the
same and returns a ready model. The codes are those of the bit-packed `.qpq` export (code c:
0 -> index 0; 1..n -> +, index c; n+1..2n -> −, index c − n; for a zero-free layer c in 0..n-1
-> +, index c + 1; n..2n-1 -> −, index c − n + 1: code c + 1 of the other layout, and no index
is 0), so both files decode to the same bits.
"""
import io
import json
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from qprune import files
from qprune.errors import UserError
from qprune.quant import export as qpq
from qprune.quant import targets as targets_lib

FORMAT = 'qprune-codes-v1'


class CodesFormatError(UserError):
  """A file is not a valid qprune integer-code export."""


def _codes_entries(path: str, codes: np.ndarray, exponents, shape, zero: bool = True) -> dict:
  n = len(exponents)
  if n > 255:
    raise CodesFormatError(f'{path}: {n} exponents do not fit uint8 indices')
  codes = codes.astype(np.int64).reshape(shape)
  if not zero:  # zero-free code c is code c + 1 of the layout with a zero code (never used)
    codes = codes + 1
  sign = np.where(codes == 0, 0, np.where(codes <= n, 1, -1)).astype(np.int8)
  index = np.where(codes <= n, codes, codes - n).astype(np.uint8)
  return {f'{path}.sign': sign, f'{path}.index': index,
          f'{path}.exponents': np.asarray(sorted(int(e) for e in exponents), np.int32)}


def qpq_to_codes(data: bytes) -> tuple[dict, dict]:
  """(spec, npz entries) from the bytes of a `.qpq` export (same codes, unpacked)."""
  header, payload = qpq._parse_header(data)  # pylint: disable=protected-access
  entries = {}
  for meta in header['leaves']:
    chunk = payload[meta['offset']:meta['offset'] + meta['nbytes']]
    shape = tuple(meta['shape'])
    if meta['kind'] == 'codes':
      codes = qpq.leaf_codes(meta, chunk)
      entries.update(_codes_entries(meta['path'], codes, meta['exponents'], shape,
                                    meta.get('zero', True)))
    else:
      entries[meta['path']] = np.frombuffer(chunk, '<f4').astype(np.float32).reshape(shape)
  return header['spec'], entries


def _npz_bytes(spec: Mapping, entries: Mapping) -> bytes:
  buffer = io.BytesIO()
  np.savez_compressed(buffer, __format__=np.asarray(FORMAT), __spec__=np.asarray(json.dumps(spec)),
                      **entries)
  return buffer.getvalue()


def save_codes(path: str, variables, targets: targets_lib.Targets, spec: Mapping,
               path_filter: targets_lib.PathFilter = targets_lib.default_path_filter,
               zero: bool = True) -> int:
  """Writes the `.npz` code export of `variables` (kernels quantized to `targets` by
  `quant.quantize`, exactly as `quant.save_quantized` does; zero=False: zero-free sets); returns its
  size in bytes."""
  spec_out, entries = qpq_to_codes(qpq.encode_variables(variables, targets, spec, path_filter,
                                                        zero=zero))
  return files.write_bytes_atomic(path, _npz_bytes(spec_out, entries))


def qpq_file_to_codes(qpq_path: str, out_path: str) -> int:
  """Converts a `.qpq` file into the `.npz` code export; returns the new file's size."""
  with open(qpq_path, 'rb') as f:
    spec, entries = qpq_to_codes(f.read())
  return files.write_bytes_atomic(out_path, _npz_bytes(spec, entries))


def decode_codes(path: str) -> tuple[dict, dict]:
  """(spec, {path: float32 array}) from a code export; the weights are exact powers of two."""
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise CodesFormatError(f'{path} is not a readable .npz: {e}') from e
  with z:
    if '__format__' not in z.files or str(z['__format__']) != FORMAT:
      raise CodesFormatError(f'{path} is not a {FORMAT} export')
    spec = json.loads(str(z['__spec__']))
    flat = {}
    for key in z.files:
      if key.startswith('__') or key.endswith(('.index', '.exponents')):
        continue
      if key.endswith('.sign'):
        leaf = key[:-len('.sign')]
        table = z[leaf + '.exponents']
        magnitudes = np.concatenate(
            [np.zeros(1, np.float32), np.ldexp(np.float32(1), table).astype(np.float32)])
        flat[leaf] = (z[key] * magnitudes[z[leaf + '.index']]).astype(np.float32)
      else:
        flat[key] = z[key]
  return spec, flat


def load_codes(path: str):
  """(model, variables) from a code export, like `qprune.load_quantized` for `.qpq` files."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from qprune.models.spec import model_from_spec  # pylint: disable=g-import-not-at-top
  spec, flat = decode_codes(path)
  variables = traverse_util.unflatten_dict({tuple(k.split('/')): jnp.asarray(v)
                                            for k, v in flat.items()})
  return model_from_spec(spec), variables
