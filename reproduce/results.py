r"""The research book: RESULTS.md and results/plots/ from the published run folders under results/.

  python -m reproduce.results write [--results=results] [--out=RESULTS.md] [--check] [--no_plots]
  python -m reproduce.results check_replay WORKDIR REFERENCE

Runs get into results/ with `python -m qprune.report.publish` (the library's publisher). `write`
renders RESULTS.md from every published folder and the goals of `reproduce/goals.py`, and draws
the book's figures (through `qprune.report.plots`) under results/plots/; the text is a pure
function of the folders, so a test checks that RESULTS.md is in sync. `--check` exits 1 when it
is not. `check_replay` exits 1 unless a prune run's recorded pretraining epochs are the first
ones of a published run (the cpu40 decision study replays its reference's first epochs).
"""
import argparse
import dataclasses
import os
import re
import statistics
import sys
from typing import Generic, TypeVar

from qprune import files, records
from qprune.errors import UserError
from qprune.quant.inq import DEFAULT_SCHEDULE
from qprune.records import recorded
from qprune.report import plots
from qprune.report.publish import (  # noqa: F401
  CONFIG_JSON,
  PLOTS_DIR,
  RESULTS_JSON,
  export_path,
  read_json,
  read_record,
)
from reproduce.ablation import markdown as markdown_table
from reproduce.goals import (
  DATASET_NOTES,
  DATASET_TITLES,
  FP_GOALS,
  GOALS,
  METHOD_TITLES,
  MODEL_TITLES,
  PIPELINE_GOALS,
  PRUNE_REFERENCES,
)

TARGET_ERRORS_JSON = 'target_errors.json'  # python -m reproduce.target_errors --out=...
ABLATION_JSON = 'attention_ablation.json'  # python -m reproduce.sweeps.attention_ablation


# ---------------------------------------------------------------------------------------------
# write

R = TypeVar('R', bound=records.Results)


@dataclasses.dataclass
class Run(Generic[R]):
  """One published folder: its name, its path '<group>/<name>' under results/, its results.json
  as the record of its mode, and its config.json ({} where it has none)."""
  name: str
  path: str
  results: R
  config: dict


def _of_mode(runs: list[Run], kind: type[R]) -> list[Run[R]]:
  """The runs whose record is a `kind` (the record class follows results.json's `mode`)."""
  return [run for run in runs if isinstance(run.results, kind)]


def read_runs(results_dir: str) -> dict[str, list[Run]]:
  """{'<dataset>_<model>': [run, ...]}, the runs sorted by name."""
  groups = {}
  for group in sorted(os.listdir(results_dir)):
    group_dir = os.path.join(results_dir, group)
    if group == PLOTS_DIR or not os.path.isdir(group_dir):
      continue
    runs = []
    for name in sorted(os.listdir(group_dir)):
      run_dir = os.path.join(group_dir, name)
      if not os.path.isfile(os.path.join(run_dir, RESULTS_JSON)):
        continue
      config_path = os.path.join(run_dir, CONFIG_JSON)
      runs.append(Run(name=name, path=f'{group}/{name}',
                      results=read_record(os.path.join(run_dir, RESULTS_JSON)),
                      config=read_json(config_path) if os.path.exists(config_path) else {}))
    if runs:
      groups[group] = runs
  return groups


def read_target_errors(results_dir: str) -> dict[str, dict]:
  """{'<dataset>_<model>': target_errors.json's content} where the group has one."""
  out = {}
  for group in sorted(os.listdir(results_dir)):
    path = os.path.join(results_dir, group, TARGET_ERRORS_JSON)
    if os.path.isfile(path):
      out[group] = read_json(path)
  return out


def target_error_lines(table: dict) -> list[str]:
  """Whole-network L1 error per k and rule: the totals `python -m reproduce.target_errors
  --out` wrote."""
  fmt = lambda v: '' if v is None else f'{v:.4g}'
  lines = ['### Quantization error of the target rules (full-precision weights)', '',
           f'Σ|W − Ŵ| over all conv/dense weights of `{table["model_dir"]}`, each layer with k '
           'exponents (INQ\'s rule only where a bit-width gives exactly k). Per-layer figures: '
           '`python -m reproduce.target_errors --model_dir=' + table['model_dir'] + '`. '
           'The last column takes the same bits instead of the same k: the error-optimal '
           'zero-free set ({±2^e}, `quant.zero_code=False`) with as many exponents as those bits '
           'hold.', '',
           '| k | bits | INQ\'s rule | k-means on log2 magnitudes | optimal (l1) | '
           'optimal / k-means | optimal zero-free, same bits (exponents) |',
           '|---|---|---|---|---|---|---|']
  for t in sorted(table['totals'], key=lambda t: t['k']):
    lines.append(f'| {t["k"]} | {t["bits"]} | {fmt(t["inq"])} | {fmt(t["kmeans"])} | '
                 f'{fmt(t["optimal"])} | {t["optimal"] / t["kmeans"]:.3f} | '
                 f'{fmt(t["zero_free"])} ({t["zero_free_k"]}) |')
  return lines + ['']


def _pct(x: float | None) -> str:
  return '' if x is None else f'{100 * x:.2f} %'


def _delta(x: float | None) -> str:
  return '' if x is None else f'{100 * x:+.2f}'


def _size(nbytes: int | None) -> str:
  if nbytes is None:
    return ''
  return f'{nbytes / 1e6:.2f} MB' if nbytes >= 1e6 else f'{nbytes / 1e3:.1f} kB'


def _minutes(seconds: float | None) -> str:
  return '' if seconds is None else f'{seconds / 60:.1f} min'


def target_rule(run: Run[records.QuantizeResults]) -> str:
  """'optimal (l1), k=3', 'INQ's rule, b=5', 'k-means ..., budget 2.5 bits', ..."""
  q = run.config.get('quant', {})
  method = run.results.method or q.get('method')
  title = METHOD_TITLES.get(method, str(method))
  if method == 'optimal':
    title += f' ({q.get("objective", "l1")}{"" if q.get("zero_code", True) else ", zero-free"})'
  if method == 'inq':
    return f'{title}, b={q.get("bits")}'
  if q.get('tolerance'):
    return f'{title}, L1 tolerance {q["tolerance"]}'
  if q.get('bits_budget'):
    return f'{title}, budget {q["bits_budget"]} bits'
  return f'{title}, k={q.get("k")}'


def recipe(run: Run) -> str:
  q = run.config.get('quant', {})
  floats = run.results.float_layers
  schedule = tuple(q.get('schedule') or DEFAULT_SCHEDULE)
  steps = ('' if schedule == DEFAULT_SCHEDULE else
           f'; frozen {"/".join(f"{100 * f:g}" for f in schedule)} %')
  decay = run.config.get('weight_decay')
  return (f'{q.get("retrain_epochs")} ep/step, lr {q.get("learning_rate")}'
          + (f', wd {decay:g}' if decay is not None else '')
          + f', final {q.get("final_epochs", 0)} ep' + steps
          + (f'; distilled (weight {q["distill_weight"]:g}, '
             f'T {q.get("distill_temperature", 1.0):g})'
             if q.get('distill_weight') else '')
          + (f'; float32: {", ".join(floats)}' if floats else ''))


def _max_values(results: records.QuantizeResults) -> int | None:
  return max((layer['distinct_values'] for layer in results.layers or []), default=None)


def _fp_run(runs: list[Run]) -> Run[records.TrainResults] | None:
  """The full-precision model the group's other runs start from: the one named `fp`, else the
  first trained one."""
  trained = _of_mode(runs, records.TrainResults)
  return next((run for run in trained if run.name == 'fp'), trained[0] if trained else None)


def training_recipe(run: Run) -> str:
  """'batch 128, lr 0.1 cosine, wd 0.0005[, label smoothing 0.1]' from a train run's config.json."""
  c = run.config
  parts = [f'batch {c["batch_size"]}' if 'batch_size' in c else '',
           f'lr {c["learning_rate"]:g} {c.get("lr_schedule", "")}'.rstrip()
           if 'learning_rate' in c else '',
           f'wd {c["weight_decay"]:g}' if 'weight_decay' in c else '',
           f'label smoothing {c["label_smoothing"]:g}' if c.get('label_smoothing') else '',
           f'weight average {c["ema_decay"]:g}' if c.get('ema_decay') else '']
  return ', '.join(part for part in parts if part)


def epochs_seconds(results: records.Results) -> float:
  """The seconds of every training epoch a run recorded (its history, INQ steps, final epochs,
  pretraining and fine-tuning), however many processes ran them."""
  histories = [getattr(results, name, None) or [] for name in
               ('history', 'final_history', 'pretrain_history', 'finetune_history')]
  histories += [step.history for step in getattr(results, 'inq_steps', None) or []]
  return sum(h.get('epoch_time_s', 0.0) for history in histories for h in history)


def training_time(results: records.Results) -> str:
  """The run's wall time; where its epochs alone took longer (the run was resumed, and
  wall_time_s is its last process's), both, so the table does not under-state it."""
  epochs_s = epochs_seconds(results)
  if results.wall_time_s is not None and epochs_s > results.wall_time_s:
    return (f'{_minutes(results.wall_time_s)} in its last process (resumed; its epochs '
            f'{_minutes(epochs_s)})')
  return _minutes(results.wall_time_s)


def full_precision_lines(trained: list[Run], fp: Run) -> list[str]:
  """A table of the group's full-precision runs where it has more than one (e.g. the same
  recipe in another compute dtype), each against `fp`."""
  if len(trained) < 2:
    return []
  out = [f'Full-precision runs of this model (`{fp.name}` is the one the other runs start from; '
         'times are as recorded on a machine that may have run other jobs too: compare speeds '
         'with `python -m reproduce.benchmarks.train_step`):',
         '',
         f'| run | compute dtype | epochs | recipe | test accuracy | Δ vs `{fp.name}` | time | '
         'machine |',
         '|---|---|---|---|---|---|---|---|']
  for run in trained:
    t = run.results
    out.append(f'| [{run.name}](results/{run.path}) | {run.config.get("compute_dtype", "")} | '
               f'{t.epochs_run} | {training_recipe(run)} | {_pct(t.test_accuracy)} | '
               f'{_delta(t.test_accuracy - fp.results.test_accuracy)} | '
               f'{training_time(t)} | {t.machine or ""} |')
  return out + ['']


def setting_name(run_name: str) -> str:
  """The setting a run belongs to: its folder name without a trailing `_s<seed>`."""
  return re.sub(r'_s\d+$', '', run_name)


def goal_lines(key, runs: list[Run], fp_accuracy: float) -> list[str]:
  """One line per goal of (dataset, model): met or missed, by which setting. A setting run with
  several seeds (`setting_name`) is judged by its mean, not by its best seed."""
  lines: list[str] = []
  settings: dict[str, list[Run[records.QuantizeResults]]] = {}
  for run in _of_mode(runs, records.QuantizeResults):
    settings.setdefault(setting_name(run.name), []).append(run)
  for text, bits, max_loss, min_accuracy, max_levels in GOALS.get(key, ()):
    eligible = {name: members for name, members in settings.items()
                if all(recorded(r.results.bits_per_weight) <= bits + 1e-9 and
                       (max_levels is None or (_max_values(r.results) or 0) <= max_levels)
                       for r in members)}
    if not eligible:
      lines.append(goal_line(text, 'not measured'))
      continue
    mean = {name: statistics.fmean(recorded(r.results.test_accuracy) for r in members)
            for name, members in eligible.items()}
    best = max(eligible, key=lambda name: mean[name])
    members, accuracy = eligible[best], mean[best]
    ok = ((max_loss is None or fp_accuracy - accuracy <= max_loss + 1e-12) and
          (min_accuracy is None or accuracy >= min_accuracy))
    if len(members) == 1:
      measured = f'best {_pct(accuracy)} ({_delta(accuracy - fp_accuracy)} vs FP) by `{best}`'
    else:
      std = statistics.stdev(recorded(r.results.test_accuracy) for r in members)
      each = ' / '.join(_pct(r.results.test_accuracy) for r in members)
      measured = (f'{100 * accuracy:.2f} ± {100 * std:.2f} % mean over '
                  f'{records.plural(len(members), "seed")} ({_delta(accuracy - fp_accuracy)} vs '
                  f'FP; {each}) by `{best}`')
    lines.append(goal_line(text, 'met' if ok else 'missed',
                           f', {measured} ({target_rule(members[0])})'))
  return lines


def smallest_lossless_lines(runs: list[Run], fp_accuracy: float, within: float) -> list[str]:
  """Per target rule, the fewest average bits per weight within `within` of FP."""
  lines = []
  by_method: dict[str | None, Run[records.QuantizeResults]] = {}
  for r in _of_mode(runs, records.QuantizeResults):
    if fp_accuracy - recorded(r.results.test_accuracy) <= within + 1e-12:
      method = r.results.method
      if method not in by_method or (recorded(r.results.bits_per_weight) <
                                     recorded(by_method[method].results.bits_per_weight)):
        by_method[method] = r
  for method in ('inq', 'kmeans', 'optimal'):
    best = by_method.get(method)
    title = METHOD_TITLES[method]
    if best is None:
      lines.append(f'- {title}: no run within {100 * within:.2f} % of FP')
    else:
      lines.append(f'- {title}: {best.results.bits_per_weight:.2f} bits/weight '
                   f'({_pct(best.results.test_accuracy)}, `{best.name}`)')
  return lines


def finetune_budget(run: Run[records.PruneResults]) -> tuple:
  """(fine-tuning epochs, fine-tuning learning rate) of a prune run."""
  return (run.results.finetune_epochs, run.config.get('prune', {}).get('finetune_learning_rate'))


def _numeric_budget(budget: tuple) -> tuple:
  """A fine-tuning budget as numbers for ordering (6 epochs before 10); None, unset, first."""
  epochs, lr = budget
  return (epochs or 0, lr or 0.0)


def train_budget(run: Run) -> float | None:
  """prune.train_budget of a decision run (Early-Bird's protocol), or None."""
  return run.config.get('prune', {}).get('train_budget') or None


# What a pretraining epoch records deterministically (not its times): a decision's pretraining
# is its study's where these are the same, epoch for epoch.
REPLAYED_FIELDS = ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
                   'mask_distance')


def pretraining_difference(history: list[dict], reference: list[dict]) -> str | None:
  """None where the pretraining epochs of `history` are the first ones of `reference`, field by
  field (REPLAYED_FIELDS); else the first difference, in words."""
  if len(history) > len(reference):
    return f'{len(history)} pretraining epochs recorded, the reference has {len(reference)}'
  for mine, theirs in zip(history, reference):
    for field in REPLAYED_FIELDS:
      if mine.get(field) != theirs.get(field):
        return (f'epoch {mine.get("epoch")}: {field} {mine.get(field)!r}, the reference\'s '
                f'{theirs.get(field)!r}')
  return None


def decision_studies(runs: list[Run]) -> dict[str, dict]:
  """{label: {'full': run, 'decisions': [run, ...], 'longer': {budget: [run, ...]},
  'budgeted': [run, ...]}} for the pruning decision studies in `runs`: a prune run that kept
  pretraining snapshots, the runs that decided from it (prune.decide_from: the same criterion
  and pretraining seed) with its fine-tuning budget, those fine-tuned with another budget
  (`finetune_budget`), and those trained to a fraction of a run's training compute
  (prune.train_budget), each list sorted by pretraining epochs. A decision is compared with a
  reference only where their recorded pretraining epochs are the same (`pretraining_difference`;
  a replay on another machine kind comes out otherwise): one that is not the full run's goes to
  'excluded' with the reason, except in a longer fine-tuning's group whose own reference (its
  decision after all epochs) shares its pretraining: 'other_pretraining' {budget: reason} names
  the groups whose runs are not the full run's pretraining. The label is the criterion, with
  its seed where that is not 0."""
  prunes = _of_mode(runs, records.PruneResults)

  def study_key(run: Run) -> tuple:  # a decision's own seed may differ from its pretraining's
    seed = run.results.pretrain_seed
    return (run.results.criterion, (run.config.get('seed') or 0) if seed is None else seed)

  def differs(run: Run, reference: Run) -> str | None:
    return pretraining_difference(run.results.pretrain_history,
                                  reference.results.pretrain_history)

  fulls = {study_key(r): r for r in prunes
           if r.config.get('prune', {}).get('snapshots') and not r.results.decided_from}
  studies = {}
  for key, full in fulls.items():
    decisions = [r for r in prunes if r.results.decided_from and study_key(r) == key]
    decisions.sort(key=lambda r: (train_budget(r) or 0.0, r.results.pretrain_epochs,
                                  r.results.stop_rule == 'early_bird', is_mask_control(r)))
    total = full.config.get('epochs') or recorded(full.results.pretrain_epochs)
    own_budget = finetune_budget(full)
    same: list[Run] = []
    longer: dict[tuple, list[Run]] = {}
    budgeted: list[Run] = []
    for run in decisions:
      budget = finetune_budget(run)
      if train_budget(run):
        budgeted.append(run)
      elif budget == own_budget:
        same.append(run)
      else:
        longer.setdefault(budget, []).append(run)
    excluded: list[tuple[Run, str]] = []

    def kept(group: list[Run], reference: Run) -> list[Run]:
      """`group`'s runs on `reference`'s pretraining; the others go to `excluded`."""
      out = []
      for run in group:
        why = differs(run, reference)
        if why:
          excluded.append((run, why))  # noqa: B023 (this iteration's)
        else:
          out.append(run)
      return out

    other_pretraining: dict[tuple, str] = {}
    for budget, group in list(longer.items()):
      own = next((run for run in group if recorded(run.results.pretrain_epochs) >= total and
                  not is_mask_control(run)), full)
      longer[budget] = kept(group, own)
      if own is not full and (why := differs(own, full)):
        other_pretraining[budget] = why
    criterion, seed = key
    label = criterion if not seed else f'{criterion}, seed {seed}'
    studies[label] = {'full': full, 'decisions': kept(same, full),
                      'longer': {b: g for b, g in longer.items() if g},
                      'budgeted': kept(budgeted, full),
                      'excluded': excluded, 'other_pretraining': other_pretraining}
  return studies


def study_runs(study: dict, with_excluded: bool = False) -> list[Run]:
  """Every run of one decision study: the full-training one, then the decisions per budget (and
  those left out of its tables, `with_excluded`)."""
  return [study['full']] + study['decisions'] + [
      run for budget in study['longer'].values() for run in budget] + study.get('budgeted', []) + (
      [run for run, _ in study.get('excluded', [])] if with_excluded else [])


def is_mask_control(run: Run[records.PruneResults]) -> bool:
  """Whether the run cut other weights than its decision epoch's (prune.shrink_weights=final):
  a control of the study, not a way to prune."""
  r = run.results
  return r.shrunk_epoch is not None and r.shrunk_epoch != r.pretrain_epochs


def decided_after(run: Run[records.PruneResults]) -> str:
  """'2 of 10 epochs (20 %)', plus ', Early-Bird rule' where that rule chose the epoch."""
  r = run.results
  total = run.config.get('epochs')
  text = f'{r.pretrain_epochs} of {total} epochs' if total else f'{r.pretrain_epochs} epochs'
  if total:
    text += f' ({100 * recorded(r.pretrain_epochs) / total:.0f} %)'
  if r.stop_rule == 'early_bird':
    text += ', Early-Bird rule' + ('' if r.stop_rule_fired else ' (did not fire)')
  if is_mask_control(run):
    text += f'; control: these masks cut the epoch-{r.shrunk_epoch} weights'
  return text


def _decision_rows(runs: list[Run[records.PruneResults]], reference: Run[records.PruneResults],
                   unpruned: float | None) -> list[str]:
  """The decision table, each run against `reference` (the decision after all pretraining
  epochs with the same fine-tuning)."""
  out = ['| run | decided after | mask distance to final | params | MACs | right after '
         'shrinking | fine-tuned | Δ vs full-training decision | Δ vs unpruned | training '
         'compute |',
         '|---|---|---|---|---|---|---|---|---|---|']
  final, full_compute = reference.results.test_accuracy, reference.results.train_macs
  for run in runs:
    r = run.results
    compute = r.train_macs
    distance = r.final_mask_distance
    to_final, epoch = reference.results.mask_distance_to_final, r.pretrain_epochs or 0
    if distance is None and not is_mask_control(run) and 0 < epoch <= len(to_final):
      distance = to_final[epoch - 1]  # (a replay of the reference's pretraining: its record)
    compute_text = '' if compute is None else f'{compute / 1e12:.1f} TMAC'
    if compute and full_compute:
      compute_text += f' ({compute / full_compute:.2f}x)'
    accuracy = recorded(r.test_accuracy)
    vs_unpruned = None if unpruned is None else accuracy - unpruned
    out.append(f'| [{run.name}](results/{run.path}) | {decided_after(run)} | '
               f'{"" if distance is None else format(distance, ".3f")} | '
               f'{r.params:,} | {r.macs:,} | {_pct(r.pruned_test_accuracy)} | '
               f'{_pct(accuracy)} | {_delta(accuracy - recorded(final))} | '
               f'{_delta(vs_unpruned)} | {compute_text} |')
  return out + ['']


def _decision_goal_lines(methods: list[Run[records.PruneResults]],
                         reference: Run[records.PruneResults], total: int,
                         unpruned: float | None, fp_accuracy: float | None) -> list[str]:
  """The study's goals (the project's pruning issue) for decisions with one fine-tuning budget,
  against `reference`, the decision after all `total` pretraining epochs with that budget."""
  r0 = reference.results
  final, full_compute = r0.test_accuracy, r0.train_macs
  early = [d for d in methods if recorded(d.results.pretrain_epochs) <= 0.2 * total]
  best = max(early, key=lambda d: recorded(d.results.test_accuracy), default=None)
  removed = r0.macs_removed or 0.0
  lines: list[str] = [goal_line('≥ 40 % of the MACs removed',
                                'met' if removed >= 0.4 else 'missed', f' ({_pct(removed)})')]
  if best is None:
    lines.append(goal_line('a decision at ≤ 20 % of pretraining', 'not measured'))
  else:
    b = best.results
    accuracy = recorded(b.test_accuracy)
    gap = accuracy - recorded(final)
    lines.append(goal_line('decision at ≤ 20 % of pretraining within 0.3 % of the '
                           'full-training decision', 'met' if gap >= -0.003 - 1e-12 else 'missed',
                           f' (`{best.name}`: {_delta(gap)})'))
    if unpruned is not None:
      lines.append(goal_line('... and within 1.0 % of the unpruned network after the same '
                             'pretraining',
                             'met' if accuracy - unpruned >= -0.01 - 1e-12 else 'missed',
                             f' ({_delta(accuracy - unpruned)})'))
    if fp_accuracy is not None:
      lines.append(f'- ... against the full-precision model of this table ({_pct(fp_accuracy)}): '
                   f'{_delta(accuracy - fp_accuracy)}')
    if b.train_macs and full_compute:
      ratio = b.train_macs / full_compute
      lines.append(goal_line('compute to the pruned model ≤ 1/3 of prune-after-full-training',
                             'met' if ratio <= 1 / 3 + 1e-12 else 'missed', f' ({ratio:.2f}x)'))
  rule = [d for d in methods if d.results.stop_rule == 'early_bird']
  if rule:
    d = rule[0].results
    gap = recorded(d.test_accuracy) - recorded(final)
    ok = (d.stop_rule_fired and recorded(d.pretrain_epochs) <= 0.2 * total and
          gap >= -0.003 - 1e-12)
    lines.append(goal_line('the stop rule finds such an epoch by itself', 'met' if ok else 'missed',
                           f' (epoch {d.pretrain_epochs}, {_delta(gap)})'))
  return lines


def decision_study_lines(criterion: str, study: dict, fp_accuracy: float | None) -> list[str]:
  """The tables of one decision study (one per fine-tuning budget), and their goals."""
  full: Run[records.PruneResults] = study['full']
  decisions: list[Run[records.PruneResults]] = study['decisions']
  r0 = full.results
  unpruned = r0.pretrained_test_accuracy
  final = recorded(r0.test_accuracy)
  finetune_lr = full.config.get('prune', {}).get('finetune_learning_rate')
  total = full.config.get('epochs') or recorded(r0.pretrain_epochs)
  out = [f'#### Criterion `{criterion}`: ratio {r0.prune_ratio} ({r0.selection}), '
         f'{_pct(r0.macs_removed)} of the MACs removed, {total} pretraining epochs', '',
         f'The unpruned network after all {r0.pretrain_epochs} pretraining epochs: '
         f'{_pct(unpruned)}. Every decision is fine-tuned for '
         f"{records.plural(r0.finetune_epochs or 0, 'epoch')} at lr {finetune_lr}. "
         'Training compute: forward MACs × training images, pretraining plus fine-tuning.', '']
  out += _decision_rows([full] + decisions, full, unpruned)
  methods = [d for d in decisions if not is_mask_control(d)]
  lines = _decision_goal_lines(methods, full, total, unpruned, fp_accuracy)
  controls = []
  for control in (d for d in decisions if is_mask_control(d)):
    c = control.results
    accuracy = recorded(c.test_accuracy)
    # The decision with the same masks: the same decision epoch (a fixed epoch, or the epoch the
    # Early-Bird rule fired at), preferring the control's own stop rule.
    twins = [d for d in methods if d.results.pretrain_epochs == c.pretrain_epochs]
    twin = next((d for d in twins if d.results.stop_rule == c.stop_rule),
                twins[0] if twins else None)
    text = (f'- `{control.name}`: the epoch-{c.pretrain_epochs} masks on the '
            f'epoch-{c.shrunk_epoch} weights reach {_pct(c.test_accuracy)} '
            f'({_delta(accuracy - final)} vs the full-training decision)')
    if twin is not None:
      twin_accuracy = recorded(twin.results.test_accuracy)
      text += (f'; of `{twin.name}`\'s {_delta(twin_accuracy - final)}, the mask accounts '
               f'for {_delta(accuracy - final)} and the shorter training for '
               f'{_delta(twin_accuracy - accuracy)}')
    controls.append(text)
  if controls:
    lines += ['', 'Controls (`prune.shrink_weights=final`: a decision\'s masks cut the weights '
              'after all pretraining epochs, then the same fine-tuning):', ''] + controls
  out += ['Goals:', ''] + lines + ['']
  by_budget = sorted(study['longer'].items(), key=lambda item: _numeric_budget(item[0]))
  for (epochs, lr), runs in by_budget:
    reference = next((run for run in runs if run.results.pretrain_epochs >= total and
                      not is_mask_control(run)), None)
    out += [f'Longer fine-tuning: the same decisions fine-tuned for '
            f"{records.plural(epochs or 0, 'epoch')} at lr {lr}, each against the decision "
            f'after all {total} pretraining epochs with this fine-tuning'
            + ('' if reference else ' (not run: no Δ, no goals)') + '.', '']
    out += _decision_rows(runs, reference or full, unpruned)
    if reference is None:
      continue
    other = study.get('other_pretraining', {}).get((epochs, lr))
    if other:
      out += [f'These runs decided from another run of `{full.name}`\'s pretraining, which came '
              f'out otherwise ({other}; XLA\'s CPU kernels differ between processor kinds): '
              f'they are compared with `{reference.name}` only, not with `{full.name}`.', '']
    cheaper = [run for run in runs if run.results.train_macs and r0.train_macs and not other and
               run.results.train_macs < r0.train_macs and not is_mask_control(run)]
    compared = [f'- `{run.name}`: {_pct(run.results.test_accuracy)} '
                f'({_delta(run.results.test_accuracy - final)}) at '
                f'{run.results.train_macs / r0.train_macs:.2f}x the compute'
                for run in cheaper]
    out += ['Goals:', ''] + _decision_goal_lines(
        [run for run in runs if not is_mask_control(run)], reference, total, unpruned,
        fp_accuracy) + ['']
    if compared:
      assert r0.train_macs is not None  # set: `cheaper` is empty without it
      out += [f'Against `{full.name}` ({_pct(final)}, {r0.train_macs / 1e12:.1f} TMAC: the '
              'decision after full pretraining with the first table\'s fine-tuning), at less '
              'compute:', ''] + compared + ['']
  if study.get('budgeted'):
    out += early_bird_protocol_lines(study, total)
  for run, why in study.get('excluded', []):
    out += [f'Left out: `{run.name}`, whose recorded pretraining is not `{full.name}`\'s '
            f'({why}).', '']
  return out


def early_bird_protocol_lines(study: dict, total: int) -> list[str]:
  """Early-Bird's protocol (You et al. 2020): decisions trained to a fraction of the full
  decision's training compute (prune.train_budget), each against that decision; the goal of
  one at <= 20 % of the schedule, at <= 0.5x its compute, within 0.3 point of it; the lowest
  budget at which an early decision matches it."""
  full: Run[records.PruneResults] = study['full']
  r0 = full.results
  runs: list[Run[records.PruneResults]] = study['budgeted']
  lrs = sorted({str(run.config.get('prune', {}).get('finetune_learning_rate')) for run in runs})
  full_macs = recorded(r0.train_macs)  # the budgets are fractions of it (prune.budget_of)
  out = [f"Early-Bird's protocol (You et al. 2020): each decision's pruned network trained "
         f'(lr {", ".join(lrs)}, the schedule\'s warm-up and decay) for as many whole epochs as '
         f'fit in a fraction of `{full.name}`\'s training compute ({_pct(r0.test_accuracy)}, '
         f'{full_macs / 1e12:.1f} TMAC: the decision after all {total} epochs, fine-tuned '
         f"{records.plural(r0.finetune_epochs or 0, 'epoch')}).", '',
         '| budget | ' + _decision_rows([], full, None)[0][2:],
         '|---' + _decision_rows([], full, None)[1]]
  for run in runs:
    row = _decision_rows([run], full, r0.pretrained_test_accuracy)[2]
    out.append(f'| {train_budget(run):g}x | {row[2:]}')
  out.append('')
  # An early decision's setting (decision epoch or rule, budget) may run with several seeds of
  # what follows the decision (`_s<seed>`, the same pretraining): judged by their mean.
  early: dict[str, list[Run[records.PruneResults]]] = {}
  for run in runs:
    if recorded(run.results.pretrain_epochs) <= 0.2 * total and not is_mask_control(run):
      early.setdefault(setting_name(run.name), []).append(run)

  def accuracy(setting: str) -> float:
    return statistics.fmean(recorded(run.results.test_accuracy) for run in early[setting])

  def ratio(setting: str) -> float:  # the most compute any of its seeds took
    return max(recorded(run.results.train_macs) for run in early[setting]) / full_macs

  def matches(setting: str) -> bool:
    return accuracy(setting) - recorded(r0.test_accuracy) >= -0.003 - 1e-12

  def named(setting: str) -> str:
    members = early[setting]
    if len(members) == 1:
      return f'`{members[0].name}`: {_pct(accuracy(setting))}'
    return (f'`{setting}`, mean of {records.plural(len(members), "seed")}: '
            f'{_pct(accuracy(setting))}')

  cheap = [setting for setting in early if ratio(setting) <= 0.5 + 1e-12]
  best = max(cheap, key=accuracy, default=None)
  claim = (f'a decision at ≤ 20 % of the schedule, at ≤ 0.5x the training compute of '
           f'`{full.name}`, within 0.3 % of it (or above)')
  out += ['Goals:', '', goal_line(claim, 'not measured') if best is None else goal_line(
      claim, 'met' if matches(best) else 'missed',
      f' ({named(best)}, {_delta(accuracy(best) - recorded(r0.test_accuracy))} at '
      f'{ratio(best):.2f}x)')]
  best_macs = None if best is None else recorded(early[best][0].results.macs)
  if best_macs is not None and best_macs > recorded(r0.macs):
    # The same ratio can keep channels of wider stages (the residual stream is one group across
    # stages), so an early network may be larger: equal compute is then not equal size.
    out.append(f'  - at equal training compute, not equal size: it keeps {best_macs:,} MACs '
               f'per image, `{full.name}` {recorded(r0.macs):,}')
  matching = sorted((setting for setting in early if matches(setting)), key=ratio)
  first = early[matching[0]][0] if matching else None
  claim = 'the least compute at which an early decision matches it'
  out.append(goal_line(claim, 'none', ' of the budgets run') if first is None else
             f'- {claim}: {ratio(matching[0]):.2f}x ({named(matching[0])}, budget '
             f'{train_budget(first):g}x)')
  return out + ['']


def attention_ablation_lines(table: dict) -> list[str]:
  """The attention ablation (`reproduce.ablation`'s JSON) as a RESULTS.md section."""
  c = table.get('config', {})
  units = ('conv channels and fc1 units' if c.get('model') == 'lenet5' else
           'conv channels, residual groups included' if c.get('residual') else
           'conv channels inside the blocks, the residual stream kept whole')
  criteria = ' '.join(sorted({f'`{row["criterion"]}`' for row in table.get('rows', [])}))
  return (['### Channel attention ablation', '',
           'Does channel attention improve a pruning criterion? Each base criterion (L1 norm, '
           'BN |γ|, first-order Taylor), its training-free attention variant (`attention_*`: '
           'SE-style standardize + sigmoid of the mean post-ReLU activity, times the base score) '
           'and its learned variant (`se_*`: squeeze-and-excitation gates, Hu et al. 2018, '
           'trained jointly during pretraining, their mean excitation times the base score, the '
           'gates dropped before shrinking), and random. Per seed, everything plain comes from one '
           'pretraining and everything SE-gated from one pretraining with the gates; the base '
           'criteria on the SE-gated network are the learned variants\' control (same weights, '
           'no excitation). '
           f'Masks after {c.get("pretrain_epochs")} pretraining epochs, uniform per layer '
           f'({units}), {c.get("finetune_epochs")} fine-tuning epoch(s); criteria run: '
           f'{criteria}. '
           f'Test accuracy on the full test split, mean ± std over seeds; {table.get("machine")}.',
           ''] + markdown_table(table) +
          ['', f'    {table.get("command")}', ''])


def pruned_model_lines(key, runs: list[Run[records.PruneResults]],
                       start: Run | None) -> list[str]:
  """The table of prune runs outside the decision studies (one row per run, then mean ± std
  over the seeds of each setting: the folder name without its `_s<seed>`), and the goal
  against PRUNE_REFERENCES[key] where there is one."""
  out = ['### Structured pruning of a trained model', '']
  reference = PRUNE_REFERENCES.get(key)
  if start is not None:
    out += [f'From `{start.name}` ({_pct(start.results.test_accuracy)}, '
            f'{start.results.params:,} params), no further pretraining: candidates scored on '
            'held-out training images, the best within the budget shrunk and fine-tuned.', '']
  out += ['| run | chosen candidate | params | MACs | right after shrinking | fine-tuned |',
          '|---|---|---|---|---|---|']
  settings: dict[str, list[Run[records.PruneResults]]] = {}
  for run in runs:
    settings.setdefault(setting_name(run.name), []).append(run)
    r = run.results
    out.append(f'| [{run.name}](results/{run.path}) | {r.chosen_text() or ""} | '
               f'{r.params_before:,} → {r.params:,} | {r.macs_before:,} → {r.macs:,} | '
               f'{_pct(r.pruned_test_accuracy)} | {_pct(r.test_accuracy)} |')
  out.append('')
  summaries = {}
  for name, members in settings.items():
    accuracies = [recorded(m.results.test_accuracy) for m in members]
    mean = statistics.fmean(accuracies)
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    summaries[name] = (mean, max(recorded(m.results.params) for m in members), len(members))
    out.append(f'- `{name}`: fine-tuned {100 * mean:.2f} ± {100 * std:.2f} % over '
               f'{records.plural(len(members), "seed")}')
  if reference:
    _, text, params, accuracy, goal = reference
    out += ['', f'Reference: {text}: {params:,} params, {_pct(accuracy)}.', '']
    fits = {name: v for name, v in summaries.items() if v[1] <= params}
    best = max(fits, key=lambda name: fits[name][0], default=None)
    if best is None:
      out.append(goal_line(f'≥ {_pct(goal)} at ≤ {params:,} params', 'not measured',
                           prefix='Goal '))
    else:
      mean, most, seeds = fits[best]
      out.append(goal_line(f'≥ {_pct(goal)} at ≤ {params:,} params',
                           'met' if mean >= goal - 1e-12 else 'missed',
                           f' by `{best}` ({100 * mean:.2f} % mean of '
                           f'{records.plural(seeds, "seed")}, at most {most:,} params; '
                           f'{_delta(mean - accuracy)} vs the reference)', prefix='Goal '))
  return out + ['']


def commands_block(runs: list[Run]) -> list[str]:
  """A collapsed list of the commands that made `runs`."""
  return (['<details><summary>Commands</summary>', '', '```'] +
          [f'# {run.name}\n{run.results.command or "(not recorded)"}' for run in runs] +
          ['```', '', '</details>', ''])


def starting_model(run: Run, runs: list[Run], default: Run | None) -> Run | None:
  """The full-precision run of the group that a quantized run starts from: the train run named
  like the last part of its `init_from` (results/<group>/<name>), else `default` (older runs
  recorded the workdir they started from, not the published folder)."""
  name = os.path.basename(str(run.config.get('init_from') or '').rstrip('/'))
  return next((r for r in _of_mode(runs, records.TrainResults) if r.name == name), default)


def quantized_by_start(runs: list[Run], fp: Run | None) -> list[tuple[Run | None, list[Run]]]:
  """[(starting model, its quantized runs)], the group's `fp` first: each run is compared with
  the model it was quantized from, and the goals are judged per starting model."""
  starts: dict[str | None, Run | None] = {fp.path if fp else None: fp}
  members: dict[str | None, list[Run]] = {fp.path if fp else None: []}
  for run in _of_mode(runs, records.QuantizeResults):
    start = starting_model(run, runs, fp)
    path = start.path if start else None
    starts[path] = start
    members.setdefault(path, []).append(run)
  return [(starts[path], group) for path, group in members.items() if group]


def quantization_lines(key: str, goal_key: tuple, quantized: list[Run],
                       start: Run | None, is_default: bool) -> list[str]:
  """The quantization table of the runs that start from `start`, their goals and the fewest bits
  within 0.2 % of it; the group's default starting model's section also gets the plot."""
  fp_accuracy = start.results.test_accuracy if start is not None else None
  heading = '### Power-of-two quantization'
  if not is_default and start is not None:
    heading += (f' from `{start.name}` ({_pct(fp_accuracy)}, {start.results.epochs_run} '
                f'epochs; Δ and goals against it)')
  out: list[str] = []
  quantized.sort(key=lambda r: (r.results.method, r.results.bits_per_weight, r.name))
  out += [heading, '',
          '| run | targets | recipe | bits/weight | values (max/layer) | export | '
          'compression | test accuracy | Δ vs FP | time |',
          '|---|---|---|---|---|---|---|---|---|---|']
  for q_run in quantized:
    q = q_run.results
    # From the bytes, not compression_ratio: runs older than that field do not record it.
    compression = q.fp32_bytes / q.export_bytes if q.export_bytes else None
    delta = q.test_accuracy - fp_accuracy if fp_accuracy is not None else None
    out.append(f'| [{q_run.name}](results/{q_run.path}) | {target_rule(q_run)} | '
               f'{recipe(q_run)} | {q.bits_per_weight:.2f} | {_max_values(q)} | '
               f'{_size(q.export_bytes)} | '
               f'{"" if compression is None else f"{compression:.1f}x"} | '
               f'{_pct(q.test_accuracy)} | {_delta(delta)} | '
               f'{training_time(q)} |')
  out.append('')
  if fp_accuracy is not None:
    out += ['Goals:', ''] + goal_lines(goal_key, quantized, fp_accuracy) + ['']
    out += ['Fewest bits per weight within 0.2 % of FP, per target rule:', '']
    out += smallest_lossless_lines(quantized, fp_accuracy, 0.002) + ['']
  if is_default:
    out += [f'![accuracy vs bits](results/{PLOTS_DIR}/{key}_accuracy_vs_bits.png)', '']
  out += commands_block(quantized)
  return out


class GoalLine(str):
  """A goal's line of the book, '- [Goal ]CLAIM: **VERDICT**DETAIL', that keeps its claim and
  verdict: the claims table is made from these, not parsed back out of the text."""
  claim: str
  verdict: str


def goal_line(claim: str, verdict: str, detail: str = '', *, prefix: str = '') -> GoalLine:
  """The line of a goal (`verdict`: met, missed, not measured or none)."""
  line = GoalLine(f'- {prefix}{claim}: **{verdict}**{detail}')
  line.claim, line.verdict = claim, verdict
  return line


def claims(lines: list[str], scale: str) -> list[tuple[str, str, str]]:
  """(scale, claim, verdict) of every goal line (`goal_line`) in `lines`; a decision study's
  later tables (longer fine-tuning, Early-Bird's protocol) get their heading added to the
  scale."""
  out, sub = [], ''
  for line in lines:
    if line.startswith('Longer fine-tuning: '):
      sub = '; ' + line[len('Longer fine-tuning: the same decisions '):].split(',')[0]
    elif line.startswith("Early-Bird's protocol"):
      sub = "; Early-Bird's protocol (trained to a budget)"
    if isinstance(line, GoalLine):
      out.append((scale + sub, line.claim, line.verdict))
  return out


def claims_lines(summary: list[tuple[str, str, str, str]]) -> list[str]:
  """RESULTS.md's opening table: every goal, at the scale it was measured at."""
  if not summary:
    return []
  out = ['## Claims by scale', '',
         'Every goal of the sections below, with the model, schedule and compute it was '
         'measured at (a claim holds at that scale; the sections have the runs).', '',
         '| model | scale | claim | verdict |', '|---|---|---|---|']
  out += [f'| {model} | {scale} | {claim} | **{verdict}** |'
          for model, scale, claim, verdict in summary]
  return out + ['']


def render(results_dir: str) -> str:
  """RESULTS.md's text: a pure function of the folders under `results_dir`."""
  groups = read_runs(results_dir)
  errors = read_target_errors(results_dir)
  out = ['# qprune results', '',
         'Generated by `python -m reproduce.results write` from the run folders under '
         '[`results/`](results/); do not edit by hand. Every folder holds `results.json`, '
         '`config.json`, `report.md` and the model (`model.json` + `model/` for '
         '`qprune.load_model`, or the bit-packed `model.qpq` for `qprune.load_quantized`). '
         'Accuracies are on the full test split. Quantized runs snap every conv/dense weight to '
         '0 or ±2^e with INQ\'s incremental schedule (Zhou et al. 2017) from the same '
         'full-precision model; "bits/weight" is the average code width '
         'ceil(log2(2n + 1)) for n exponents per layer (ceil(log2(2n)) for the zero-free sets '
         '{±2^e} of `quant.zero_code=False`, which have no zero code); '
         'compression is FP32 bytes over the '
         'export\'s bytes on disk.', '']
  intro = len(out)
  summary: list[tuple[str, str, str, str]] = []
  for key, runs in groups.items():
    first = runs[0].results
    dataset, model = first.dataset, first.model
    title = f'{MODEL_TITLES.get(model, model)} / {DATASET_TITLES.get(dataset, dataset)}'

    def note(lines: list[str], scale: str) -> list[str]:
      summary.extend((title, *claim) for claim in claims(lines, scale))  # noqa: B023
      return lines
    out += [f'## {MODEL_TITLES.get(model, model)} on {DATASET_TITLES.get(dataset, dataset)} '
            f'([`results/{key}`](results/{key}))', '']
    if dataset in DATASET_NOTES:
      out += [DATASET_NOTES[dataset], '']
    fp = _fp_run(runs)
    fp_accuracy = fp.results.test_accuracy if fp else None
    if fp:
      t = fp.results
      out += [f'Full precision (`{fp.name}`): **{_pct(fp_accuracy)}** after '
              f'{t.epochs_run} epochs, {t.params:,} params, '
              f'{t.macs:,} MACs per image, {training_time(t)} on '
              f'{t.machine or "an unrecorded machine"}.', '',
              f'    {t.command or "(command not recorded)"}', '']
      trained = _of_mode(runs, records.TrainResults)
      out += full_precision_lines(trained, fp)
      if (dataset, model) in FP_GOALS:
        text, goal = FP_GOALS[(dataset, model)]
        best = max(trained, key=lambda run: recorded(run.results.test_accuracy))
        reached = recorded(best.results.test_accuracy) >= goal - 1e-12
        out += note([goal_line(text, 'met' if reached else 'missed',
                               f' (best {_pct(best.results.test_accuracy)}, `{best.name}`, '
                               f'after {best.results.epochs_run} epochs)', prefix='Goal '), ''],
                    f'`{best.name}`: {best.results.epochs_run} epochs, '
                    f'{training_time(best.results)}')
    for start, quantized in quantized_by_start(runs, fp):
      scale = ('' if start is None else
               f'from `{start.name}` ({start.results.epochs_run} epochs, '
               f'{_pct(start.results.test_accuracy)}); runs of '
               f'{_minutes(statistics.median(q.results.wall_time_s or 0 for q in quantized))} '
               'median')
      out += note(quantization_lines(key, (dataset, model), quantized, start, start is fp),
                  scale)
    pipelines = _of_mode(runs, records.PipelineResults)
    if pipelines:
      out += ['### Pipeline: prune, fine-tune, quantize, export (one command)', '',
              '| run | params | MACs | pretrain epochs | after pruning | bits/weight | export | '
              'compression | test accuracy | Δ vs FP | time |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
      for p_run in pipelines:
        p = p_run.results
        delta = recorded(p.test_accuracy) - fp_accuracy if fp_accuracy is not None else None
        out.append(f'| [{p_run.name}](results/{p_run.path}) | '
                   f'{p.params_before:,} → {p.params:,} | '
                   f'{p.macs_before:,} → {p.macs:,} | {p.pretrain_epochs} | '
                   f'{_pct(p.pruned_test_accuracy)} | {p.bits_per_weight:.2f} | '
                   f'{_size(p.export_bytes)} | {p.compression_ratio:.1f}x | '
                   f'{_pct(p.test_accuracy)} | {_delta(delta)} | '
                   f'{_minutes(p.wall_time_s)} |')
      out.append('')
      for text, min_ratio, min_accuracy in PIPELINE_GOALS.get((dataset, model), ()):
        met = [m for m in pipelines if recorded(m.results.compression_ratio) >= min_ratio and
               recorded(m.results.test_accuracy) >= min_accuracy]
        out += note([goal_line(text, 'met' if met else 'missed',
                               f' by `{met[0].name}`' if met else '', prefix='Goal ')],
                    'the pipeline runs')
      out += [''] + commands_block(pipelines)
    studies = decision_studies(runs)
    if studies:
      out += ['### Structured pruning: when to decide', '',
              'One pretraining run from scratch per criterion records the masks of every epoch '
              '(`stop_rule=full`, `prune.snapshots`); the decision runs replay it '
              '(`prune.decide_from`) and take the masks after fewer epochs, or when the '
              'Early-Bird rule (You et al. 2020) finds them stable. Each decision is shrunk to '
              'a smaller dense model, its BatchNorm statistics re-estimated, and fine-tuned '
              'with the same budget.', '']
      for criterion, study in studies.items():
        full_run: Run[records.PruneResults] = study['full']
        total = full_run.config.get('epochs') or full_run.results.pretrain_epochs
        scale = (f'`{criterion}` decision study: {total} pretraining epochs, '
                 f'{(full_run.results.train_macs or 0) / 1e12:.0f} TMAC to the full-training '
                 'decision')
        out += note(decision_study_lines(criterion, study, fp_accuracy), scale)
      out += [f'![mask distance per epoch](results/{PLOTS_DIR}/{key}_prune_mask_distance.png)',
              f'![accuracy vs MACs](results/{PLOTS_DIR}/{key}_prune_accuracy_vs_macs.png)', '']
      out += commands_block([run for study in studies.values()
                             for run in study_runs(study, with_excluded=True)])
    in_studies = {run.path for study in studies.values()
                  for run in study_runs(study, with_excluded=True)}
    pruned = [run for run in _of_mode(runs, records.PruneResults) if run.path not in in_studies]
    if pruned:
      start_name = PRUNE_REFERENCES.get((dataset, model), (None,))[0]
      start = next((run for run in runs if run.name == start_name), None)
      out += note(pruned_model_lines((dataset, model), pruned, start),
                  'pruned from ' + (f'`{start.name}`' if start else 'their own pretraining'))
      out += commands_block(([start] if start else []) + pruned)
    ablation_path = os.path.join(results_dir, key, ABLATION_JSON)
    if os.path.isfile(ablation_path):
      out += attention_ablation_lines(read_json(ablation_path))
    if key in errors:
      out += target_error_lines(errors[key])
  out[intro:intro] = claims_lines(summary)
  return '\n'.join(out).rstrip() + '\n'


def plot(groups: dict[str, list[Run]], plots_dir: str):
  """Accuracy vs bits per weight per model: every run a dot, a line per target rule through its
  best run at each bit width."""
  for key, runs in groups.items():
    fp = _fp_run(runs)
    # The runs quantized from the group's `fp` only: a line per rule mixes no starting models.
    quantized = next((group for start, group in quantized_by_start(runs, fp) if start is fp), [])
    if not quantized:
      continue
    methods = {METHOD_TITLES[method]: points for method in ('inq', 'kmeans', 'optimal')
               if (points := [(r.results.bits_per_weight, 100 * r.results.test_accuracy)
                              for r in quantized if r.results.method == method])}
    plots.accuracy_vs_bits_plot(methods, os.path.join(plots_dir, f'{key}_accuracy_vs_bits.png'),
                                title=key,
                                reference=100 * recorded(fp.results.test_accuracy) if fp else None)


def plot_decision_studies(groups: dict[str, list[Run]], plots_dir: str):
  """Per model with a decision study: the masks' Hamming distance to the final ones per
  pretraining epoch, and fine-tuned accuracy vs MACs, a line per criterion."""
  for key, runs in groups.items():
    studies = decision_studies(runs)
    if not studies:
      continue
    curves = {}
    for criterion, study in studies.items():
      full: records.PruneResults = study['full'].results
      curves[criterion] = (full.mask_distance_to_final or [], full.mask_distance or [])
    plots.mask_settling_plot(curves, os.path.join(plots_dir, f'{key}_prune_mask_distance.png'),
                             title=f'{key}: when the masks settle')
    points = []
    for index, (criterion, study) in enumerate(studies.items()):
      color = f'C{index}'
      for number, run in enumerate(study_runs(study)):
        r: records.PruneResults = run.results
        longer = finetune_budget(run) != finetune_budget(study['full'])
        text = f'{criterion} @{r.pretrain_epochs}' + (
            f' (weights @{r.shrunk_epoch})' if is_mask_control(run) else '') + (
            f' ft{r.finetune_epochs}' if longer else '')
        points.append({'x': recorded(r.macs) / 1e6, 'y': 100 * recorded(r.test_accuracy),
                       'size': 18, 'color': color, 'marker': '^' if longer else 'o',
                       'label': criterion if number == 0 else None, 'text': text})
      unpruned: records.PruneResults = study['full'].results
      if unpruned.pretrained_test_accuracy is not None:
        points.append({'x': recorded(unpruned.macs_before) / 1e6,
                       'y': 100 * unpruned.pretrained_test_accuracy, 'size': 24, 'color': color,
                       'marker': 's', 'label': f'{criterion}: unpruned, same pretraining'})
    fp = _fp_run(runs)
    plots.labelled_points_plot(
        points, os.path.join(plots_dir, f'{key}_prune_accuracy_vs_macs.png'),
        xlabel='MACs per image (millions)', ylabel='test accuracy after fine-tuning (%)',
        title=f'{key}: pruned models (criterion @ decision epoch)',
        reference=((100 * recorded(fp.results.test_accuracy), f'full precision ({fp.name})')
                   if fp else None))


def check_replay(workdir: str, reference: str) -> int:
  """0 where the pretraining epochs `workdir` recorded are the first ones of the published run
  `reference` (`pretraining_difference`), else 1, with one line saying how they differ."""
  history = files.read_jsonl(os.path.join(workdir, 'pretrain', 'metrics.jsonl')) or []
  theirs = files.read_json(os.path.join(reference, RESULTS_JSON)) or {}
  if not history or not theirs.get('pretrain_history'):
    print(f'qprune: error: nothing to compare: {workdir} has no recorded pretraining epoch or '
          f'{reference} no pretrain_history in its {RESULTS_JSON}', file=sys.stderr)
    return 1
  differs = pretraining_difference(history, theirs['pretrain_history'])
  if differs:
    ours = (files.read_json(os.path.join(workdir, RESULTS_JSON)) or {}).get('machine')
    machines = (f'; it ran on {ours}, the reference on {theirs.get("machine")}'
                if ours and ours != theirs.get('machine') else '')
    print(f'qprune: error: the pretraining in {workdir} is not the one {reference} recorded '
          f'({differs}{machines}); decisions from it would not be that study\'s: replay it on '
          'the reference\'s kind of machine (XLA\'s CPU kernels differ between processor kinds) '
          'and jax version, or start a study of its own', file=sys.stderr)
    return 1
  print(f'{workdir}: pretraining epochs 1-{len(history)} are {reference}\'s')
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m reproduce.results',
                                   description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='action', required=True)
  w = sub.add_parser('write', help='render RESULTS.md (and results/plots/) from results/')
  w.add_argument('--results', default='results')
  w.add_argument('--out', default='RESULTS.md')
  w.add_argument('--check', action='store_true', help='exit 1 if --out is out of date')
  w.add_argument('--no_plots', action='store_true')
  c = sub.add_parser('check_replay', help="exit 1 unless a prune run's recorded pretraining "
                     "epochs are a published run's first ones (a replay for prune.decide_from)")
  c.add_argument('workdir', help='the prune run (its pretrain/metrics.jsonl)')
  c.add_argument('reference', help='the published run (its results.json pretrain_history)')
  args = parser.parse_args(argv)
  try:
    if args.action == 'check_replay':
      return check_replay(args.workdir, args.reference)
    text = render(args.results)
    if args.check:
      current = open(args.out).read() if os.path.exists(args.out) else ''
      if current != text:
        print(f'{args.out} is out of date: run python -m reproduce.results write',
              file=sys.stderr)
        return 1
      return 0
    files.write_text_atomic(args.out, text)
    if not args.no_plots:
      groups = read_runs(args.results)
      plot(groups, os.path.join(args.results, PLOTS_DIR))
      plot_decision_studies(groups, os.path.join(args.results, PLOTS_DIR))
    print(args.out)
    return 0
  except (UserError, OSError) as e:
    print(f'qprune: error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
