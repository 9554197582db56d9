r"""Per-layer quantization error of the three target rules at equal k, on a trained model.

  python -m reproduce.target_errors --model_dir=results/mnist_lenet5/fp \
      [--ks=1,2,4] [--out=results/mnist_lenet5/target_errors.json]

For each conv/dense layer and each k, the L1 error Σ|W − Ŵ| (eq. 3.2 of the thesis; Zhou et al.
2017's quantizer) of the full-precision weights under: INQ's rule (the b with 2^(b-2) = k
exponents, so only k = 1, 2, 4, 8), k-means on log2|w| (the thesis' clustered targets) and the
error-optimal set (`qprune.quant.optimal`); beside them, at the same bits rather than the same k,
the error-optimal zero-free set (`quant.zero_code=False`), which fills those bits with
2^(bits-1) exponents. Prints a markdown table; `--out` writes JSON (the rows and their
whole-network totals per k) that `python -m reproduce.results write` renders into RESULTS.md.
"""
import argparse
import math
import sys
from collections.abc import Sequence

from qprune import files, quant
from qprune.artifacts import load_saved_model


def inq_bits_for(k: int):
  """The INQ bit-width b with exactly k exponents (2^(b-2) = k), or None."""
  b = 2 + math.log2(k)
  return int(b) if b == int(b) else None


def zero_free_k(k: int) -> int:
  """Exponents of the zero-free sets that take the bits of k exponents with a zero code."""
  return 2 ** (quant.bits_per_weight(k) - 1)


def layer_errors(params, ks: Sequence[int]) -> list[dict]:
  """[{'layer', 'weights', 'k', 'bits', 'inq', 'kmeans', 'optimal', 'zero_free', 'zero_free_k'}]
  (errors; inq None where no b fits; zero_free: the optimal zero-free set of zero_free_k
  exponents, the same bits as k exponents with the zero code)."""
  layers = quant.quantizable_layers(params)
  k_max = max(ks)
  kmeans = quant.candidate_table(layers, k_max=k_max)
  optimal = quant.optimal_table(layers, k_max=k_max)
  zero_free = quant.optimal_table(layers, k_max=max(zero_free_k(k) for k in ks), zero=False)
  rows = []
  for k in ks:
    bits = inq_bits_for(k)
    inq = quant.quantize_layers(layers, quant.inq_targets(layers, bits)) if bits else {}
    for ln, name in enumerate(kmeans.names):
      inq_error = float(quant.l1_error(layers[name], inq[name])) if bits else None
      rows.append({'layer': name, 'weights': int(kmeans.num_weights[ln]), 'k': k,
                   'inq': inq_error, 'kmeans': float(kmeans.errors[ln, k - 1]),
                   'optimal': float(optimal.errors[ln, k - 1]),
                   'zero_free': float(zero_free.errors[ln, zero_free_k(k) - 1]),
                   'bits': quant.bits_per_weight(k), 'zero_free_k': zero_free_k(k)})
  return rows


def totals(rows: list[dict]) -> list[dict]:
  """Whole-network sums per k."""
  out = []
  for k in sorted({r['k'] for r in rows}):
    of_k = [r for r in rows if r['k'] == k]
    total = {'layer': 'total', 'weights': sum(r['weights'] for r in of_k), 'k': k,
             'bits': of_k[0]['bits'], 'zero_free_k': of_k[0]['zero_free_k']}
    for rule in ('inq', 'kmeans', 'optimal', 'zero_free'):
      values = [r[rule] for r in of_k]
      total[rule] = None if any(v is None for v in values) else sum(values)
    out.append(total)
  return out


def markdown(rows: list[dict]) -> str:
  fmt = lambda v: '' if v is None else f'{v:.4g}'
  lines = ['| layer | weights | k | INQ rule | k-means | optimal | optimal / k-means | '
           'zero-free, same bits (exponents) |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows + totals(rows):
    ratio = r['optimal'] / r['kmeans'] if r['kmeans'] else None
    lines.append(f'| {r["layer"]} | {r["weights"]:,} | {r["k"]} | {fmt(r["inq"])} | '
                 f'{fmt(r["kmeans"])} | {fmt(r["optimal"])} | '
                 f'{"" if ratio is None else f"{ratio:.3f}"} | '
                 f'{fmt(r["zero_free"])} ({r["zero_free_k"]}) |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m reproduce.target_errors',
                                   description=__doc__.split('\n\n')[1])
  parser.add_argument('--model_dir', required=True, help='a finished run (qprune.load_model)')
  parser.add_argument('--ks', default='1,2,3,4')
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  from qprune.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    ks = sorted({int(k) for k in args.ks.split(',')})
    if not ks or ks[0] < 1:
      raise ValueError
  except ValueError:
    print(f'qprune: error: --ks={args.ks!r}: give positive integers, e.g. 1,2,4', file=sys.stderr)
    return 2
  try:
    _, variables = load_saved_model(args.model_dir)
  except (UserError, OSError) as e:
    print(f'qprune: error: {e}', file=sys.stderr)
    return 2
  rows = layer_errors(variables['params'], ks)
  print(markdown(rows))
  if args.out:
    files.write_json_atomic(args.out, {'model_dir': args.model_dir, 'rows': rows,
                                       'totals': totals(rows)}, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
