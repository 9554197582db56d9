"""Per-layer quantization report: what results.json's `layers` list and the printed table hold."""
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qprune.quant import targets as targets_lib


def layer_report(params, targets: targets_lib.Targets,
                 path_filter: targets_lib.PathFilter = targets_lib.default_path_filter,
                 zero: bool = True) -> list[dict]:
  """[{name, num_weights, exponents, bits, distinct_values, l1_error}] per targeted layer.

  The layer is quantized with its set (`quantize`; a no-op for already-snapped weights), so
  `l1_error` (Σ|W − Ŵ|) is against `params` as given: pass the full-precision params to measure
  the quantization error, the final INQ params to get 0. `distinct_values` counts the distinct
  values the quantized layer actually uses (zero included if present). zero=False: the sets are
  zero-free (`targets.quantize`).
  """
  rows = []
  for name, w in targets_lib.quantizable_layers(params, path_filter).items():
    if name not in targets:
      continue
    exponents = tuple(int(e) for e in targets[name])
    q = targets_lib.quantize(w, jnp.asarray(exponents, jnp.int32).reshape(-1), zero=zero)
    error, q_host = jax.device_get((targets_lib.l1_error(w, q), q))
    rows.append({'name': name, 'num_weights': int(np.size(q_host)), 'exponents': list(exponents),
                 'bits': targets_lib.bits_per_weight(len(exponents), zero),
                 'distinct_values': int(np.unique(q_host).size), 'l1_error': float(error)})
  return rows


def average_bits(rows: Sequence[Mapping], float_weights: int = 0) -> float:
  """Bits per weight averaged over all quantized weights (weighted by num_weights), plus
  `float_weights` weights of layers kept in float32 at 32 bits each: a network whose first and
  last layers stay float is not a "2-bit" network."""
  total = sum(r['num_weights'] for r in rows) + float_weights
  bits = sum(r['bits'] * r['num_weights'] for r in rows) + 32 * float_weights
  return bits / total if total else 0.0


def format_table(rows: Sequence[Mapping]) -> str:
  """Plain-text table of `layer_report` rows plus a total line."""
  header = f'{"layer":<28} {"weights":>9} {"bits":>4} {"values":>6} {"L1 error":>11}  exponents'
  lines = [header, '-' * len(header)]
  for r in rows:
    lines.append(f'{r["name"]:<28} {r["num_weights"]:>9} {r["bits"]:>4} {r["distinct_values"]:>6} '
                 f'{r["l1_error"]:>11.4g}  {r["exponents"]}')
  total = sum(r['num_weights'] for r in rows)
  error = sum(r['l1_error'] for r in rows)
  lines.append(f'{"total":<28} {total:>9} {average_bits(rows):>4.2f} {"":>6} {error:>11.4g}')
  return '\n'.join(lines)
