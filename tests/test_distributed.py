"""Multi-process data parallelism: a job of 2 processes (explicit JAX_* variables, or srun on a
real one-node SLURM cluster) ends with the same model as 1 process with 2 local devices and the
same global batch, on real MNIST; qprune.distributed's reading of the environment. (Signals and
dying processes: tests/test_faults_distributed.py.)
"""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multiprocess import (  # noqa: E402,F401
  REPO_ROOT,
  binary,
  clean_env,
  error_lines,
  largest_relative_difference,
  results,
  run_job,
  run_local_devices,
  slurm_cluster,
)

from qprune import distributed  # noqa: E402

EPOCHS = ('--config.epochs=2',)


@pytest.fixture(scope='module')
def one_process_two_devices(data_dir, cache_dir, tmp_path_factory):
  """The reference: 1 process x 2 devices, 2 epochs."""
  del data_dir, cache_dir
  workdir = str(tmp_path_factory.mktemp('local2') / 'w')
  status, output = run_local_devices(workdir, *EPOCHS)
  assert status == 0, output[-3000:]
  return workdir


@pytest.fixture(scope='module')
def two_processes(data_dir, cache_dir, tmp_path_factory):
  """An uninterrupted job of 2 processes (explicit variables), 2 epochs: (workdir, outputs)."""
  del data_dir, cache_dir
  workdir = str(tmp_path_factory.mktemp('job2') / 'w')
  ended = run_job(workdir, *EPOCHS)
  assert [status for status, _, _ in ended] == [0, 0], ended[0][1][-3000:] + ended[1][1][-3000:]
  return workdir, [output for _, output, _ in ended]


# ---------------------------------------------------------------------------------------------
# Reading the environment (no job is joined here).

def test_no_job_settings_is_a_single_process_run():
  assert distributed.job_settings({}) is None
  assert distributed.job_settings({'JAX_NUM_PROCESSES': '1'}) is None


def test_explicit_variables_name_the_job():
  settings = distributed.job_settings({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:8476',
                                       'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'})
  assert (settings.coordinator, settings.num_processes, settings.process_id,
          settings.cluster) == ('10.0.0.1:8476', 4, 3, 'variables')


@pytest.mark.parametrize('env,expect', [
    ({'JAX_NUM_PROCESSES': 'abc'}, r"JAX_NUM_PROCESSES='abc' is not a whole number >= 1"),
    ({'JAX_PROCESS_ID': 'x', 'JAX_NUM_PROCESSES': '2'}, r"JAX_PROCESS_ID='x' is not a whole"),
    ({'JAX_PROCESS_ID': '2', 'JAX_NUM_PROCESSES': '2'}, r'ids run from 0 to 1'),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234'},
     r'JAX_NUM_PROCESSES and JAX_PROCESS_ID not set'),
    ({'JAX_COORDINATOR_ADDRESS': 'nohostport', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '0'}, r'is not HOST:PORT'),
    ({'JAX_NUM_PROCESSES': '2'}, r'JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID not set'),
    ({'QPRUNE_JOIN_TIMEOUT': '0'}, r"QPRUNE_JOIN_TIMEOUT='0' is not a whole number >= 1"),
])
def test_bad_variables_are_refused_by_name(env, expect):
  with pytest.raises(distributed.DistributedSettingsError, match=expect):
    distributed.job_settings(env)


def test_slurm_tasks_are_detected_and_one_task_is_a_plain_run():
  slurm = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'node1', 'SLURM_PROCID': '1',
           'SLURM_LOCALID': '1'}
  settings = distributed.job_settings({**slurm, 'SLURM_NTASKS': '2'})
  assert settings.cluster == 'SLURM' and settings.process_id is None  # jax fills it in
  assert distributed.job_settings({**slurm, 'SLURM_NTASKS': '1', 'SLURM_PROCID': '0'}) is None


def test_a_failure_is_described_from_the_coordination_log():
  settings = distributed.JobSettings('h:1', 2, 0, 'variables')
  log = ('E1207 08:30:06.144705 6205 coordination_service.cc:1549] ... UNAVAILABLE: The '
         'following tasks are unhealthy (stopped sending heartbeats):\n1\nThe tasks have crashed.')
  line = distributed.describe_failure(log, settings)
  assert 'process 1 of the job stopped (no heartbeat)' in line and 'rerun' in line


# ---------------------------------------------------------------------------------------------
# Real jobs.

@pytest.mark.real_data
def test_two_processes_with_variables_equal_one_process_with_two_devices(
    one_process_two_devices, two_processes):
  workdir, outputs = two_processes
  assert largest_relative_difference(one_process_two_devices, workdir) <= 1e-5
  ours, theirs = results(workdir), results(one_process_two_devices)
  assert abs(ours['test_accuracy'] - theirs['test_accuracy']) <= 0.002
  assert ours['devices'] == 2
  assert all('Traceback' not in output and not error_lines(output) for output in outputs)
  # process 0 alone wrote the run's own files: the same ones as a single process
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(one_process_two_devices))


@pytest.mark.real_data
@pytest.mark.usefixtures('slurm_cluster')
def test_two_srun_tasks_form_one_job_equal_to_one_process_with_two_devices(
    one_process_two_devices, tmp_path):
  workdir = str(tmp_path / 'w')
  done = subprocess.run(['srun', '--ntasks=2', '--quiet', *binary(workdir, *EPOCHS)],
                        cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  assert done.stdout.count('"mode": "train"') == 2  # both tasks ran the one job to its end
  assert largest_relative_difference(one_process_two_devices, workdir) <= 1e-5
