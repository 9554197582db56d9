"""Fault injection for multi-process jobs: bad JAX_* settings, a job that cannot form (peers that
never start, an unreachable coordinator, a duplicate process id) and a process that dies mid-run.

Every case runs the binary (qprune/distributed.py supervises each process) and returns the
`Outcome` of the process the user watches (tests/test_faults.py's protocol: exit status, one
clear `qprune:` line, no traceback; where the job can go on, that the rerun ends bit-identical
to an uninterrupted job). `seconds` is how long that process took to end: every case is
bounded by QPRUNE_JOIN_TIMEOUT or the death of a peer, never jax's 300 s connect, never a hang
that ignores SIGTERM. `python tools/fault_table.py` collects CASES from every
tests/test_faults*.py module.
"""
import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multiprocess import (  # noqa: E402
  REPO_ROOT,
  Job,
  binary,
  clean_env,
  free_port,
  params,
  process_env,
  run_job,
  wait_for,
)
from test_faults import Env, Outcome, case_registry  # noqa: E402,F401  pylint: disable=unused-import

EPOCHS = ('--config.epochs=2',)


@dataclasses.dataclass
class TimedOutcome(Outcome):
  seconds: float | None = None  # how long the watched process took to end


CASES, SLOW, case = case_registry()


ALONE_JOIN_TIMEOUT_S = 8  # for a process that is alone by design (no peer to wait for)


def _one(tmp, env_vars: dict, expect: str, expect_status: int = 2) -> TimedOutcome:
  """The binary as one process of a job described by `env_vars`."""
  start = time.time()
  env = clean_env(QPRUNE_JOIN_TIMEOUT=ALONE_JOIN_TIMEOUT_S)
  env.update({k: str(v) for k, v in env_vars.items()})
  done = subprocess.run(binary(os.path.join(tmp, 'w'), '--config.epochs=1'), cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  return TimedOutcome(done.returncode, done.stderr + done.stdout, expect_status=expect_status,
                      expect=expect, seconds=time.time() - start)


def _variables(count, index, port=None) -> dict:
  env = {'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port or free_port()}'}
  if count is not None:
    env['JAX_NUM_PROCESSES'] = count
  if index is not None:
    env['JAX_PROCESS_ID'] = index
  return env


# ---------------------------------------------------------------------------------------------
# Settings that cannot form a job: refused at once, exit 2.

@case('job_num_processes_not_a_number')
def _(env, tmp):
  return _one(tmp, _variables('abc', 0), r"JAX_NUM_PROCESSES='abc' is not a whole number")


@case('job_process_id_not_a_number')
def _(env, tmp):
  return _one(tmp, _variables(2, 'x'), r"JAX_PROCESS_ID='x' is not a whole number")


@case('job_process_id_not_below_count')
def _(env, tmp):
  return _one(tmp, _variables(2, 2), r'JAX_PROCESS_ID=2 but JAX_NUM_PROCESSES=2')


@case('job_coordinator_without_id')
def _(env, tmp):
  return _one(tmp, _variables(None, None), r'JAX_NUM_PROCESSES and JAX_PROCESS_ID not set')


@case('job_bad_join_timeout')
def _(env, tmp):
  return _one(tmp, {**_variables(2, 0), 'QPRUNE_JOIN_TIMEOUT': 'soon'},
              r"QPRUNE_JOIN_TIMEOUT='soon' is not a whole number")


# ---------------------------------------------------------------------------------------------
# A job that cannot form: one line within QPRUNE_JOIN_TIMEOUT, exit 2.

@case('job_peers_never_start', slow=True)
def _(env, tmp):
  return _one(tmp, _variables(2, 0), r'process 0 of 2 .* could not join the job within '
              rf'{ALONE_JOIN_TIMEOUT_S} s: the other processes never connected')


@case('job_coordinator_unreachable', slow=True)
def _(env, tmp):
  return _one(tmp, _variables(2, 1), r'process 1 of 2 .* could not join the job within '
              rf'{ALONE_JOIN_TIMEOUT_S} s: the coordinator \(process 0\) is unreachable')


@case('job_duplicate_process_id', slow=True)
def _(env, tmp):
  """Two processes with JAX_PROCESS_ID=0: the second finds the coordinator's port taken."""
  port = free_port()
  first = subprocess.Popen(binary(os.path.join(tmp, 'a'), '--config.epochs=1'), cwd=REPO_ROOT,
                           env=process_env(port, 0), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  try:
    time.sleep(1.0)
    deadline = time.time() + 60  # until the first process serves the port
    while time.time() < deadline and subprocess.run(
        ['bash', '-c', f'exec 3<>/dev/tcp/127.0.0.1/{port}'], capture_output=True).returncode:
      time.sleep(0.2)
    outcome = _one(tmp, _variables(2, 0, port), r'port \d+ of JAX_COORDINATOR_ADDRESS is '
                   r'already in use on this host: another process 0')
  finally:
    first.send_signal(signal.SIGTERM)  # the first would wait for its peer until the timeout
    first.communicate(timeout=120)
  return outcome


# ---------------------------------------------------------------------------------------------
# A process dies mid-run: the other ends with one line at once (exit 3), the rerun resumes.

def _reference(env: Env) -> str:
  """An uninterrupted 2-process job (the reference of every resume), built once per Env."""
  path = getattr(env, '_two_process_job', None)
  if path is None:
    path = os.path.join(env.root, 'two_process_job')
    ended = run_job(path, *EPOCHS)
    assert [s for s, _, _ in ended] == [0, 0], ended[0][1][-3000:]
    env._two_process_job = path  # pylint: disable=protected-access
  return path


def _same_params(a: str, b: str) -> bool:
  import numpy as np  # pylint: disable=g-import-not-at-top
  pa, pb = params(a), params(b)
  return len(pa) == len(pb) and all(np.array_equal(x, y) for x, y in zip(pa, pb))


def _kill_mid_run(victim: int):
  def run_case(env, tmp):
    reference = _reference(env)
    workdir = os.path.join(tmp, 'w')
    job = Job(workdir, *EPOCHS)
    worker = job.worker(victim)
    assert wait_for(os.path.join(workdir, 'checkpoints', '16'))  # after the first epoch's save
    killed_at = time.time()
    os.kill(worker, signal.SIGKILL)
    ended = job.wait()
    survivor = 1 - victim
    status, output, _ = ended[survivor]
    seconds = max(0.0, job.start + ended[survivor][2] - killed_at)
    rerun = run_job(workdir, *EPOCHS)
    resumed = all(s == 0 for s, _, _ in rerun) and 'Resuming' in rerun[0][1]
    return TimedOutcome(status, output, expect_status=3,
                        expect=r'(another process of the job stopped|stopped \(no heartbeat\)|'
                               r'lost the coordinator)',
                        resumed_identical=resumed and _same_params(reference, workdir),
                        seconds=seconds)
  return run_case


case('job_worker_killed', slow=True)(_kill_mid_run(1))
case('job_coordinator_killed', slow=True)(_kill_mid_run(0))


@case('job_sigterm_one_process', slow=True)
def _(env, tmp):
  """SIGTERM to one process only (a user's kill): every process stops at the same step with its
  checkpoint saved (exit 143), and the rerun resumes bit-identical."""
  reference = _reference(env)
  workdir = os.path.join(tmp, 'w')
  job = Job(workdir, *EPOCHS)
  assert wait_for(os.path.join(workdir, 'checkpoints', '16'))
  signalled = time.time()
  job.procs[1].send_signal(signal.SIGTERM)
  ended = job.wait()
  status, output, _ = ended[0]  # the process that got no signal
  rerun = run_job(workdir, *EPOCHS)
  resumed = all(s == 0 for s, _, _ in rerun) and _same_params(reference, workdir)
  other_ok = ended[1][0] == 143
  return TimedOutcome(status if other_ok else -1, output, expect_status=143,
                      expect=r'interrupted: SIGTERM: saved a checkpoint',
                      resumed_identical=resumed,
                      seconds=job.start + ended[0][2] - signalled)


# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def env(data_dir, cache_dir, tmp_path_factory):
  del data_dir, cache_dir
  return Env(str(tmp_path_factory.mktemp('faults_distributed')))


@pytest.mark.real_data
@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_fault(env, tmp_path, name):
  outcome = CASES[name](env, str(tmp_path))
  assert not outcome.problems(), (outcome.problems(), outcome.output[-3000:])
  assert outcome.seconds < 150, f'took {outcome.seconds:.0f} s to end'


def test_join_is_bounded_and_interruptible():
  """A process waiting for its peers ends on SIGTERM with one line (jax's own connect ignores
  it for 5 minutes)."""
  proc = subprocess.Popen(binary('/nonexistent/never-created', '--config.epochs=1'),
                          cwd=REPO_ROOT, env=process_env(free_port(), 0, QPRUNE_JOIN_TIMEOUT=300),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 60  # until it supervises its worker, which waits in the join
  while time.time() < deadline and not subprocess.run(['pgrep', '-P', str(proc.pid)],
                                                      capture_output=True).stdout:
    time.sleep(0.2)
  time.sleep(3)
  start = time.time()
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=60)
  assert time.time() - start < 30
  assert proc.returncode == 143, output
  lines = [ln for ln in output.splitlines() if ln.startswith('qprune: ')]
  assert len(lines) == 1 and lines[0].startswith('qprune: interrupted: SIGTERM'), output
