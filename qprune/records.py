"""Typed results of every mode: the one definition of what a run's results.json holds.

Each mode returns one record (`TrainResults`, `QuantizeResults`, `PruneResults`,
`PipelineResults`); the binary fills the run header (`mode` ... `command`) and writes
`record.to_json()`. Every reader goes through `from_json`: report.md's summary table, the sweep
collector's summary.md/csv columns, RESULTS.md, the console's summary block and its last JSON
line, and the pipeline reading its stages. A field's metadata (`label`, `unit`, `column`) is what
those readers show, so a field added here appears in all of them.

Keys are stable: scripts read `test_accuracy`, `params`, `macs`, `bits_per_weight`,
`export_path`, `params_before`, `pretrain_epochs`, `mask_distance`, `compression_ratio`, ... and
a results.json written before a field existed reads with that field `None`; keys this module
does not know are kept (`extra`) and written back unchanged.

This module imports only the standard library (the collector runs without JAX).
"""
import dataclasses
import math
from typing import Any, ClassVar, TypeVar

# Units: how a value is shown (`format_value`).
TEXT, COUNT, FRACTION, BYTES, SECONDS, RATIO, TIMES, BITS, LIST = (
    'text', 'count', 'fraction', 'bytes', 'seconds', 'ratio', 'times', 'bits', 'list')


def _field(label: str = '', unit: str = TEXT, *, column: bool = False, tail: bool = False,
           factory=None):
  """A record field. label: its name in tables ('' = not in the summary table); column: a
  column of the sweep summary; tail: shown after the mode's own fields (run header)."""
  metadata = {'label': label, 'unit': unit, 'column': column, 'tail': tail}
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  return dataclasses.field(default=None, metadata=metadata)


def _jsonable(value):
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return value.to_json()
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


@dataclasses.dataclass(kw_only=True)
class Record:
  """Base of every record: JSON round trip that keeps unknown keys."""
  extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False,
                                            metadata={'label': '', 'unit': TEXT})

  def to_json(self) -> dict:
    out = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
           if f.name != 'extra'}
    out.update({k: v for k, v in self.extra.items() if k not in out})
    return out

  @classmethod
  def from_json(cls, data: dict):
    if not isinstance(data, dict):
      raise TypeError(f'{cls.__name__}: expected a JSON object, got {type(data).__name__}')
    known = {f.name for f in dataclasses.fields(cls)} - {'extra'}
    kwargs = {k: data[k] for k in known if k in data}
    kwargs = cls._convert(kwargs)
    return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})

  @classmethod
  def _convert(cls, kwargs: dict) -> dict:
    """Nested records from their JSON (subclasses with nested records override)."""
    return kwargs


@dataclasses.dataclass(kw_only=True)
class Results(Record):
  """What every run reports. Subclasses add their mode's fields."""
  MODE: ClassVar[str] = ''
  # Label overrides of inherited fields (e.g. which test accuracy `test_accuracy` is).
  LABELS: ClassVar[dict[str, str]] = {}
  # Keys of the console's last JSON line, after `mode`, `model`, `dataset`.
  HEADLINE: ClassVar[tuple[str, ...]] = ('test_accuracy', 'params', 'macs', 'epochs_run',
                                         'wall_time_s')

  mode: str | None = _field('mode', column=True)
  model: str | None = _field('model', column=True)
  dataset: str | None = _field('dataset', column=True)
  test_accuracy: float | None = _field('test accuracy', FRACTION, column=True)
  params: int | None = _field('params', COUNT, column=True)
  macs: int | None = _field('MACs per image', COUNT, column=True)
  epochs_run: int | None = _field('epochs run (all stages)', COUNT, column=True)
  warnings: list[str] = _field('warnings', LIST, factory=list)
  wall_time_s: float | None = _field('wall time', SECONDS, column=True, tail=True)
  devices: int | None = _field('devices', COUNT, tail=True)
  machine: str | None = _field('machine', tail=True)
  command: str | None = _field('', tail=True)

  def label(self, name: str) -> str:
    return self.LABELS.get(name) or _metadata(type(self), name)['label']

  def headline(self) -> dict:
    """The console's last JSON line: the numbers a user reads first."""
    keys = ('mode', 'model', 'dataset') + self.HEADLINE
    return {k: _jsonable(getattr(self, k)) for k in keys if getattr(self, k, None) is not None}

  def before_after(self) -> list[tuple[str, Any, Any, str]]:
    """(what, before, after, unit) rows of the summary block; mode-specific."""
    return []

  def summary_lines(self) -> list[str]:
    """The console's summary block: what the run produced, before → after."""
    lines = [f'{self.mode or "run"} {self.model or ""} on {self.dataset or ""}'.rstrip()]
    for what, before, after, unit in self.before_after():
      if after is None:
        continue
      if before is None:
        lines.append(f'  {what}: {format_value(after, unit)}')
      else:
        change = ''
        if unit == COUNT and before:
          change = f'  ({100.0 * (after / before - 1):+.1f}%)'
        elif unit == FRACTION:
          change = f'  ({100.0 * (after - before):+.2f} points)'
        lines.append(f'  {what}: {format_value(before, unit)} → {format_value(after, unit)}'
                     f'{change}')
    for w in self.warnings:
      lines.append(f'  warning: {w}')
    if self.wall_time_s is not None:
      lines.append(f'  wall time: {format_value(self.wall_time_s, SECONDS)}')
    return lines


@dataclasses.dataclass(kw_only=True)
class TrainResults(Results):
  MODE: ClassVar[str] = 'train'
  train_examples: int | None = _field('training examples', COUNT)
  test_examples: int | None = _field('test examples', COUNT)
  history: list[dict] = _field(factory=list)

  def before_after(self):
    return [('test accuracy', None, self.test_accuracy, FRACTION),
            ('params', None, self.params, COUNT), ('MACs per image', None, self.macs, COUNT),
            ('epochs', None, self.epochs_run, COUNT)]


@dataclasses.dataclass(kw_only=True)
class InqStep(Record):
  """One INQ step: after snapping `frozen_fraction` of the weights, `epochs` of retraining."""
  step: int | None = _field('step', COUNT)
  frozen_fraction: float | None = _field('frozen', FRACTION)
  epochs: int | None = _field('epochs', COUNT)
  test_accuracy: float | None = _field('test accuracy', FRACTION)
  history: list[dict] = _field(factory=list)


@dataclasses.dataclass(kw_only=True)
class QuantizeResults(Results):
  MODE: ClassVar[str] = 'quantize'
  LABELS: ClassVar[dict[str, str]] = {'test_accuracy': 'test accuracy, quantized'}
  HEADLINE: ClassVar[tuple[str, ...]] = (
      'test_accuracy', 'fp_test_accuracy', 'method', 'bits_per_weight', 'export_bytes',
      'compression_ratio', 'epochs_run', 'wall_time_s')
  fp_test_accuracy: float | None = _field('test accuracy, float', FRACTION, column=True)
  method: str | None = _field('target rule (quant.method)', column=True)
  bits_per_weight: float | None = _field('bits per weight', BITS, column=True)
  export_path: str | None = _field('export')
  export_bytes: int | None = _field('exported bytes', BYTES, column=True)
  fp32_bytes: int | None = _field('float32 bytes', BYTES)
  compression_ratio: float | None = _field('compression (float32 / exported bytes)', TIMES,
                                              column=True)
  final_epochs: int | None = _field('final epochs (BN and biases only)', COUNT)
  inq_steps: list[InqStep] = _field(factory=list)
  float_layers: list[str] = _field('layers kept in float32', LIST, factory=list)
  layers: list[dict] = _field(factory=list)  # quant.layer_report rows
  final_history: list[dict] = _field(factory=list)

  def __post_init__(self):
    if self.compression_ratio is None and self.export_bytes and self.fp32_bytes:
      self.compression_ratio = self.fp32_bytes / self.export_bytes

  @classmethod
  def _convert(cls, kwargs):
    kwargs['inq_steps'] = [s if isinstance(s, InqStep) else InqStep.from_json(s)
                           for s in kwargs.get('inq_steps') or []]
    return kwargs

  def before_after(self):
    return [('test accuracy', self.fp_test_accuracy, self.test_accuracy, FRACTION),
            ('bits per weight', 32.0, self.bits_per_weight, BITS),
            ('bytes', self.fp32_bytes, self.export_bytes, BYTES),
            ('compression', None, self.compression_ratio, TIMES),
            ('export', None, self.export_path, TEXT),
            ('epochs', None, self.epochs_run, COUNT)]


@dataclasses.dataclass(kw_only=True)
class PruneResults(Results):
  MODE: ClassVar[str] = 'prune'
  LABELS: ClassVar[dict[str, str]] = {'test_accuracy': 'test accuracy after fine-tuning'}
  HEADLINE: ClassVar[tuple[str, ...]] = (
      'test_accuracy', 'pruned_test_accuracy', 'pretrained_test_accuracy', 'params_before',
      'params', 'macs_before', 'macs', 'criterion', 'prune_ratio', 'pretrain_epochs',
      'epochs_run', 'wall_time_s')
  pretrained_test_accuracy: float | None = _field('test accuracy after pretraining',
                                                     FRACTION)
  pruned_test_accuracy: float | None = _field(
      'test accuracy right after shrinking (BN re-estimated)', FRACTION)
  params_before: int | None = _field('params before pruning', COUNT)
  macs_before: int | None = _field('MACs per image before pruning', COUNT)
  params_removed: float | None = _field('params removed', FRACTION)
  macs_removed: float | None = _field('MACs removed', FRACTION)
  pretrain_epochs: int | None = _field('pretraining epochs', COUNT, column=True)
  stop_rule: str | None = _field('stop rule (prune.stop_rule)')
  stop_rule_fired: bool | None = _field('stop rule fired')
  stopped_early: bool | None = _field('pretraining stopped before its last epoch')
  eb_window: int | None = _field('Early-Bird window', COUNT)
  eb_threshold: float | None = _field('Early-Bird threshold', RATIO)
  mask_distance: list[float | None] = _field(factory=list)
  mask_window_max: list[float | None] = _field(factory=list)
  mask_distance_to_final: list[float] = _field(factory=list)
  final_mask_distance: float | None = _field(
      'Hamming distance of the chosen masks (after any search) to the last pretraining '
      "epoch's masks of prune.criterion", FRACTION)
  decided_from: str | None = _field('pretraining replayed from (prune.decide_from)')
  pretrain_seed: int | None = _field(
      'seed of the pretraining (with prune.decide_from, the replayed run\'s; `seed` then drives '
      'only what follows the decision)', COUNT)
  shrunk_epoch: int | None = _field(
      'pretraining epoch whose weights were shrunk (prune.shrink_weights)', COUNT)
  train_macs: int | None = _field(
      'training compute, forward MACs x training images (pretraining + fine-tuning)', COUNT)
  criterion: str | None = _field('criterion', column=True)
  prune_ratio: float | None = _field('prune ratio', RATIO, column=True)
  selection: str | None = _field('selection')
  search: list[dict] = _field(factory=list)
  search_best: int | None = _field()
  prune_layers: list[dict] = _field(factory=list)
  layer_costs: list[dict] = _field(factory=list)
  finetune_epochs: int | None = _field('fine-tuning epochs', COUNT)
  pretrain_history: list[dict] = _field(factory=list)
  finetune_history: list[dict] = _field(factory=list)

  def before_after(self):
    return [('params', self.params_before, self.params, COUNT),
            ('MACs per image', self.macs_before, self.macs, COUNT),
            ('test accuracy, pretrained → right after shrinking', self.pretrained_test_accuracy,
             self.pruned_test_accuracy, FRACTION),
            ('test accuracy, pretrained → fine-tuned', self.pretrained_test_accuracy,
             self.test_accuracy, FRACTION),
            ('chosen', None, self.chosen_text(), TEXT)]

  def chosen_text(self) -> str | None:
    if self.criterion is None:
      return None
    text = f'{self.criterion} at ratio {format_value(self.prune_ratio, RATIO)}'
    if self.selection:
      text += f' ({self.selection})'
    if self.pretrain_epochs == 0:
      return text + ' on the starting model, without pretraining'
    if self.pretrain_epochs is not None:
      text += f' after {plural(self.pretrain_epochs, "pretraining epoch")}'
    if self.stop_rule == 'early_bird':
      text += ', Early-Bird rule ' + ('fired' if self.stop_rule_fired else 'did not fire')
    return text


@dataclasses.dataclass(kw_only=True)
class PipelineResults(Results):
  MODE: ClassVar[str] = 'pipeline'
  LABELS: ClassVar[dict[str, str]] = {'test_accuracy': 'test accuracy, pruned and quantized'}
  HEADLINE: ClassVar[tuple[str, ...]] = (
      'test_accuracy', 'finetuned_test_accuracy', 'pretrained_test_accuracy',
      'compression_ratio', 'export_bytes', 'bits_per_weight', 'params_before', 'params',
      'macs_before', 'macs', 'epochs_run', 'wall_time_s')
  pretrained_test_accuracy: float | None = _field('test accuracy after pretraining',
                                                     FRACTION)
  pruned_test_accuracy: float | None = _field(
      'test accuracy right after shrinking (BN re-estimated)', FRACTION)
  finetuned_test_accuracy: float | None = _field(
      'test accuracy after pruning and fine-tuning', FRACTION)
  params_before: int | None = _field('params before pruning', COUNT)
  macs_before: int | None = _field('MACs per image before pruning', COUNT)
  bits_per_weight: float | None = _field('bits per weight', BITS, column=True)
  export_path: str | None = _field('export')
  export_bytes: int | None = _field('exported bytes', BYTES, column=True)
  fp32_bytes_original: int | None = _field('float32 bytes of the original model', BYTES)
  compression_ratio: float | None = _field(
      'compression (original float32 / exported bytes)', TIMES, column=True)
  pretrain_epochs: int | None = _field('pretraining epochs', COUNT, column=True)
  stages: dict[str, Results] = _field(factory=dict)

  @classmethod
  def _convert(cls, kwargs):
    # A stage's record class by its name (stages written before they carried `mode`).
    kwargs['stages'] = {
        name: s if isinstance(s, Results) else
        RECORDS.get(s.get('mode') or name, Results).from_json(s)
        for name, s in (kwargs.get('stages') or {}).items() if isinstance(s, (dict, Results))}
    return kwargs

  def before_after(self):
    return [('params', self.params_before, self.params, COUNT),
            ('MACs per image', self.macs_before, self.macs, COUNT),
            ('test accuracy, pretrained → pruned, fine-tuned', self.pretrained_test_accuracy,
             self.finetuned_test_accuracy, FRACTION),
            ('test accuracy, pruned → pruned and quantized', self.finetuned_test_accuracy,
             self.test_accuracy, FRACTION),
            ('bits per weight', 32.0, self.bits_per_weight, BITS),
            ('bytes', self.fp32_bytes_original, self.export_bytes, BYTES),
            ('compression', None, self.compression_ratio, TIMES),
            ('export', None, self.export_path, TEXT)]


RECORDS: dict[str, type[Results]] = {cls.MODE: cls for cls in (TrainResults, QuantizeResults,
                                                      PruneResults, PipelineResults)}


def from_json(data: dict | Results) -> Results:
  """The record of a results.json object, by its `mode` (an unknown mode reads as Results)."""
  if isinstance(data, Results):
    return data
  if not isinstance(data, dict):
    raise TypeError(f'results: expected a JSON object, got {type(data).__name__}')
  mode = data.get('mode')
  return (RECORDS.get(mode, Results) if isinstance(mode, str) else Results).from_json(data)


T = TypeVar('T')


def recorded(value: T | None) -> T:
  """`value`, a field that every run of its mode records (the mode has written it since its
  first version: a run's test_accuracy, params and macs, a quantized run's bits_per_weight, a
  prune run's pretrain_epochs, ...), without the None of a field a results.json may lack."""
  assert value is not None, 'results.json lacks a field that its mode always records'
  return value


def result_field(results: Any, key: str):
  """results[key] of a results.json object, else the value in the last pipeline stage that has
  it, else None (how the sweep collector and its plots read a column of any mode)."""
  if results.get(key) is not None:
    return results[key]
  stages = results.get('stages') or {}
  for stage in reversed(list(stages.values()) if isinstance(stages, dict) else []):
    if isinstance(stage, dict) and stage.get(key) is not None:
      return stage[key]
  return None


def _metadata(cls, name: str) -> dict:
  for f in dataclasses.fields(cls):
    if f.name == name:
      return dict(f.metadata)
  raise KeyError(name)


def summary_rows(record: Results) -> list[tuple[str, str]]:
  """(label, formatted value) of every labelled field that is set: the mode's fields first,
  the run header last."""
  rows, tail = [], []
  for f in dataclasses.fields(record):
    label, value = record.label(f.name), getattr(record, f.name)
    if not label or value is None or value == [] or value == {}:
      continue
    (tail if f.metadata.get('tail') else rows).append((label, format_value(value,
                                                                           f.metadata['unit'])))
  return rows + tail


# Every record class, the base first (its fields lead every column list).
_CLASSES: list[type[Results]] = [Results, *RECORDS.values()]


def _column_names() -> list[str]:
  names, tail = [], []
  for cls in _CLASSES:
    for f in dataclasses.fields(cls):
      if f.metadata.get('column') and f.name not in names + tail:
        (tail if f.metadata.get('tail') else names).append(f.name)
  return names + tail


# The sweep summary's result columns (summary.md / summary.csv), in this order.
COLUMNS: tuple[str, ...] = tuple(_column_names())
UNITS: dict[str, str] = {f.name: f.metadata['unit'] for cls in _CLASSES
                         for f in dataclasses.fields(cls)}


def plural(n, word: str) -> str:
  return f'{n} {word}' + ('' if n == 1 else 's')


def format_bytes(n) -> str:
  n = float(n)
  for unit, size in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
    if n >= size:
      return f'{n / size:.3g} {unit}'
  return f'{int(n)} B'


_FORMATS = {
    FRACTION: lambda v: f'{100.0 * float(v):.2f}%',
    COUNT: lambda v: f'{int(v):,}',
    BYTES: lambda v: f'{format_bytes(v)} ({int(v):,} B)',
    SECONDS: lambda v: f'{float(v):.1f} s',
    BITS: lambda v: f'{float(v):.2f}',
    RATIO: lambda v: f'{float(v):.3g}',
    TIMES: lambda v: f'{float(v):.1f}x',
}


def format_value(value, unit: str = TEXT) -> str:
  """One style everywhere: accuracies/fractions as percent, counts with separators, bytes in
  kB/MB, ratios with an 'x' only for compression."""
  if value is None:
    return '–'
  if isinstance(value, bool):
    return 'yes' if value else 'no'
  if unit == LIST or isinstance(value, (list, tuple)):
    return ', '.join(str(v) for v in value) if value else '–'
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  formatter = _FORMATS.get(unit)
  return formatter(value) if formatter else str(value)

