"""launch.sh --scheduler slurm: the batch as one sbatch job array, on a real one-node SLURM
cluster (tools/slurm_cluster.sh), with a task preempted (scontrol requeue) mid-run."""
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multiprocess import (  # noqa: E402,F401
  REPO_ROOT,
  RUN_FLAGS,
  clean_env,
  largest_relative_difference,
  slurm_cluster,
  wait_for,
)

LAUNCH = os.path.join(REPO_ROOT, 'launch.sh')
# Two jobs that differ only in what they print: the same model when nothing goes wrong. 64 steps
# an epoch: the preemption lands inside the second epoch.
JOBS = ('--configs', 'configs/mnist_lenet5.py', '--override', '--config.progress=False',
        '--override', '--config.progress=True',
        '--set', ' '.join(f for f in RUN_FLAGS if 'progress' not in f and 'train_subset' not in f)
        + ' --config.train_subset=4096 --config.epochs=2')
FIRST_EPOCH = '64'  # the checkpoint saved after it
PREEMPTED, UNTOUCHED = 'mnist_lenet5_progress-False_s0', 'mnist_lenet5_progress-True_s0'


def launch(*args, **kw):
  return subprocess.run([LAUNCH, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                        env=clean_env(QPRUNE_PYTHON=sys.executable), **kw)


def test_dry_run_prints_one_job_array_and_submits_nothing(tmp_path):
  out = str(tmp_path / 'batch')
  done = launch(*JOBS, '--out', out, '--scheduler', 'slurm', '--sbatch',
                '--nodes=2 --ntasks-per-node=1', '--dry-run', '--no-check')
  assert done.returncode == 0, done.stderr
  text = done.stdout
  assert '#SBATCH --array=0-1' in text and '#SBATCH --requeue' in text
  assert f'NAME={PREEMPTED}' in text and f'NAME={UNTOUCHED}' in text
  assert 'srun ' in text and 'sbatch --parsable --nodes=2 --ntasks-per-node=1' in text
  assert not os.path.exists(out)


@pytest.mark.parametrize('args,expect', [
    (('--sbatch', '--nodes=2'), '--sbatch and --wait need --scheduler slurm'),
    (('--wait',), '--sbatch and --wait need --scheduler slurm'),
    (('--scheduler', 'pbs'), "--scheduler takes local or slurm, got 'pbs'"),
    (('--scheduler', 'slurm', '--gpus', '0,1'), 'do not apply to --scheduler slurm'),
])
def test_settings_that_do_not_apply_are_refused(tmp_path, args, expect):
  done = launch(*JOBS, '--out', str(tmp_path / 'b'), *args, '--dry-run', '--no-check')
  assert done.returncode == 2 and expect in done.stderr, done.stderr


def _array_task(name: str, index: int, timeout_s: float = 60) -> str:
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    ids = subprocess.run(['squeue', '-h', '-r', '--name', name, '-o', '%i'], capture_output=True,
                         text=True).stdout.split()
    match = [i for i in ids if i.endswith(f'_{index}')]
    if match:
      return match[0]
    time.sleep(0.5)
  raise AssertionError(f'no array task {index} of {name} in squeue')


@pytest.mark.real_data
@pytest.mark.usefixtures('slurm_cluster', 'data_dir')
def test_a_batch_with_a_preempted_task_waits_for_the_requeue_and_collects(tmp_path):
  out = str(tmp_path / 'batch')
  proc = subprocess.Popen([LAUNCH, *JOBS, '--out', out, '--scheduler', 'slurm', '--wait',
                           '--no-plots'], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env=clean_env(QPRUNE_PYTHON=sys.executable))
  try:
    task = _array_task('qprune-batch', 0)
    assert wait_for(os.path.join(out, PREEMPTED, 'checkpoints', FIRST_EPOCH), 300)
    assert subprocess.run(['scontrol', 'requeue', task]).returncode == 0
    # SLURM holds a requeued job back ~2 minutes by design; once it is pending again, the test
    # lets it start at once.
    for _ in range(300):
      state = subprocess.run(['squeue', '-h', '-j', task, '-o', '%T'], capture_output=True,
                             text=True).stdout.strip()
      if state == 'PENDING':
        subprocess.run(['scontrol', 'update', f'JobId={task}', 'StartTime=now'],
                       capture_output=True)
        break
      time.sleep(0.2)
    output, _ = proc.communicate(timeout=500)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, output
  with open(os.path.join(out, 'logs', PREEMPTED + '.log')) as f:
    log = f.read()
  assert 'qprune: interrupted: SIGTERM: saved a checkpoint' in log, log[-3000:]
  assert '(restart 1,' in log and 'Resuming' in log, log[-3000:]
  with open(os.path.join(out, 'summary.md')) as f:
    summary = f.read()
  assert summary.count('| ok |') == 2, summary
  assert largest_relative_difference(os.path.join(out, UNTOUCHED),
                                     os.path.join(out, PREEMPTED)) == 0.0
