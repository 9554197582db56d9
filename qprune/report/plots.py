"""PNG plots of runs and sweeps (matplotlib, Agg; no display, no pyplot global state).

Every function draws one figure from plain data (numpy arrays, results dicts), writes it
atomically and returns the path. Figures are built with `matplotlib.figure.Figure`, whose
`savefig` renders with the Agg backend, so nothing here touches pyplot's global backend.
"""
import io
import math
import os
import re
from typing import Mapping, Optional, Sequence

import numpy as np

from qprune import files
from qprune.report.collect import result_field


def _figure(width: float = 6.4, height: float = 4.0):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=(width, height), dpi=100, layout='constrained')


def save_figure(fig, path: str) -> str:
  """Renders `fig` to PNG and writes it to `path` atomically."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  files.write_bytes_atomic(path, buffer.getvalue())
  return path


def slug(name: str) -> str:
  """A file-name-safe version of a layer / stage name ('stage1_block1/conv1' -> 'stage1_block1-conv1')."""
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

def line_plot(xs, series: Mapping[str, Sequence[float]], path: str, *, xlabel: str,
              ylabel: str, title: str = '') -> str:
  """One line per series over the shared x values (None values are skipped)."""
  fig = _figure()
  ax = fig.add_subplot()
  for label, ys in series.items():
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if pts:
      ax.plot(*zip(*pts), marker='o', ms=3, label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  if len(series) > 1:
    ax.legend(fontsize=8)
  return save_figure(fig, path)


def _integer_ticks(ax):
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def mask_distance_plot(distances: Sequence[Optional[float]], path: str,
                       threshold: Optional[float] = None,
                       window_max: Optional[Sequence[Optional[float]]] = None,
                       stop_epoch: Optional[int] = None) -> str:
  """Early-Bird: mask distance to the previous pretraining epoch, and the quantity the stop rule
  tests (the largest pairwise distance among the last `window` epochs' masks) against its
  threshold; the epoch the rule fired is marked."""
  fig = _figure()
  ax = fig.add_subplot()
  epochs = np.arange(1, len(distances) + 1)
  ax.plot(epochs, [np.nan if d is None else d for d in distances], marker='o',
          label='distance to previous epoch')
  if window_max:
    ax.plot(epochs[:len(window_max)], [np.nan if d is None else d for d in window_max],
            marker='s', ms=4, label='window maximum (what the rule tests)')
  if threshold is not None:
    ax.axhline(threshold, color='tab:red', ls='--', label=f'threshold {threshold:g}')
  if stop_epoch is not None:
    ax.axvline(stop_epoch, color='tab:green', ls=':', label=f'rule fired (epoch {stop_epoch})')
  ax.legend(fontsize=8)
  ax.set_xlabel('pretraining epoch')
  ax.set_ylabel('normalized Hamming distance')
  ax.set_title('Pruning mask distance (Early-Bird, You et al. 2020)', fontsize=10)
  ax.grid(alpha=0.3)
  _integer_ticks(ax)
  return save_figure(fig, path)


def stage_curves(stages: Sequence[tuple], path: str, title: str = 'Training curves') -> str:
  """Accuracy (train and test) and training loss per epoch, the stages one after another on one
  epoch axis. stages: [(name, history rows)] (rows as metrics.jsonl: epoch, train_loss,
  train_accuracy, test_accuracy)."""
  fig = _figure(7.5, 5.0)
  acc_ax, loss_ax = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
  offset, colors = 0, ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple',
                       'tab:brown', 'tab:pink', 'tab:gray')
  for i, (name, history) in enumerate(stages):
    if not history:
      continue
    xs = np.arange(offset + 1, offset + len(history) + 1)
    color = colors[i % len(colors)]
    for key, style, ax in (('train_accuracy', '--', acc_ax), ('test_accuracy', '-', acc_ax),
                           ('train_loss', '-', loss_ax)):
      pts = [(x, h.get(key)) for x, h in zip(xs, history) if h.get(key) is not None]
      if pts:  # one legend entry per stage; the line style says train (dashed) or test
        label = name if key != 'train_accuracy' else None
        ax.plot(*zip(*pts), style, marker='o', ms=3, color=color, label=label)
    if offset:
      for ax in (acc_ax, loss_ax):
        ax.axvline(offset + 0.5, color='k', lw=0.6, alpha=0.5)
    offset += len(history)
  acc_ax.plot([], [], 'k--', label='train (dashed)')
  acc_ax.plot([], [], 'k-', label='test (solid)')
  acc_ax.set_ylabel('accuracy')
  acc_ax.set_title(title, fontsize=10)
  loss_ax.set_ylabel('training loss')
  loss_ax.set_xlabel('epoch (stages in order)')
  for ax in (acc_ax, loss_ax):
    ax.grid(alpha=0.3)
    _integer_ticks(ax)
  acc_ax.legend(fontsize=7, ncol=2)
  if len(stages) > 1:
    loss_ax.legend(fontsize=7, ncol=2)
  return save_figure(fig, path)


def sensitivity_plot(rows: Sequence[Mapping], path: str, *, x_key: str, x_label: str,
                     title: str, baseline: Optional[float] = None) -> str:
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
