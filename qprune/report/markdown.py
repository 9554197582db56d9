"""`report.md` of a run: summary, per-layer tables and PNG plots, from its results dict.

`write_report(workdir, results, variables, targets)` renders whatever the results hold:

* every run: a summary table and the training history (table + accuracy curve);
* quantization (`layers`): exponents, bits, distinct values, L1 error per layer, and with
  `variables` the thesis' figure 3.1 per layer (log2|w| histogram with the targets marked);
* pruning (`prune_layers`, `search`, `mask_distance`, `layer_costs`): channels kept / total per
  group, params / MACs before and after (per layer when `layer_costs` is there), the candidate
  search, and the Early-Bird mask distance per epoch;
* sensitivity scans (`quant_sensitivity`, `prune_sensitivity` row lists): table + plot;
* a pipeline (`stages: {name: results}`): the same sections once per stage.

Plots go to `workdir/plots/`; the markdown links them relatively. All writes are atomic.
"""
import os
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from qprune import files
from qprune.report import plots

REPORT_MD = 'report.md'
PLOTS_DIR = 'plots'


# ---------------------------------------------------------------------------------------------
# Markdown helpers.

def fmt(value: Any) -> str:
  """Compact cell text: ints with thousands separators, floats with 4 significant digits."""
  if value is None:
    return ''
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return f'{int(value):,}'
  if isinstance(value, (float, np.floating)):
    v = float(value)
    return f'{v:.4g}' if abs(v) < 1e5 else f'{v:,.0f}'
  if isinstance(value, (list, tuple)):
    return '[' + ', '.join(fmt(v) for v in value) + ']'
  return str(value).replace('|', '\\|').replace('\n', ' ')


def table(rows: Sequence[Mapping], columns: Sequence[str], headers: Optional[Sequence[str]] = None
          ) -> List[str]:
  """Markdown table lines of `rows` (dicts) restricted to `columns`."""
  headers = list(headers or columns)
  lines = ['| ' + ' | '.join(h.replace('|', '\\|') for h in headers) + ' |', '|' + '|'.join('---' for _ in headers) + '|']
  for r in rows:
    lines.append('| ' + ' | '.join(fmt(r.get(c)) for c in columns) + ' |')
  return lines + ['']


def _image(path: str, workdir: str, alt: str) -> str:
  return f'![{alt}]({os.path.relpath(path, workdir)})'


def _pct(x) -> str:
  return '' if x is None else f'{100.0 * float(x):.2f}%'


# ---------------------------------------------------------------------------------------------
# Sections. Each returns markdown lines; `ctx` carries workdir, plots dir and file-name prefix.

class _Context:

  def __init__(self, workdir: str, prefix: str = '', level: int = 2):
    self.workdir = workdir
    self.plots = os.path.join(workdir, PLOTS_DIR)
    self.prefix = prefix
    self.level = level

  def heading(self, text: str, extra: int = 0) -> str:
    return '#' * (self.level + extra) + ' ' + text

  def plot_path(self, name: str) -> str:
    return os.path.join(self.plots, self.prefix + name)


_SUMMARY_KEYS = (
    ('mode', 'mode'), ('model', 'model'), ('dataset', 'dataset'),
    ('test_accuracy', 'test accuracy'), ('fp_test_accuracy', 'float test accuracy'),
    ('pretrained_test_accuracy', 'test accuracy after pretraining'),
    ('pruned_test_accuracy', 'test accuracy after pruning'),
    ('params_before', 'params before pruning'), ('params', 'params'),
    ('macs_before', 'MACs before pruning'), ('macs', 'MACs per image'),
    ('method', 'quantization method'), ('bits_per_weight', 'bits per weight'),
    ('criterion', 'pruning criterion'), ('prune_ratio', 'prune ratio'),
    ('params_removed', 'params removed'), ('macs_removed', 'MACs removed'),
    ('pretrain_epochs', 'pretraining epochs'), ('stopped_early', 'pretraining stopped early'),
    ('finetune_epochs', 'fine-tuning epochs'), ('epochs_run', 'epochs run'),
    ('fp32_bytes_original', 'FP32 bytes of the original model'),
    ('fp32_bytes', 'FP32 bytes'), ('export_bytes', 'exported bytes'),
    ('compression_ratio', 'compression ratio'), ('export_path', 'export'),
    ('wall_time_s', 'wall time (s)'), ('devices', 'devices'),
)


def summary_section(results: Mapping, ctx: _Context) -> List[str]:
  rows = [{'k': label, 'v': results[key]} for key, label in _SUMMARY_KEYS
          if results.get(key) is not None]
  if results.get('export_bytes') and results.get('fp32_bytes') and 'compression_ratio' not in results:
    rows.append({'k': 'FP32 / exported bytes',
                 'v': float(results['fp32_bytes']) / float(results['export_bytes'])})
  return table(rows, ['k', 'v'], ['', 'value']) if rows else []


_HISTORY_COLUMNS = ('epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
                    'epoch_time_s')


def _thin(rows: Sequence, keep: int = 30) -> list:
  """At most ~keep rows: every n-th row plus the last one."""
  if len(rows) <= keep:
    return list(rows)
  step = int(np.ceil(len(rows) / keep))
  picked = list(rows[::step])
  return picked if picked[-1] is rows[-1] else picked + [rows[-1]]


def history_section(history: Sequence[Mapping], ctx: _Context, title: str = 'Training history'
                    ) -> List[str]:
  """Per-epoch table (thinned to ~30 rows) and a train/test accuracy curve."""
  if not history:
    return []
  columns = [c for c in _HISTORY_COLUMNS if any(c in h for h in history)]
  lines = [ctx.heading(title), '']
  first, last = history[0], history[-1]
  best = max((h.get('test_accuracy') for h in history if h.get('test_accuracy') is not None),
             default=None)
  lines += [f'{len(history)} epochs; train loss {fmt(first.get("train_loss"))} → '
            f'{fmt(last.get("train_loss"))}; last test accuracy {_pct(last.get("test_accuracy"))}'
            f'; best {_pct(best)}.', '']
  lines += table(_thin(history), columns)
  series = {k: [h.get(k) for h in history] for k in ('train_accuracy', 'test_accuracy')
            if any(h.get(k) is not None for h in history)}
  if series:
    epochs = [h.get('epoch', i + 1) for i, h in enumerate(history)]
    path = plots.line_plot(epochs, series, ctx.plot_path('history.png'), xlabel='epoch',
                           ylabel='accuracy', title=title)
    lines += [_image(path, ctx.workdir, 'accuracy per epoch'), '']
  return lines


def targets_from_layers(layers: Sequence[Mapping]) -> dict:
  """{layer: exponents} from results' `layers` rows."""
  return {r['name']: tuple(r.get('exponents') or ()) for r in layers}


def quant_section(results: Mapping, ctx: _Context, layer_weights: Optional[Mapping] = None,
                  targets: Optional[Mapping] = None) -> List[str]:
  """Per-layer quantization table and, given the weights, one figure-3.1 histogram per layer."""
  layers = results.get('layers')
  if not layers:
    return []
  lines = [ctx.heading('Quantization'), '']
  bits = results.get('bits_per_weight')
  lines += [f'Method `{results.get("method", "?")}`; average {fmt(bits)} bits per weight; '
            f'accuracy {_pct(results.get("fp_test_accuracy"))} (float) → '
            f'{_pct(results.get("test_accuracy"))} (quantized).', '']
  rows = [dict(r, values=2 * len(r.get('exponents') or ()) + 1) for r in layers]  # 0, ±2^e
  total = {'name': '**total**', 'num_weights': sum(r['num_weights'] for r in layers),
           'bits': bits, 'l1_error': sum(float(r['l1_error']) for r in layers)}
  lines += table(rows + [total], ['name', 'num_weights', 'exponents', 'bits', 'values',
                                  'distinct_values', 'l1_error'],
                 ['layer', 'weights', 'exponents e (values ±2^e)', 'bits', 'codes',
                  'distinct values used', 'L1 error (eq. 3.2)'])
  if results.get('inq_steps'):
    lines += [ctx.heading('INQ steps', 1), '']
    lines += table(results['inq_steps'], ['step', 'frozen_fraction', 'epochs', 'test_accuracy'])
  if layer_weights:
    targets = dict(targets or targets_from_layers(layers))
    lines += [ctx.heading('Weight distributions (figure 3.1)', 1), '',
              'Histogram of log2|w| per layer; red lines: the chosen power-of-two targets '
              '(exponents e, values ±2^e); dashed: below it weights quantize to 0.', '']
    for name, w in layer_weights.items():
      if name not in targets:
        continue
      path = plots.weight_histogram(np.asarray(w), targets[name],
                                    ctx.plot_path(f'hist_{plots.slug(name)}.png'), title=name)
      lines += [_image(path, ctx.workdir, f'{name} log2 histogram'), '']
  return lines


def prune_section(results: Mapping, ctx: _Context) -> List[str]:
  """Channels kept per group, params/MACs before and after, the search, the mask distance."""
  if not any(results.get(k) for k in ('prune_layers', 'search', 'mask_distance', 'layer_costs')):
    return []
  lines = [ctx.heading('Pruning'), '']
  if results.get('criterion') is not None:
    lines += [f'Chosen: criterion `{results.get("criterion")}`, ratio '
              f'{fmt(results.get("prune_ratio"))}, after {fmt(results.get("pretrain_epochs"))} '
              'pretraining epochs.', '']
  cost = [{'what': what, 'before': results.get(f'{what}_before'), 'after': results.get(what)}
          for what in ('params', 'macs') if results.get(f'{what}_before') is not None]
  for r in cost:
    r['kept'] = _pct(r['after'] / r['before']) if r['before'] and r['after'] is not None else ''
  if cost:
    lines += table(cost, ['what', 'before', 'after', 'kept'])
  if results.get('prune_layers'):
    rows = [dict(r, fraction=_pct(r['kept'] / r['total']) if r.get('total') else '')
            for r in results['prune_layers']]
    extra = [c for c in rows[0] if c not in ('name', 'kept', 'total', 'fraction')]
    lines += [ctx.heading('Channels kept per group', 1), '']
    lines += table(rows, ['name', 'kept', 'total', 'fraction'] + extra,
                   ['group', 'kept', 'total', 'kept %'] + extra)
  if results.get('layer_costs'):
    lines += [ctx.heading('Params and MACs per layer', 1), '']
    lines += table(results['layer_costs'], ['name', 'params_before', 'params', 'macs_before',
                                            'macs'],
                   ['layer', 'params before', 'params after', 'MACs before', 'MACs after'])
  if results.get('search'):
    best = results.get('search_best')
    rows = []
    for i, r in enumerate(results['search']):
      if best is not None:
        chosen = i == best
      else:
        chosen = (r.get('criterion') == results.get('criterion') and
                  r.get('ratio') == results.get('prune_ratio') and
                  results.get('selection') in (None, r.get('selection')))
      rows.append(dict(r, chosen='✓' if chosen else ''))
    rows.sort(key=lambda r: -float(r.get('accuracy') or 0))
    lines += [ctx.heading(f'Candidate search ({len(rows)} candidates, best first)', 1), '']
    lines += table(rows[:50], ['chosen', 'description', 'params', 'macs', 'accuracy', 'loss'])
  distances = results.get('mask_distance')
  if distances:
    path = plots.mask_distance_plot(distances, ctx.plot_path('mask_distance.png'),
                                    results.get('early_bird_threshold'))
    lines += [ctx.heading('Mask distance per pretraining epoch', 1), '',
              'Distance: ' + ', '.join(fmt(d) for d in distances), '',
              _image(path, ctx.workdir, 'mask distance'), '']
  return lines


def sensitivity_lines(rows: Sequence[Mapping], ctx: _Context, kind: str) -> List[str]:
  """Table + plot of `quant_sensitivity` (kind='quant') or `prune_sensitivity` rows."""
  if not rows:
    return []
  x_key = 'k' if kind == 'quant' else 'ratio'
  baseline = rows[0].get('baseline_accuracy')
  if kind == 'quant':
    title = 'Quantization sensitivity: one layer at k clustered values, others float'
    columns = ['layer', 'k', 'exponents', 'bits', 'accuracy', 'accuracy_drop']
  else:
    title = 'Pruning sensitivity: one group pruned at a ratio, others intact'
    columns = ['layer', 'ratio', 'kept', 'total', 'params', 'macs', 'accuracy', 'accuracy_drop']
  columns = [c for c in columns if any(c in r for r in rows)]
  path = plots.sensitivity_plot(rows, ctx.plot_path(f'sensitivity_{kind}.png'), x_key=x_key,
                                x_label='k (clustered values)' if kind == 'quant' else
                                'prune ratio', title=title, baseline=baseline)
  return ([ctx.heading(title), '', f'Unmodified accuracy: {_pct(baseline)}.', ''] +
          table(rows, columns) + [_image(path, ctx.workdir, f'{kind} sensitivity'), ''])


def run_sections(results: Mapping, ctx: _Context, layer_weights=None, targets=None) -> List[str]:
  """Every section of one (non-pipeline) results dict."""
  lines = summary_section(results, ctx)
  lines += quant_section(results, ctx, layer_weights, targets)
  lines += prune_section(results, ctx)
  for kind in ('quant', 'prune'):
    lines += sensitivity_lines(results.get(f'{kind}_sensitivity') or [], ctx, kind)
  lines += history_section(results.get('history') or [], ctx)
  return lines


def render(workdir: str, results: Mapping, layer_weights: Optional[Mapping] = None,
           targets: Optional[Mapping] = None) -> str:
  """The report's markdown text (writes the plots as a side effect)."""
  title = ' '.join(str(results.get(k, '')) for k in ('model', 'dataset', 'mode')).strip()
  lines = [f'# qprune report: {title}', '', f'Workdir: `{os.path.abspath(workdir)}`', '']
  stages = results.get('stages')
  if isinstance(stages, Mapping) and stages:
    top = {k: v for k, v in results.items() if k != 'stages'}
    lines += summary_section(top, _Context(workdir))
    # Weights/targets belong to the quantization stage: the one with a `layers` table.
    quant_stage = next((n for n, s in stages.items() if isinstance(s, Mapping) and s.get('layers')),
                       None)
    for name, stage in stages.items():
      if not isinstance(stage, Mapping):
        continue
      ctx = _Context(workdir, prefix=f'{plots.slug(name)}_', level=3)
      lines += [f'## Stage `{name}`', '']
      weights = layer_weights if name == quant_stage else None
      lines += run_sections(stage, ctx, weights, targets if name == quant_stage else None)
    for kind in ('quant', 'prune'):
      lines += sensitivity_lines(top.get(f'{kind}_sensitivity') or [], _Context(workdir), kind)
  else:
    lines += run_sections(results, _Context(workdir), layer_weights, targets)
  return '\n'.join(lines).rstrip() + '\n'


def write_report(workdir: str, results: Mapping, variables=None, targets=None) -> str:
  """Writes `workdir/report.md` (+ `workdir/plots/*.png`) for a run; returns the report's path.

  results: the run's results.json dict (any mode; a pipeline's `stages` are rendered per stage).
  variables: optional {'params': ...} (or a bare params tree), or the path of a run folder
    holding a saved model (loaded with `qprune.load_model`), whose quantizable layers get the
    figure-3.1 histograms; pass the FULL-PRECISION weights the target sets were chosen from (the
    quantization stage's input: `init_from` for mode=quantize, `<workdir>/prune` for the
    pipeline), so the histogram shows the distribution being clustered.
  targets: optional {layer: exponents}; default: the exponents in results' `layers` rows.
  """
  layer_weights = None
  if isinstance(variables, str):
    from qprune import load_model  # pylint: disable=g-import-not-at-top
    variables = load_model(variables)[1]
  if variables is not None:
    from qprune.quant import quantizable_layers  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    params = variables.get('params', variables) if isinstance(variables, Mapping) else variables
    layer_weights = jax.device_get(quantizable_layers(params))
  text = render(workdir, results, layer_weights, targets)
  path = os.path.join(workdir, REPORT_MD)
  files.write_bytes_atomic(path, text.encode())
  return path


def write_sensitivity(rows: Sequence[Mapping], workdir: str, kind: str) -> str:
  """Writes `workdir/sensitivity_<kind>.md` (+ its plot in plots/); kind: 'quant' or 'prune'."""
  ctx = _Context(workdir, level=1)
  path = os.path.join(workdir, f'sensitivity_{kind}.md')
  files.write_bytes_atomic(path, ('\n'.join(sensitivity_lines(rows, ctx, kind)) + '\n').encode())
  return path
