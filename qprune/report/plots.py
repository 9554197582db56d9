"""Every PNG plot of the project (matplotlib, Agg; no display, no pyplot global state).

Every function draws one figure from plain data (numpy arrays, results dicts, point lists),
writes it atomically and returns the path: report.md's per-run plots, the sweep collector's,
and the research book's (`reproduce/results.py` passes its points here). Figures are built with
`matplotlib.figure.Figure`, whose `savefig` renders with the Agg backend, so nothing here
touches pyplot's global backend. Epoch axes show whole epochs with a half-epoch margin, and
short series draw larger, labelled markers, so a 1-epoch run reads as well as a 160-epoch one.
"""
import io
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from qprune import files, records
from qprune.records import result_field

# Series this short get bigger markers and their values written beside the points.
FEW_POINTS = 3


def _figure(width: float = 6.4, height: float = 4.0, constrained: bool = True):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=(width, height), dpi=100, layout='constrained' if constrained else None)


def save_figure(fig, path: str) -> str:
  """Renders `fig` to PNG and writes it to `path` atomically."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  files.write_bytes_atomic(path, buffer.getvalue())
  return path


def slug(name: str) -> str:
  """A file-name-safe version of a layer / stage name.

  'stage1_block1/conv1' -> 'stage1_block1-conv1'."""
  return re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-') or 'x'


# ---------------------------------------------------------------------------------------------
# Weight histogram on a log2|w| axis with the chosen power-of-two targets.

def log2_magnitudes(w) -> np.ndarray:
  """log2|w| of the nonzero weights of `w` (any shape), float64 1-D."""
  a = np.abs(np.asarray(w, np.float64).reshape(-1))
  return np.log2(a[a > 0])


def _draw_log2_hist(ax, w, exponents: Sequence[int], title: str, bins: int = 80):
  x = log2_magnitudes(w)
  exponents = sorted(int(e) for e in exponents)
  if x.size:
    lo = min(x.min(), min(exponents, default=x.min()) - 1.5)
    hi = max(x.max(), max(exponents, default=x.max()) + 0.5)
    ax.hist(x, bins=np.linspace(lo, hi, bins + 1), color='tab:blue', alpha=0.75)
  for i, e in enumerate(exponents):
    ax.axvline(e, color='tab:red', lw=1.2, label='targets 2^e' if i == 0 else None)
  if exponents:
    # The quantizer maps |w| below half the smallest target magnitude, 2^(e_min - 1), to 0.
    ax.axvline(exponents[0] - 1, color='k', ls='--', lw=1.0, label='zero threshold')
  zeros = int(np.size(w) - x.size)
  ax.set_title(f'{title}  ({np.size(w)} weights' + (f', {zeros} exactly 0)' if zeros else ')'),
               fontsize=9)
  ax.set_xlabel('log2 |w|')
  ax.set_ylabel('weights')
  if exponents:
    ax.legend(fontsize=7, loc='upper left')


def weight_histogram(w, exponents: Sequence[int], path: str, title: str = '') -> str:
  """One layer's histogram of log2|w| with a vertical line at every
  target exponent e (the value ±2^e) and a dashed one at the zero threshold e_min - 1."""
  fig = _figure()
  _draw_log2_hist(fig.add_subplot(), w, exponents, title)
  return save_figure(fig, path)


def weight_histogram_grid(layers: Mapping[str, np.ndarray], targets: Mapping[str, Sequence[int]],
                          path: str, columns: int = 3) -> str:
  """All layers' log2|w| histograms in one grid PNG (layers without targets are skipped)."""
  names = [n for n in layers if n in targets]
  rows = max(1, math.ceil(len(names) / columns))
  fig = _figure(4.2 * columns, 3.0 * rows)
  for i, name in enumerate(names):
    _draw_log2_hist(fig.add_subplot(rows, columns, i + 1), layers[name], targets[name], name)
  return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Per-run curves.

def _epoch_axis(ax, epochs: int):
  """Whole epochs 1..`epochs` with half an epoch of margin (one epoch is not a 0.95-1.05 axis)."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  ax.set_xlim(0.5, max(epochs, 1) + 0.5)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _label_points(ax, pts, text=lambda y: f'{y:.4g}', above: bool = True):
  """Writes each point's value beside it (for series of at most FEW_POINTS points), a little
  above it (or below: two series of close values keep their labels apart)."""
  for x, y in pts:
    ax.annotate(text(y), (x, y), xytext=(7, 3 if above else -3), textcoords='offset points',
                va='bottom' if above else 'top', fontsize=7)


def _legend_beside(ax, **kwargs):
  """The legend right of the axes, where it hides no point or label."""
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
            **kwargs)


def mask_distance_plot(distances: Sequence[float | None], path: str,
                       threshold: float | None = None,
                       window_max: Sequence[float | None] | None = None,
                       stop_epoch: int | None = None) -> str:
  """Early-Bird: mask distance to the previous pretraining epoch, and the quantity the stop rule
  tests (the largest pairwise distance among the last `window` epochs' masks) against its
  threshold; the epoch the rule fired is marked. The first distance exists from epoch 2 on: a
  shorter pretraining gets a plot that says so."""
  return save_figure(mask_distance_figure(distances, threshold, window_max, stop_epoch), path)


def mask_distance_figure(distances, threshold=None, window_max=None, stop_epoch=None):
  """The figure `mask_distance_plot` saves."""
  fig = _figure()
  ax = fig.add_subplot()
  epochs = len(distances)
  few = epochs <= FEW_POINTS
  measured = []
  for values, marker, label in ((distances, 'o', 'distance to previous epoch'),
                                (window_max or (), 's', 'window maximum\n(what the rule tests)')):
    pts = [(i + 1, d) for i, d in enumerate(values) if d is not None]
    if pts:
      ax.plot(np.arange(1, len(values) + 1), [np.nan if d is None else d for d in values],
              marker=marker, ms=7 if few else (4 if marker == 's' else 6), label=label)
      if few:
        _label_points(ax, pts, lambda y: f'{y:.3f}', above=marker == 'o')
      measured += [d for _, d in pts]
  if threshold is not None:
    ax.axhline(threshold, color='tab:red', ls='--', label=f'threshold {threshold:g}')
  if stop_epoch is not None:
    ax.axvline(stop_epoch, color='tab:green', ls=':', label=f'rule fired (epoch {stop_epoch})')
  if not measured:
    ax.text(0.5, 0.5, f'no distance yet: {records.plural(epochs, "pretraining epoch")}; the\n'
            'distance to the previous epoch is measured from epoch 2 on', ha='center',
            va='center', transform=ax.transAxes, fontsize=9, color='0.3')
  top = max(measured + ([threshold] if threshold is not None else []), default=0.0)
  ax.set_ylim(0.0, 1.2 * top if top > 0 else 0.1)  # a fraction of the channels: from 0
  if ax.get_legend_handles_labels()[0]:
    _legend_beside(ax)
  ax.set_xlabel('pretraining epoch')
  ax.set_ylabel('normalized Hamming distance')
  ax.set_title('Pruning mask distance (Early-Bird, You et al. 2020)', fontsize=10)
  ax.grid(alpha=0.3)
  _epoch_axis(ax, epochs)
  return fig


# (results key, line style, marker, open marker, text beside a point, text above the point) of
# stage_curves' series.
_CURVES = (('train_accuracy', '--', 's', True, 'train {:.4f}', False),
           ('test_accuracy', '-', 'o', False, 'test {:.4f}', True),
           ('train_loss', '-', 'o', False, 'loss {:.4f}', True))


def stage_curves(stages: Sequence[tuple], path: str, title: str = 'Training curves') -> str:
  """Accuracy (train and test) and training loss per epoch, the stages one after another on one
  epoch axis. stages: [(name, history rows)] (rows as metrics.jsonl: epoch, train_loss,
  train_accuracy, test_accuracy). Train accuracy is dashed with open squares, test accuracy
  solid with dots; with at most FEW_POINTS epochs every point is labelled with its value."""
  return save_figure(stage_curves_figure(stages, title), path)


def stage_curves_figure(stages: Sequence[tuple], title: str = 'Training curves'):
  """The figure `stage_curves` saves."""
  fig = _figure(7.5, 5.0)
  acc_ax, loss_ax = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
  colors = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown',
            'tab:pink', 'tab:gray')
  drawn = [(name, history) for name, history in stages if history]
  total = sum(len(history) for _, history in drawn)
  few = total <= FEW_POINTS
  offset, accuracies, losses = 0, [], []
  for i, (name, history) in enumerate(drawn):
    xs = np.arange(offset + 1, offset + len(history) + 1)
    color = colors[i % len(colors)]
    for key, style, marker, hollow, text, above in _CURVES:
      ax = loss_ax if key == 'train_loss' else acc_ax
      pts = [(x, h.get(key)) for x, h in zip(xs, history) if h.get(key) is not None]
      if not pts:
        continue
      # One legend entry per stage (where there are several); the marker says train or test.
      label = name if len(drawn) > 1 and key != 'train_accuracy' else None
      ax.plot(*zip(*pts), style, marker=marker, ms=7 if few else 3, color=color, label=label,
              mfc='white' if hollow else color)
      if few:
        _label_points(ax, pts, text.format, above)
      (accuracies if ax is acc_ax else losses).extend(y for _, y in pts)
    if offset:
      for ax in (acc_ax, loss_ax):
        ax.axvline(offset + 0.5, color='k', lw=0.6, alpha=0.5)
    offset += len(history)
  acc_ax.plot([], [], 'k--', marker='s', mfc='white', label='train (dashed, open squares)')
  acc_ax.plot([], [], 'k-', marker='o', label='test (solid, dots)')
  if few and accuracies:  # a point or two: a readable band around them, not matplotlib's ±5 %
    acc_ax.set_ylim(max(0.0, min(accuracies) - 0.05), min(1.0, max(accuracies) + 0.05) + 0.01)
  loss_ax.set_ylim(0.0, 1.15 * max(losses, default=1.0) or 1.0)  # room above the first loss
  acc_ax.set_ylabel('accuracy')
  acc_ax.set_title(title, fontsize=10)
  loss_ax.set_ylabel('training loss')
  loss_ax.set_xlabel('epoch (stages in order)' if len(drawn) > 1 else 'epoch')
  for ax in (acc_ax, loss_ax):
    ax.grid(alpha=0.3)
    _epoch_axis(ax, offset)
  _legend_beside(acc_ax)
  if len(drawn) > 1:
    _legend_beside(loss_ax)
  return fig


def sensitivity_plot(rows: Sequence[Mapping], path: str, *, x_key: str, x_label: str,
                     title: str, baseline: float | None = None) -> str:
  """Accuracy vs `x_key` (k or ratio), one line per layer / group (`rows[i]['layer']`)."""
  fig = _figure(7.0, 4.2)
  ax = fig.add_subplot()
  layers = list(dict.fromkeys(r['layer'] for r in rows))
  for name in layers:
    pts = sorted((r[x_key], r['accuracy']) for r in rows if r['layer'] == name)
    ax.plot(*zip(*pts), marker='o', ms=3, label=name)
  if baseline is not None:
    ax.axhline(baseline, color='k', ls='--', lw=1, label='unmodified')
  ax.set_xlabel(x_label)
  ax.set_ylabel('test accuracy')
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2 if len(layers) > 8 else 1)
  return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Sweeps.

def sweep_points(results_list: Sequence[Mapping]) -> list:
  """[(label, accuracy, bits_per_weight, macs)] of the runs that have a test accuracy.

  bits_per_weight is 32 for runs that did not quantize (float32 weights). label: the run's
  'job' or 'name' key if present (the collector adds 'job'), else its index.
  """
  points = []
  for i, r in enumerate(results_list):
    acc = result_field(r, 'test_accuracy')
    if acc is None:
      continue
    bits = result_field(r, 'bits_per_weight')
    points.append((str(r.get('job') or r.get('name') or i), float(acc),
                   32.0 if bits is None else float(bits), result_field(r, 'macs')))
  return points


def _scatter(points, x_index: int, path: str, xlabel: str, title: str, log_x: bool) -> str:
  fig = _figure(7.0, 4.5)
  ax = fig.add_subplot()
  pts = [p for p in points if p[x_index] is not None]
  if pts:
    ax.scatter([p[x_index] for p in pts], [p[1] for p in pts], color='tab:blue')
    if len(pts) <= 40:
      for p in pts:
        ax.annotate(p[0], (p[x_index], p[1]), fontsize=6, xytext=(3, 3),
                    textcoords='offset points')
    if log_x and min(p[x_index] for p in pts) > 0:
      ax.set_xscale('log')
      if max(p[x_index] for p in pts) / min(p[x_index] for p in pts) < 20:
        from matplotlib.ticker import ScalarFormatter  # pylint: disable=g-import-not-at-top
        ax.xaxis.set_major_formatter(ScalarFormatter())  # plain numbers, not 10^1
    ax.margins(x=0.15, y=0.1)  # room for the labels
  ax.set_xlabel(xlabel)
  ax.set_ylabel('test accuracy')
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  return save_figure(fig, path)


def sweep_plots(results_list: Sequence[Mapping], out_dir: str) -> list:
  """Accuracy vs bits per weight and accuracy vs MACs over many results.json dicts.

  Writes `out_dir/accuracy_vs_bits.png` and `out_dir/accuracy_vs_macs.png`; returns the paths.
  """
  os.makedirs(out_dir, exist_ok=True)
  points = sweep_points(results_list)
  return [
      _scatter(points, 2, os.path.join(out_dir, 'accuracy_vs_bits.png'),
               'bits per weight (32 = float)', 'Accuracy vs bits per weight', log_x=False),
      _scatter(points, 3, os.path.join(out_dir, 'accuracy_vs_macs.png'), 'MACs per image',
               'Accuracy vs MACs', log_x=True),
  ]


# ---------------------------------------------------------------------------------------------
# The research book's figures (reproduce/results.py picks the points; drawn here like the rest).

def _book_figure():
  return _figure(6.0, 4.0, constrained=False)


def _save_book_figure(fig, ax, path: str, legend_fontsize: int | None = None) -> str:
  ax.legend(**({'fontsize': legend_fontsize} if legend_fontsize else {}))
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return save_figure(fig, path)


def accuracy_vs_bits_plot(methods: Mapping[str, Sequence[tuple]], path: str, *, title: str,
                          reference: float | None = None) -> str:
  """Test accuracy (%) vs bits per weight: per label (a target rule) every run a faint dot and a
  line through its best run at each bit width; `reference` (full precision) a dashed line."""
  fig = _book_figure()
  ax = fig.add_subplot()
  for label, points in methods.items():
    best: dict = {}
    for bits, accuracy in points:  # recipe variants at equal bits: the line joins the best
      best[bits] = max(best.get(bits, accuracy), accuracy)
    line, = ax.plot(*zip(*sorted(best.items())), marker='o', label=label)
    xs, ys = zip(*points)
    ax.scatter(xs, ys, color=line.get_color(), alpha=0.4, s=14)
  if reference is not None:
    ax.axhline(reference, color='gray', linestyle='--', label='full precision')
  ax.set_xlabel('bits per weight')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(title)
  return _save_book_figure(fig, ax, path)


def mask_settling_plot(curves: Mapping[str, tuple], path: str, *, title: str) -> str:
  """Per label (a pruning criterion): the masks' Hamming distance to the final masks per
  pretraining epoch (solid, dots) and to the previous epoch's (dotted; None: not measured)."""
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  fig = _book_figure()
  ax = fig.add_subplot()
  for label, (to_final, to_previous) in curves.items():
    line, = ax.plot(range(1, len(to_final) + 1), to_final, marker='o',
                    label=f'{label}: to the final masks')
    ax.plot(range(1, len(to_previous) + 1), [math.nan if d is None else d for d in to_previous],
            linestyle=':', color=line.get_color(), label=f'{label}: to the previous epoch')
  ax.set_xlabel('pretraining epoch')
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel('mask Hamming distance')
  ax.set_title(title)
  return _save_book_figure(fig, ax, path)


def labelled_points_plot(points: Sequence[Mapping], path: str, *, xlabel: str, ylabel: str,
                         title: str, reference: tuple | None = None) -> str:
  """A scatter of points drawn in order, each {'x', 'y', 'color', 'marker', 'size', 'label'
  (legend, or None), 'text' (written beside it, or None)}; `reference` (value, label): a dashed
  horizontal line."""
  fig = _book_figure()
  ax = fig.add_subplot()
  for p in points:
    ax.scatter(p['x'], p['y'], s=p['size'], color=p['color'], marker=p['marker'],
               label=p.get('label'))
    if p.get('text'):
      ax.annotate(p['text'], (p['x'], p['y']), fontsize=7, xytext=(3, 3),
                  textcoords='offset points')
  if reference is not None:
    ax.axhline(reference[0], color='gray', linestyle='--', label=reference[1])
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  return _save_book_figure(fig, ax, path, legend_fontsize=8)
