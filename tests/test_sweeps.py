"""The study drivers of reproduce/sweeps: the commands each plans, and how the runner skips,
stops and logs (with real subprocesses, no qprune run: those are the binary's own tests)."""
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from reproduce import sweeps
from reproduce.sweeps import attention_ablation, cifar10_resnet20, prune_decision, recipe_ablation


def _workdirs(steps):
  """The workdirs of the steps that are qprune runs (not those they publish)."""
  return [a.split('=', 1)[1] for s in steps if 'qprune.main' in s.argv for a in s.argv
          if a.startswith('--workdir=')]


def _published(steps):
  return [s.argv[-1].split('=', 1)[1] for s in steps if 'qprune.report.publish' in s.argv]


def test_cifar10_table_trains_fp_then_the_sweep_from_it_then_publishes():
  steps = cifar10_resnet20.plan('D', 'O', 'gpu')
  assert steps[0].argv[:4] == ('python', '-m', 'qprune.main',
                               '--config=configs/cifar10_resnet20_gpu.py')
  launch = steps[1].argv
  assert launch[:4] == ('bash', './launch.sh', '--sweep', cifar10_resnet20.SWEEP)
  assert launch[-1] == '--config.init_from=O/fp --config.data_dir=D'
  assert os.path.isfile(os.path.join(REPO_ROOT, cifar10_resnet20.SWEEP))
  assert _published(steps) == ['results/cifar10_resnet20_gpu/fp', 'results/cifar10_resnet20_gpu']
  assert steps[-1].argv == ('python', '-m', 'reproduce.results', 'write')
  cpu = cifar10_resnet20.plan('D', 'O', 'cpu')
  assert _published(cpu)[0] == 'results/cifar10_resnet20/fp'
  assert cpu[1].argv[-1].endswith('--config.quant.retrain_epochs=1')
  tiny = cifar10_resnet20.plan('D', 'O', 'tiny')
  assert len(tiny) == 2 and '--config.train_subset=512' in tiny[0].argv  # never published


def test_decision_study_plans_each_decision_from_one_pretraining():
  assert prune_decision.decision_epochs(10) == [1, 2, 5]
  assert prune_decision.decision_epochs(160) == [16, 32, 80]
  assert prune_decision.decision_epochs(4) == [1, 2]
  steps = prune_decision.plan('D', 'O', 'cpu', 10, ['l1', 'bn_gamma'], control_epochs=[2],
                              long_finetune=(6, 0.1))
  names = [w.split('/', 2)[2] for w in _workdirs(steps) if w.startswith('O/l1/')]
  assert names == ['full', 'epoch1', 'epoch2', 'epoch5', 'early_bird', 'epoch2_final_weights',
                   'full_ft6', 'epoch2_ft6', 'early_bird_ft6']
  epoch2 = next(s for s in steps if '--workdir=O/l1/epoch2' in s.argv)
  assert {'--config.prune.decide_from=O/l1/full', '--config.prune.stop_rule=fixed',
          '--config.prune.pretrain_epochs=2'} <= set(epoch2.argv)
  assert epoch2.log == 'O/logs/l1_epoch2.log'
  assert '--config.prune.finetune_learning_rate=0.1' in next(
      s for s in steps if '--workdir=O/l1/full_ft6' in s.argv).argv
  bn = next(s for s in steps if '--workdir=O/bn_gamma/full' in s.argv)
  assert '--config.prune.slimming_lambda=1e-5' in bn.argv
  published = _published(steps)
  assert published[0] == 'results/cifar10_resnet20/prune_l1_full' and len(published) == 18
  # Each criterion is published once its runs are done, before the next one starts.
  index = [i for i, s in enumerate(steps) if s.argv[-1].endswith('prune_l1_early_bird_ft6')][0]
  assert '--workdir=O/bn_gamma/full' in steps[index + 1].argv
  assert steps[-1].argv[-2:] == ('reproduce.results', 'write')
  tiny = prune_decision.plan('D', 'O', 'tiny', 4, ['l1'])
  assert not _published(tiny) and 'reproduce.results' not in tiny[-1].argv


def test_early_bird_protocol_plan_trains_early_decisions_to_budgets_of_the_reference(tmp_path):
  """cpu40: one pretraining per criterion and seed whose decision after all epochs is the
  reference; its first 20 % replayed and checked against the published reference; decisions at
  10 % and 20 % from the replay, trained to fractions of the reference's compute, the 0.35x ones
  again with other seeds; every run published as it finishes and skipped once published (the
  study goes on from a fresh checkout), the book after each criterion. Every planned command
  passes the binary's own check."""
  steps = prune_decision.protocol_plan('D', 'O', 40, ['l1', 'bn_gamma'], seed=1,
                                       early_seeds=[2])
  names = [w.split('/')[-1] for w in _workdirs(steps) if w.startswith('O/l1/seed1/')]
  assert names == ['full', 'pretrain8', 'epoch4_b0.35', 'epoch8_b0.35', 'epoch4_b0.35_s2',
                   'epoch8_b0.35_s2', 'epoch4_b0.5', 'epoch8_b0.5', 'epoch4_b1', 'epoch8_b1']
  full = steps[0].argv
  assert {'--config.epochs=40', '--config.compute_dtype=bfloat16', '--config.seed=1',
          '--config.prune.finetune_epochs=10'} <= set(full)
  reference = 'results/cifar10_resnet20_cpu40/prune_l1_seed1_full'
  assert steps[0].done == steps[1].done == (f'{reference}/results.json',)
  assert _published(steps[:2]) == [reference]
  replay, check = steps[2], steps[3]
  assert {'--workdir=O/l1/seed1/pretrain8', '--config.seed=1', '--config.prune.stop_rule=fixed',
          '--config.prune.pretrain_epochs=8',
          '--config.prune.finetune_epochs=0'} <= set(replay.argv)
  assert check.argv[1:] == ('-m', 'reproduce.results', 'check_replay', 'O/l1/seed1/pretrain8',
                            reference)
  # the replay runs while any decision of its study is unpublished
  pending = {f'results/cifar10_resnet20_cpu40/prune_l1_seed1_{name}/results.json'
             for name in names[2:]}
  assert set(replay.done) == set(check.done) == pending
  epoch8 = next(s for s in steps if '--workdir=O/l1/seed1/epoch8_b0.35' in s.argv).argv
  assert {'--config.prune.train_budget=0.35', f'--config.prune.budget_of={reference}',
          '--config.prune.decide_from=O/l1/seed1/pretrain8', '--config.prune.pretrain_epochs=8',
          '--config.prune.finetune_learning_rate=0.1', '--config.seed=1'} <= set(epoch8)
  assert not any(a.startswith('--config.prune.finetune_epochs') for a in epoch8)
  again = next(s for s in steps if '--workdir=O/l1/seed1/epoch8_b0.35_s2' in s.argv).argv
  assert {'--config.seed=2', '--config.prune.decide_from=O/l1/seed1/pretrain8',
          '--config.prune.train_budget=0.35'} <= set(again) and '--config.seed=1' not in again
  assert 'results/cifar10_resnet20_cpu40/prune_l1_seed1_epoch8_b0.35_s2' in _published(steps)
  books = [i for i, s in enumerate(steps) if s.argv[-2:] == ('reproduce.results', 'write')]
  assert len(books) == 2 and '--workdir=O/bn_gamma/seed1/full' in steps[books[0] + 1].argv
  assert '--config.prune.slimming_lambda=1e-5' in steps[books[0] + 1].argv
  plain = _published(prune_decision.protocol_plan('D', 'O', 40, ['l1']))
  assert plain[0].endswith('prune_l1_full') and plain[3].endswith('prune_l1_epoch4_b0.35_s1')
  # The commands pass the binary's check once the paths they read exist (the published
  # reference, the replay's workdir), as they do when the study reaches them.
  out = tmp_path / 'O'
  (tmp_path / reference).mkdir(parents=True)
  (out / 'l1/seed1/pretrain8').mkdir(parents=True)
  for step in steps[:books[0]]:
    if 'qprune.main' not in step.argv:
      continue
    argv = [a.replace('--workdir=O/', f'--workdir={out}/').replace('decide_from=O/',
                                                                     f'decide_from={out}/')
            for a in step.argv[1:]]
    argv[2] = f'--config={os.path.join(REPO_ROOT, prune_decision.CONFIG)}'
    checked = subprocess.run([sys.executable, *argv, '--only_check_args'], capture_output=True,
                             text=True, cwd=tmp_path)
    assert checked.returncode == 0, (step.shown(), checked.stderr)


def test_a_study_step_is_skipped_once_all_its_done_files_exist(tmp_path):
  """A step with `done` files runs until every one exists (the cpu40 replay: until every
  decision from it is published)."""
  marker = tmp_path / 'ran'
  touch = sweeps.Step(('python', '-c', f'open({str(marker)!r}, "a").write("x")'),
                      done=(str(tmp_path / 'a'), str(tmp_path / 'b')))
  (tmp_path / 'a').write_text('')
  assert sweeps.run_steps([touch]) == 0 and marker.read_text() == 'x'
  (tmp_path / 'b').write_text('')
  assert sweeps.run_steps([touch]) == 0 and marker.read_text() == 'x'


def test_protocol_seeds_are_checked_before_anything_runs(capsys):
  """--early_seeds repeating the study's own seed, or given to a kind without the protocol, is
  one line naming the way out (exit 2), before any run."""
  with pytest.raises(SystemExit) as exit_info:
    prune_decision.main(['D', 'O', 'cpu40', '--seed=1', '--early_seeds=1,3', '--dry_run'])
  assert exit_info.value.code == 2
  assert "--early_seeds=1 is the study's own --seed; give others" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    prune_decision.main(['D', 'O', 'cpu', '--early_seeds=1', '--dry_run'])
  assert '--seed and --early_seeds apply to cpu40 only' in capsys.readouterr().err


def test_recipe_ablation_changes_one_thing_per_run_and_each_passes_the_binary_check(tmp_path):
  """Each run is the 40-epoch recipe with one change, published as it finishes; every planned
  command passes the binary's own check (--only_check_args: config, inapplicable fields)."""
  steps = recipe_ablation.plan('D', 'O', 'cpu40')
  runs = [s for s in steps if 'qprune.main' in s.argv]
  assert [w.split('/')[-1] for w in _workdirs(steps)] == list(recipe_ablation.CHANGES)
  for run, (name, change) in zip(runs, recipe_ablation.CHANGES.items()):
    assert run.argv[3] == f'--config={recipe_ablation.CONFIG}' and run.argv[-len(change):] == change
    checked = subprocess.run([sys.executable, *run.argv[1:4], f'--workdir={tmp_path / name}',
                              *run.argv[5:], '--only_check_args'],
                             capture_output=True, text=True, cwd=REPO_ROOT)
    assert checked.returncode == 0, checked.stderr
  assert _published(steps)[1] == 'results/cifar10_resnet20/fp_cpu40_ema'
  assert not _published(recipe_ablation.plan('D', 'O', 'tiny'))


def test_attention_ablation_tabulates_after_each_ratio_and_skips_finished_runs():
  steps = attention_ablation.plan('D', 'O', 'cifar', seeds=[0])
  assert _workdirs(steps)[:2] == ['O/seed0/pretrain', 'O/seed0/pretrain_se']
  assert all(s.done == (os.path.join(w, 'results.json'),)
             for s, w in zip([s for s in steps if 'qprune.main' in s.argv], _workdirs(steps)))
  tables = [i for i, s in enumerate(steps) if 'reproduce.ablation' in s.argv]
  assert len(tables) == 2  # one per ratio
  first = steps[tables[0]].argv
  assert '--out=results/cifar10_resnet20/attention_ablation.json' in first and '--merge' in first
  assert ('--command=python -m reproduce.sweeps.attention_ablation DATA OUT cifar') in first
  assert steps[tables[0] + 1].argv[-1] == 'write'
  se = next(s for s in steps if '--workdir=O/seed0/se_l1_r0.5' in s.argv)
  assert {'--config.prune.se_gates=True', '--config.prune.decide_from=O/seed0/pretrain_se'} <= \
      set(se.argv)
  assert '--workdir=O/seed0/gated_l1_r0.7' in steps[tables[1] - 1].argv
  tiny = attention_ablation.plan('D', 'O', 'tiny', seeds=[3], criteria={'plain': ['l1']})
  table = next(s for s in tiny if 'reproduce.ablation' in s.argv).argv
  assert not any(a.startswith('--out=') for a in table)  # a smoke test changes no table
  assert '--config.train_subset=1400' in tiny[0].argv
  assert [w for w in _workdirs(tiny) if 'r0.6' in w][0] == 'O/seed3/l1_r0.6'


def test_runner_skips_finished_steps_and_stops_at_the_first_failure(tmp_path, capsys):
  done = tmp_path / 'done'
  done.write_text('')
  marker = tmp_path / 'ran'
  steps = [sweeps.Step(('python', '-c', 'raise SystemExit(9)'), done=(str(done),)),  # skipped
           sweeps.Step(('python', '-c', f'open({str(marker)!r}, "w").write("x"); print("hi")'),
                       log=str(tmp_path / 'logs' / 'a.log')),
           sweeps.Step(('python', '-c', 'raise SystemExit(3)'), log=str(tmp_path / 'b.log')),
           sweeps.Step(('python', '-c', f'open({str(marker)!r}, "w").write("late")'))]
  assert sweeps.run_steps(steps, python=sys.executable) == 3
  assert marker.read_text() == 'x' and (tmp_path / 'logs' / 'a.log').read_text() == 'hi\n'
  err = capsys.readouterr().err
  assert 'finished, skipped' in err and f'exit 3): see {tmp_path / "b.log"}' in err


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'reproduce.sweeps.cifar10_resnet20', 'D',
                         str(tmp_path / 'out'), 'cpu', '--dry_run'],
                        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[-1] == 'python -m reproduce.results write'
  assert not (tmp_path / 'out').exists()
