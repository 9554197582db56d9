"""`report.md` of a run: summary, per-layer tables and PNG plots, from its results record.

`write_report(workdir, results, variables, targets)` renders whatever the record holds
(`qprune.records`; a results.json dict is read with `records.from_json`):

* every run: the before → after block the console prints, a summary table of every labelled
  field, the per-layer params / MACs of the saved model, and the training curves of every stage
  (pretraining, fine-tuning, each INQ step) on one epoch axis;
* quantization: exponents, bits, distinct values, L1 error per layer, the INQ steps, and with
  `variables` a log2|w| histogram per layer with the chosen targets marked;
* pruning: channels kept / total per group, params / MACs before and after (in total and per
  layer), the candidate search, and the Early-Bird mask distance with the window maximum the
  stop rule tests and its threshold;
* sensitivity scans (`quant_sensitivity`, `prune_sensitivity` row lists): table + plot;
* a pipeline: the same sections once per stage.

Plots go to `workdir/plots/`; the markdown links them relatively. All writes are atomic.
"""
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qprune import files, records
from qprune.report import plots

REPORT_MD = 'report.md'
PLOTS_DIR = 'plots'


# ---------------------------------------------------------------------------------------------
# Markdown helpers.

def fmt(value: Any) -> str:
  """Compact cell text: ints with thousands separators, floats with 4 significant digits."""
  if value is None:
    return '–'
  if isinstance(value, bool):
    return 'yes' if value else 'no'
  if isinstance(value, (int, np.integer)):
    return f'{int(value):,}'
  if isinstance(value, (float, np.floating)):
    v = float(value)
    return f'{v:.4g}' if abs(v) < 1e5 else f'{v:,.0f}'
  if isinstance(value, (list, tuple)):
    return '[' + ', '.join(fmt(v) for v in value) + ']'
  return str(value).replace('|', '\\|').replace('\n', ' ')


def table(rows: Sequence[Mapping], columns: Sequence[str], headers: Sequence[str] | None = None
          ) -> list[str]:
  """Markdown table lines of `rows` (dicts) restricted to `columns`."""
  headers = list(headers or columns)
  lines = ['| ' + ' | '.join(h.replace('|', '\\|') for h in headers) + ' |',
           '|' + '|'.join('---' for _ in headers) + '|']
  for r in rows:
    lines.append('| ' + ' | '.join(fmt(r.get(c)) for c in columns) + ' |')
  return lines + ['']


def _image(path: str, workdir: str, alt: str) -> str:
  return f'![{alt}]({os.path.relpath(path, workdir)})'


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


def summary_section(record: records.Results, ctx: _Context) -> list[str]:
  """The console's before → after block, then every labelled field of the record."""
  block = record.summary_lines()[1:]
  lines = ['```', *[line.strip() for line in block], '```', ''] if block else []
  rows = [{'k': label, 'v': value} for label, value in records.summary_rows(record)]
  return lines + (table(rows, ['k', 'v'], ['', 'value']) if rows else [])


def _pct(x) -> str:
  return records.format_value(x, records.FRACTION)


_CURVE_COLUMNS = ('epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
                  'epoch_time_s')


def _thin(rows: Sequence, keep: int = 30) -> list:
  """At most ~keep rows: every n-th row plus the last one."""
  if len(rows) <= keep:
    return list(rows)
  step = int(np.ceil(len(rows) / keep))
  picked = list(rows[::step])
  return picked if picked[-1] is rows[-1] else picked + [rows[-1]]


def training_stages(record: records.Results) -> list[tuple]:
  """[(stage name, per-epoch rows)] of every training stage of a run, in order."""
  if isinstance(record, records.TrainResults):
    return [('train', record.history)]
  if isinstance(record, records.QuantizeResults):
    out = [(f'INQ step {s.step} ({100 * (s.frozen_fraction or 0):g}% frozen)', s.history)
           for s in record.inq_steps]
    return out + [('final (BN, biases)', record.final_history)]
  if isinstance(record, records.PruneResults):
    return [('pretrain', record.pretrain_history), ('finetune', record.finetune_history)]
  return []


def curves_section(record: records.Results, ctx: _Context) -> list[str]:
  """Per-stage epoch tables (thinned to ~30 rows) and one plot of all stages' curves."""
  stages = [(name, rows) for name, rows in training_stages(record) if rows]
  if not stages:
    return []
  lines = [ctx.heading('Training curves'), '']
  for name, history in stages:
    first, last = history[0], history[-1]
    loss = (f'{fmt(first.get("train_loss"))} → {fmt(last.get("train_loss"))}' if len(history) > 1
            else f'{fmt(last.get("train_loss"))} (one epoch: change –)')
    lines += [f'**{name}**: {records.plural(len(history), "epoch")}; train loss {loss}; test '
              f'accuracy at the end {_pct(last.get("test_accuracy"))}.', '']
    columns = [c for c in _CURVE_COLUMNS if any(c in h for h in history)]
    lines += table(_thin(history), columns)
  path = plots.stage_curves(stages, ctx.plot_path('curves.png'))
  return lines + [_image(path, ctx.workdir, 'accuracy and loss per epoch'), '']


def model_section(layer_rows: Sequence[Mapping] | None, ctx: _Context) -> list[str]:
  """Per-layer params and MACs of the run's saved model (conv and dense layers)."""
  if not layer_rows:
    return []
  total = {'name': '**total**', 'params': sum(r['params'] for r in layer_rows),
           'macs': sum(r['macs'] for r in layer_rows)}
  return ([ctx.heading('Model: conv and dense layers'), ''] +
          table(list(layer_rows) + [total], ['name', 'params', 'macs'],
                ['layer', 'params (kernel + bias)', 'MACs per image']))


def targets_from_layers(layers: Sequence[Mapping]) -> dict:
  """{layer: exponents} from results' `layers` rows."""
  return {r['name']: tuple(r.get('exponents') or ()) for r in layers}


def quant_section(record: records.Results, ctx: _Context,
                  layer_weights: Mapping | None = None,
                  targets: Mapping | None = None) -> list[str]:
  """Per-layer quantization table and, given the weights, one log2 histogram per layer."""
  if not isinstance(record, records.QuantizeResults) or not record.layers:
    return []
  layers = record.layers
  lines = [ctx.heading('Quantization'), '']
  bits = record.bits_per_weight
  lines += [f'Target rule `{record.method or "?"}`; average {fmt(bits)} bits per weight; '
            f'test accuracy {_pct(record.fp_test_accuracy)} (float) → '
            f'{_pct(record.test_accuracy)} (quantized).', '']
  rows = [dict(r, values=2 * len(r.get('exponents') or ()) + 1) for r in layers]  # 0, ±2^e
  total = {'name': '**total**', 'num_weights': sum(r['num_weights'] for r in layers),
           'bits': bits, 'l1_error': sum(float(r['l1_error']) for r in layers)}
  lines += table(rows + [total], ['name', 'num_weights', 'exponents', 'bits', 'values',
                                  'distinct_values', 'l1_error'],
                 ['layer', 'weights', 'exponents e (values ±2^e)', 'bits', 'codes',
                  'distinct values used', 'L1 error Σ|w − q(w)|'])
  if record.inq_steps:
    lines += [ctx.heading('INQ steps (Zhou et al. 2017)', 1), '']
    steps = [dict(s.to_json(), frozen=_pct(s.frozen_fraction),
                  accuracy=_pct(s.test_accuracy)) for s in record.inq_steps]
    lines += table(steps, ['step', 'frozen', 'epochs', 'accuracy'],
                   ['step', 'weights frozen', 'retraining epochs', 'test accuracy after it'])
  if layer_weights:
    targets = dict(targets or targets_from_layers(layers))
    lines += [ctx.heading('Weight distributions', 1), '',
              'Histogram of log2|w| per layer (the float weights the targets were chosen from); '
              'red lines: the chosen power-of-two targets (exponents e, values ±2^e); dashed: '
              'below it weights quantize to 0.', '']
    for name, w in layer_weights.items():
      if name not in targets:
        continue
      path = plots.weight_histogram(np.asarray(w), targets[name],
                                    ctx.plot_path(f'hist_{plots.slug(name)}.png'), title=name)
      lines += [_image(path, ctx.workdir, f'{name} log2 histogram'), '']
  return lines


def prune_section(record: records.Results, ctx: _Context) -> list[str]:
  """Channels kept per group, params/MACs before and after, the search, the mask distance."""
  if not isinstance(record, records.PruneResults):
    return []
  lines = [ctx.heading('Pruning'), '']
  if record.chosen_text():
    lines += [f'Chosen: {record.chosen_text()}.', '']
  lines += search_explanation(record, _run_config(ctx.workdir))
  cost = [{'what': what, 'before': before, 'after': after,
           'kept': _pct(after / before) if before and after is not None else None}
          for what, before, after in (('params', record.params_before, record.params),
                                      ('MACs per image', record.macs_before, record.macs))
          if before is not None]
  if cost:
    lines += table(cost, ['what', 'before', 'after', 'kept'])
  if record.prune_layers:
    rows = [dict(r, fraction=_pct(r['kept'] / r['total']) if r.get('total') else None)
            for r in record.prune_layers]
    extra = [c for c in rows[0] if c not in ('name', 'kept', 'total', 'fraction')]
    lines += [ctx.heading('Channels kept per group', 1), '']
    lines += table(rows, ['name', 'kept', 'total', 'fraction'] + extra,
                   ['group', 'kept', 'total', 'kept %'] + extra)
  if record.layer_costs:
    lines += [ctx.heading('Params and MACs per layer', 1), '']
    lines += table(record.layer_costs, ['name', 'params_before', 'params', 'macs_before',
                                        'macs'],
                   ['layer', 'params before', 'params after', 'MACs before', 'MACs after'])
  if record.search:
    best = record.search_best
    rows = [dict(r, chosen='✓' if i == best else '', accuracy_pct=_pct(r.get('accuracy')))
            for i, r in enumerate(record.search)]
    rows.sort(key=lambda r: (not r['chosen'], -float(r.get('accuracy') or 0)))
    raced = any(r.get('images') is not None and r['images'] < max(x.get('images') or 0
                                                                 for x in rows) for r in rows)
    lines += [ctx.heading(f'Candidate search ({len(rows)} candidates, best first)', 1), '',
              'Accuracy on training images held out from pretraining (prune.holdout), BN '
              're-estimated per candidate.' +
              (' Raced (prune.search_method=race): a candidate the leader beat significantly '
               'stopped early, so its accuracy is over the held-out images it was scored on; '
               'candidates outside the budget were not scored.' if raced else ''), '']
    columns = ['chosen', 'description', 'params', 'macs', 'accuracy_pct', 'loss']
    titles = ['chosen', 'candidate', 'params', 'MACs', 'held-out accuracy', 'loss']
    if raced:
      columns, titles = columns + ['images'], titles + ['images scored']
    lines += table(rows[:50], columns, titles)
  if record.mask_distance:
    fired = None
    if record.stop_rule_fired and record.pretrain_epochs:
      fired = record.pretrain_epochs
    path = plots.mask_distance_plot(record.mask_distance, ctx.plot_path('mask_distance.png'),
                                    record.eb_threshold, record.mask_window_max, fired)
    lines += [ctx.heading('Mask distance per pretraining epoch', 1), '']
    rows = [{'epoch': i + 1, 'distance': d,
             'window_max': (record.mask_window_max[i]
                            if i < len(record.mask_window_max) else None),
             'to_final': (record.mask_distance_to_final[i]
                          if i < len(record.mask_distance_to_final) else None)}
            for i, d in enumerate(record.mask_distance)]
    lines += table(rows, ['epoch', 'distance', 'window_max', 'to_final'],
                   ['epoch', 'to previous epoch', f'window maximum (window {fmt(record.eb_window)}'
                    f', threshold {fmt(record.eb_threshold)})', "to the last epoch's masks"])
    lines += ['Hamming distances between the masks prune.criterion at prune.ratio gives after each '
              'pretraining epoch (what the stop rule watches).']
    if record.final_mask_distance is not None:
      search = len(record.search) > 1
      lines += [f'The pruned model\'s masks ({record.chosen_text() or "the decision"}) are at '
                f'{_pct(record.final_mask_distance)} from the last epoch\'s' +
                (': the search chose them among other candidates, so they need not be those '
                 'masks.' if search else '.')]
    lines += ['', _image(path, ctx.workdir, 'mask distance'), '']
  return lines


def _run_config(workdir: str) -> dict:
  """The run's config.json ({} when it has none or it cannot be read: the report still renders)."""
  try:
    config = files.read_json(os.path.join(workdir, 'config.json'))
  except ValueError:
    return {}
  return config if isinstance(config, dict) else {}


def search_explanation(record: records.PruneResults, config: Mapping) -> list[str]:
  """What the candidate search chose, among what, under which budget, and why (one paragraph);
  a single candidate says it was the configured one."""
  rows, best = record.search, record.search_best
  if not rows or best is None or not 0 <= best < len(rows):
    return []
  chosen = rows[best]
  if len(rows) == 1:
    return [f'No search: the configured candidate, {chosen.get("description")} '
            '(prune.criterion, prune.ratio, prune.selection; prune.search_* try others).', '']
  prune = config.get('prune')
  if not isinstance(prune, Mapping):
    prune = {}
  limits = [(key, prune.get(f'max_{key}'), getattr(record, f'{key}_before'))
            for key in ('params', 'macs')]
  limits = [(key, fraction, int(fraction * before)) for key, fraction, before in limits
            if fraction and before]
  within = [r for r in rows if all((r.get(k) or 0) <= cap for k, _, cap in limits)]
  grid = ' x '.join(f'{name} {{{", ".join(sorted({str(r.get(key)) for r in rows}))}}}'
                    for key, name in (('criterion', 'criteria'), ('ratio', 'ratios'),
                                      ('selection', 'selections')))
  text = (f'The search scored {len(rows)} candidates ({grid}) on '
          f'{prune.get("holdout", "the")} held-out training images; ')
  if limits:
    text += ('budget: ' + ' and '.join(f'{key} <= {_pct(fraction)} of the unpruned model '
                                       f'({cap:,})' for key, fraction, cap in limits) +
             f', met by {len(within)} of them. ')
  else:
    text += 'no budget (prune.max_params, prune.max_macs). '
  text += (f'Chosen: {chosen.get("description")}, held-out accuracy '
           f'{_pct(chosen.get("accuracy"))}, ' +
           ('the most accurate within the budget.' if limits and chosen in within else
            'the most accurate.' if not limits else
            'no candidate met the budget: the smallest one.'))
  scored = [r for r in rows if r.get('accuracy') is not None]
  top = max(scored, key=lambda r: r['accuracy']) if scored else None
  if top is not None and top is not chosen and top.get('accuracy', 0) > (chosen.get('accuracy')
                                                                         or 0):
    over = [f'{k} {top.get(k):,} > {cap:,}' for k, _, cap in limits if (top.get(k) or 0) > cap]
    text += (f' The most accurate candidate overall, {top.get("description")} '
             f'({_pct(top.get("accuracy"))}), is over the budget ({"; ".join(over)}).'
             if over else '')
  return [text, '']


def sensitivity_lines(rows: Sequence[Mapping], ctx: _Context, kind: str) -> list[str]:
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


def run_sections(record: records.Results, ctx: _Context, layer_weights=None, targets=None,
                 layer_rows=None) -> list[str]:
  """Every section of one (non-pipeline) record."""
  lines = summary_section(record, ctx)
  lines += quant_section(record, ctx, layer_weights, targets)
  lines += prune_section(record, ctx)
  lines += model_section(layer_rows, ctx)
  for kind in ('quant', 'prune'):
    lines += sensitivity_lines(record.extra.get(f'{kind}_sensitivity') or [], ctx, kind)
  lines += curves_section(record, ctx)
  return lines


def render(workdir: str, results, layer_weights: Mapping | None = None,
           targets: Mapping | None = None, layer_rows: Sequence | None = None) -> str:
  """The report's markdown text (writes the plots as a side effect).

  results: the run's record or its results.json dict. layer_rows: per-layer params/MACs of the
  saved model (`qprune.models.layer_costs` as rows), for the model table.
  """
  record = records.from_json(results if isinstance(results, records.Results) else dict(results))
  title = ' '.join(str(v) for v in (record.model, record.dataset, record.mode) if v)
  lines = [f'# qprune report: {title}', '']
  if record.command:
    lines += [f'Command: `{record.command}`', '']
  if isinstance(record, records.PipelineResults) and record.stages:
    lines += summary_section(record, _Context(workdir))
    lines += model_section(layer_rows, _Context(workdir))
    for name, stage in record.stages.items():
      ctx = _Context(workdir, prefix=f'{plots.slug(name)}_', level=3)
      lines += [f'## Stage `{name}`', '']
      quantized = isinstance(stage, records.QuantizeResults)
      lines += run_sections(stage, ctx, layer_weights if quantized else None,
                            targets if quantized else None)
  else:
    lines += run_sections(record, _Context(workdir), layer_weights, targets, layer_rows)
  return '\n'.join(lines).rstrip() + '\n'


def saved_model_layer_rows(workdir: str) -> list | None:
  """[{name, params, macs}] of the model saved in `workdir`, None when it has none."""
  from qprune import artifacts  # pylint: disable=g-import-not-at-top
  from qprune.models import layer_costs  # pylint: disable=g-import-not-at-top
  from qprune.models.spec import model_from_spec  # pylint: disable=g-import-not-at-top
  if not os.path.exists(os.path.join(workdir, artifacts.MODEL_JSON)):
    return None
  spec, variables = artifacts.load_saved_model(workdir)
  costs = layer_costs(model_from_spec(spec), variables, spec['input_shape'])
  return [{'name': name, **c} for name, c in costs.items()]


def write_report(workdir: str, results, variables=None, targets=None) -> str:
  """Writes `workdir/report.md` (+ `workdir/plots/*.png`) for a run; returns the report's path.

  results: the run's record or results.json dict (any mode; a pipeline's stages are rendered
    per stage).
  variables: optional {'params': ...} (or a bare params tree), or the path of a run folder
    holding a saved model (loaded with `qprune.load_model`), whose quantizable layers get the
    log2 histograms; pass the FULL-PRECISION weights the target sets were chosen from (the
    quantization stage's input: `init_from` for mode=quantize, `<workdir>/prune` for the
    pipeline), so the histogram shows the distribution being clustered.
  targets: optional {layer: exponents}; default: the exponents in results' `layers` rows.
  """
  layer_weights = None
  if isinstance(variables, str):
    from qprune.artifacts import load_saved_model  # pylint: disable=g-import-not-at-top
    variables = load_saved_model(variables)[1]
  if variables is not None:
    import jax  # pylint: disable=g-import-not-at-top

    from qprune.quant import quantizable_layers  # pylint: disable=g-import-not-at-top
    params = variables.get('params', variables) if isinstance(variables, Mapping) else variables
    layer_weights = jax.device_get(quantizable_layers(params))
  text = render(workdir, results, layer_weights, targets, saved_model_layer_rows(workdir))
  path = os.path.join(workdir, REPORT_MD)
  files.write_bytes_atomic(path, text.encode())
  return path


def write_sensitivity(rows: Sequence[Mapping], workdir: str, kind: str) -> str:
  """Writes `workdir/sensitivity_<kind>.md` (+ its plot in plots/); kind: 'quant' or 'prune'."""
  ctx = _Context(workdir, level=1)
  path = os.path.join(workdir, f'sensitivity_{kind}.md')
  files.write_bytes_atomic(path, ('\n'.join(sensitivity_lines(rows, ctx, kind)) + '\n').encode())
  return path
