"""Kill/resume and bad-state handling of the real binary (subprocesses, real MNIST subsets)."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT

import qprune

ARGS = ['--config.train_subset=1024', '--config.eval_subset=200', '--config.batch_size=32',
        '--config.epochs=3', '--config.progress=False']


def _cmd(workdir, data_dir, *extra, config='mnist_lenet5.py', args=ARGS):
  return [sys.executable, '-m', 'qprune.main',
          f'--config={os.path.join(REPO_ROOT, "configs", config)}',
          f'--workdir={workdir}', f'--config.data_dir={data_dir}', *args, *extra]


def _checkpoint_steps(stage_dir):
  folder = os.path.join(stage_dir, 'checkpoints')
  if not os.path.isdir(folder):
    return []
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def _kill_after_checkpoints(cmd, stage_dir, n_checkpoints, delay):
  """Starts `cmd`, SIGKILLs it `delay` s after `stage_dir` has `n_checkpoints` checkpoints."""
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while len(_checkpoint_steps(stage_dir)) < n_checkpoints and proc.poll() is None:
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.05)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def _run_until(workdir, data_dir, n_checkpoints, delay):
  _kill_after_checkpoints(_cmd(workdir, data_dir), workdir, n_checkpoints, delay)


def _params(workdir):
  _, variables = qprune.load_model(workdir)
  return jax.tree_util.tree_leaves(variables)


@pytest.mark.slow
@pytest.mark.real_data
def test_sigkill_at_several_points_then_resume_matches_an_uninterrupted_run(
    data_dir, cache_dir, tmp_path):
  straight = str(tmp_path / 'straight')
  subprocess.run(_cmd(straight, data_dir), cwd=REPO_ROOT, check=True, capture_output=True)
  killed = str(tmp_path / 'killed')
  _run_until(killed, data_dir, 1, 0.0)   # right after the first checkpoint landed
  _run_until(killed, data_dir, 2, 0.3)   # mid-epoch 3 (or mid-write)
  proc = subprocess.run(_cmd(killed, data_dir), cwd=REPO_ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for a, b in zip(_params(straight), _params(killed)):
    np.testing.assert_array_equal(a, b)
  lines = open(os.path.join(killed, 'metrics.jsonl')).read().splitlines()
  assert [json.loads(ln)['epoch'] for ln in lines] == [1, 2, 3]


@pytest.mark.real_data
def test_corrupt_checkpoint_is_a_clear_error_and_results_stay(data_dir, cache_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  _run_until(workdir, data_dir, 1, 0.0)
  step = _checkpoint_steps(workdir)[-1]
  state_dir = os.path.join(workdir, 'checkpoints', str(step), 'state')
  for root, _, names in os.walk(state_dir):  # garble every array file of the checkpoint
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.write(b'\0garbage' * 8)
  proc = subprocess.run(_cmd(workdir, data_dir), cwd=REPO_ROOT, capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'cannot restore checkpoint' in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.real_data
def test_diverging_run_stops_with_a_hint_and_keeps_its_checkpoints(data_dir, cache_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  proc = subprocess.run(_cmd(workdir, data_dir, '--config.learning_rate=1e30'), cwd=REPO_ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert 'loss became nan' in proc.stderr.lower() and 'lower learning_rate' in proc.stderr
  assert not os.path.exists(os.path.join(workdir, 'results.json'))


PIPELINE_ARGS = ['--config.train_subset=1400', '--config.eval_subset=300', '--config.batch_size=64',
                 '--config.progress=False', '--config.epochs=2', '--config.prune.eb_window=2',
                 '--config.prune.holdout=300', '--config.prune.finetune_epochs=1',
                 '--config.quant.schedule=(0.5, 0.75, 1.0)']


@pytest.mark.slow
@pytest.mark.real_data
def test_pipeline_killed_during_inq_resumes_to_the_same_export(data_dir, cache_dir, tmp_path):
  def cmd(workdir):
    return _cmd(workdir, data_dir, config='mnist_lenet5_pipeline.py', args=PIPELINE_ARGS)

  straight = str(tmp_path / 'straight')
  subprocess.run(cmd(straight), cwd=REPO_ROOT, check=True, capture_output=True)
  killed = str(tmp_path / 'killed')
  _kill_after_checkpoints(cmd(killed), os.path.join(killed, 'quantize', 'inq_step2'), 1, 0.0)
  assert os.path.exists(os.path.join(killed, 'prune', 'results.json'))
  assert not os.path.exists(os.path.join(killed, 'quantize', 'results.json'))
  proc = subprocess.run(cmd(killed), cwd=REPO_ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'stage prune: finished earlier, skipped' in proc.stdout
  a, b = (json.load(open(os.path.join(w, 'results.json'))) for w in (straight, killed))
  assert a['test_accuracy'] == b['test_accuracy'] and a['export_bytes'] == b['export_bytes']
  # (export paths are relative to the run: a copied run exports its own file)
  with open(os.path.join(straight, a['export_path']), 'rb') as f1, \
      open(os.path.join(killed, b['export_path']), 'rb') as f2:
    assert f1.read() == f2.read()


def test_remote_workdir_is_refused_and_one_process_is_primary():
  """A gs:// workdir would silently become a local folder named 'gs:': refused, with the fix.
  A single-process run is the writer of its own files (multi-host: process 0 only)."""
  from qprune.modes import common  # pylint: disable=g-import-not-at-top
  from qprune.train import parallel  # pylint: disable=g-import-not-at-top
  with pytest.raises(common.RunError, match='remote URLs are not supported; mount the bucket'):
    common.check_workdir('gs://bucket/run1')
  assert parallel.is_primary()
