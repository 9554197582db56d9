"""Helpers of the multi-process tests: run the qprune binary as the processes of one job (explicit
JAX_* variables, srun) or as one process with N local devices, on a real MNIST subset, and
compare the models they end with. Also the one-node SLURM cluster fixture (tools/slurm_cluster.sh).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import REPO_ROOT, shared_data_dir  # noqa: E402  pylint: disable=wrong-import-position

CLUSTER_SCRIPT = os.path.join(REPO_ROOT, 'tools', 'slurm_cluster.sh')
# Small enough for CI's two cores, large enough that training takes a few seconds per epoch and
# a kill can land between checkpoints: 1024 images, 16 steps of 64 per epoch.
RUN_FLAGS = ('--config.train_subset=1024', '--config.eval_subset=500', '--config.batch_size=64',
             '--config.progress=False')
JOIN_TIMEOUT_S = 20  # QPRUNE_JOIN_TIMEOUT of the tests' jobs (startup on a loaded 2-core box)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def clean_env(**extra) -> dict:
  """os.environ without any job settings (JAX_*, SLURM_*), on CPU, plus `extra`."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COORDINATOR', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
                              'SLURM_', 'XLA_FLAGS', 'OMPI_'))}
  env.update(JAX_PLATFORMS='cpu', QPRUNE_DATA_DIR=shared_data_dir(),
             QPRUNE_JOIN_TIMEOUT=str(JOIN_TIMEOUT_S), PYTHONPATH=REPO_ROOT)
  env.update({k: str(v) for k, v in extra.items()})
  return env


def binary(workdir: str, *flags: str, config: str = 'configs/mnist_lenet5.py') -> list[str]:
  return [sys.executable, '-m', 'qprune.main', f'--config={config}', f'--workdir={workdir}',
          *RUN_FLAGS, *flags]


def process_env(port: int, index: int, count: int = 2, **extra) -> dict:
  return clean_env(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=count,
                   JAX_PROCESS_ID=index, **extra)


class Job:
  """The processes of one job started with explicit variables; `wait()` -> [(status, output,
  seconds)] in process order."""

  def __init__(self, workdir: str, *flags: str, count: int = 2, env_extra=None, ids=None,
               config: str = 'configs/mnist_lenet5.py'):
    self.port = free_port()
    self.start = time.time()
    self.procs = []
    for index in (ids if ids is not None else range(count)):
      self.procs.append(subprocess.Popen(
          binary(workdir, *flags, config=config), cwd=REPO_ROOT,
          env=process_env(self.port, index, count, **(env_extra or {})),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    self.ended = [None] * len(self.procs)

  def worker(self, index: int, timeout_s: float = 60) -> int:
    """The pid of process `index`'s supervised child (the one that joins and trains)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
      children = subprocess.run(['pgrep', '-P', str(self.procs[index].pid)],
                                capture_output=True, text=True).stdout.split()
      if children:
        return int(children[0])
      time.sleep(0.1)
    raise AssertionError(f'process {index} started no worker within {timeout_s} s')

  def wait(self, timeout_s: float = 400) -> list:
    out = []
    for proc in self.procs:
      try:
        output, _ = proc.communicate(timeout=max(1, self.start + timeout_s - time.time()))
      except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        output += f'\n(test: killed after {timeout_s} s)'
      out.append((proc.returncode, output, time.time() - self.start))
    return out


def run_job(workdir: str, *flags: str, count: int = 2, **kw) -> list:
  return Job(workdir, *flags, count=count, **kw).wait()


def run_local_devices(workdir: str, *flags: str, devices: int = 2,
                      config: str = 'configs/mnist_lenet5.py'):
  """(status, output) of one process with `devices` local CPU devices."""
  done = subprocess.run(binary(workdir, *flags, config=config), cwd=REPO_ROOT,
                        env=clean_env(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}'),
                        capture_output=True, text=True, timeout=400)
  return done.returncode, done.stdout + done.stderr


def params(workdir: str) -> list:
  import jax  # pylint: disable=g-import-not-at-top

  from qprune.artifacts import load_saved_model  # pylint: disable=g-import-not-at-top
  _, variables = load_saved_model(workdir)
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(variables)]


def largest_relative_difference(a: str, b: str) -> float:
  """max over arrays of max|a - b| / max|a| between the final models of workdirs a and b."""
  pa, pb = params(a), params(b)
  assert len(pa) == len(pb)
  return max(float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x))), 1e-12))
             for x, y in zip(pa, pb))


def results(workdir: str) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def error_lines(output: str) -> list:
  return [ln for ln in output.splitlines()
          if ln.startswith(('qprune: error:', 'qprune: interrupted:'))]


def wait_for(path: str, timeout_s: float = 300) -> bool:
  deadline = time.time() + timeout_s
  while time.time() < deadline:
    if os.path.exists(path):
      return True
    time.sleep(0.2)
  return False


# ---------------------------------------------------------------------------------------------
# The one-node SLURM cluster.

def _cannot_install_reason() -> str | None:
  """Why this machine cannot get a cluster (not root and SLURM missing, no apt-get), or None."""
  if shutil.which('slurmctld') and shutil.which('sbatch'):
    return None if os.geteuid() == 0 or subprocess.run(
        [CLUSTER_SCRIPT, 'status'], capture_output=True).returncode == 0 else \
        'SLURM is installed but no cluster answers and starting one needs root'
  if os.geteuid() != 0:
    return 'SLURM (slurm-wlm, munge) is not installed and installing it needs root'
  if not shutil.which('apt-get'):
    return 'SLURM is not installed and there is no apt-get to install it'
  return None


@pytest.fixture(scope='session')
def slurm_cluster():
  """A running one-node cluster (tools/slurm_cluster.sh start; reused if one answers). Skipped
  only where it cannot be installed (not root, no apt-get); under CI (CI=true) that fails."""
  reason = _cannot_install_reason()
  if reason:
    if os.environ.get('CI'):
      pytest.fail(f'CI needs a SLURM cluster: {reason}')
    pytest.skip(reason)
  was_running = subprocess.run([CLUSTER_SCRIPT, 'status'], capture_output=True).returncode == 0
  started = subprocess.run([CLUSTER_SCRIPT, 'start'], capture_output=True, text=True)
  if started.returncode != 0:
    pytest.fail(f'tools/slurm_cluster.sh start failed ({started.returncode}):\n'
                f'{started.stderr[-2000:]}')
  yield
  # Under xdist another worker may still use a cluster this one started: left running there
  # (tools/slurm_cluster.sh stop ends it; .ci/run does).
  if not was_running and not os.environ.get('PYTEST_XDIST_WORKER'):
    subprocess.run([CLUSTER_SCRIPT, 'stop'], capture_output=True)
