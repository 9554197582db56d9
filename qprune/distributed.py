r"""Joining a multi-process job (`jax.distributed`), with bounded waits and one line per failure.

A run spans several processes (one per host, or one per GPU) when the environment says so:

* a cluster jax detects by itself (SLURM tasks of one job step, Open MPI, Cloud TPU pods,
  Kubernetes jobs) with more than one process: joined with no variables at all;
* explicit variables: JAX_COORDINATOR_ADDRESS=HOST:PORT (process 0's address, reachable by all),
  JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0..N-1 on each process (they override what a cluster
  would detect).

Every process runs the same command on the same workdir (storage every host sees). Bad settings
end with one `qprune: error:` line and exit status 2 before anything starts.

Bounded waits (seconds, environment):
  QPRUNE_JOIN_TIMEOUT (default 120)      how long a process waits for all the others to join;
  QPRUNE_HEARTBEAT_TIMEOUT (default 60)  how long a silent process counts as alive;
  QPRUNE_SHUTDOWN_TIMEOUT (default 300)  how long a finished process waits for the others.

Why a supervisor: jax's coordination client ends a process it considers failed (a peer that
died, a duplicate process id, a lost coordinator) with a C++ check failure (abort, a stack
trace, exit 134) that no Python code can catch, and it ignores SIGTERM/SIGINT while it waits to
connect. So the binary, once it knows it will join a job, runs the job in a child process
(`python -m qprune.distributed --child ...`): the child's C++ log goes into a pipe the parent
reads, its Python output goes to the terminal as usual. When the child ends by such an abort the
parent prints one line (which process failed and that the rerun resumes) and exits 3; a
failing child exits at once (skipping jax's shutdown barrier, which would wait for peers that
are themselves waiting for it), so the others' next collective fails and they end too.

Exit status: 2 bad settings or a failed join; 3 another process of the job failed (rerun the
same command on every process to resume from the last checkpoint); otherwise the run's own.
"""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from qprune.errors import UserError

JOIN_TIMEOUT_ENV, HEARTBEAT_ENV = 'QPRUNE_JOIN_TIMEOUT', 'QPRUNE_HEARTBEAT_TIMEOUT'
SHUTDOWN_ENV = 'QPRUNE_SHUTDOWN_TIMEOUT'
DEFAULT_JOIN_TIMEOUT_S, DEFAULT_HEARTBEAT_S, DEFAULT_SHUTDOWN_S = 120, 60, 300
_CHILD_ENV = 'QPRUNE_JOB_CHILD'  # set in the supervised child: the fd of the real stderr
EXIT_BAD_SETTINGS, EXIT_PEER_FAILED = 2, 3


class DistributedSettingsError(UserError):
  """JAX_* variables or QPRUNE_*_TIMEOUT values that cannot form a job."""


class JoinError(UserError):
  """The processes of a job did not all join in time (or the coordinator refused this one)."""


class PeerFailedError(Exception):
  """Another process of the job stopped (a collective failed): this one stops too."""


@dataclasses.dataclass(frozen=True)
class JobSettings:
  """How this process joins: what the environment named, or None for jax's cluster detection."""
  coordinator: str | None
  num_processes: int | None
  process_id: int | None
  cluster: str  # 'variables' or the cluster jax detected ('SLURM', 'Open MPI', ...)

  def process_id_now(self) -> int:
    """This process's id (the detected one once joined)."""
    if self.process_id is not None:
      return self.process_id
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index()

  def describe(self) -> str:
    count = self.num_processes
    index = self.process_id
    if _JOINED is not None:
      import jax  # pylint: disable=g-import-not-at-top
      count, index = jax.process_count(), jax.process_index()
    who = f'process {index} of {count}' if index is not None and count is not None else \
        'a process'
    where = f', coordinator {self.coordinator}' if self.coordinator else ''
    return f'{who} ({self.cluster}{where})'


def _int_variable(env, name: str, minimum: int) -> int | None:
  text = env.get(name, '').strip()
  if not text:
    return None
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or value < minimum:
    raise DistributedSettingsError(f'{name}={text!r} is not a whole number >= {minimum}')
  return value


def timeout_s(env, name: str, default: int) -> int:
  """A QPRUNE_*_TIMEOUT variable in whole seconds (>= 1), or its default."""
  value = _int_variable(env, name, 1)
  return default if value is None else value


_CLUSTER_NAMES = {'SlurmCluster': 'SLURM', 'OmpiCluster': 'Open MPI', 'GkeTpuCluster': 'TPU (GKE)',
                  'GceTpuCluster': 'TPU pod', 'K8sCluster': 'Kubernetes'}


_SLURM_STEP = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID')  # what jax's SLURM detection requires: a task of an srun step


def detected_cluster(env=None):
  """(name, process count) of the cluster jax would join by itself, or None.

  SLURM from its variables (the tasks of an srun step; a batch script outside srun is one
  process); every other cluster through jax's own registry (its automatic methods, not the
  opt-in mpi4py), so whatever jax supports is supported here."""
  env = os.environ if env is None else env
  if all(k in env for k in _SLURM_STEP):
    return 'SLURM', int(env.get('SLURM_STEP_NUM_TASKS') or env['SLURM_NTASKS'])
  if env is not os.environ:
    return None  # the other detectors read os.environ (or metadata servers) themselves
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    for cluster in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
      if cluster.opt_in_only_method or cluster.__name__ == 'SlurmCluster':
        continue
      if cluster.is_env_present():
        return _CLUSTER_NAMES.get(cluster.__name__, cluster.__name__), cluster.get_process_count()
  except Exception as e:  # pylint: disable=broad-except  # a detector that fails
    raise DistributedSettingsError(f'a cluster was detected but cannot be read ({type(e).__name__}'
                                   f': {e}); set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and '
                                   'JAX_PROCESS_ID instead') from None
  return None


def job_settings(env=None) -> JobSettings | None:
  """The job this process is to join, or None (a single-process run).

  DistributedSettingsError for variables that cannot form a job: a count or id that is not a
  whole number, an id >= the count, a coordinator (or a count > 1) without the rest outside a
  cluster jax detects."""
  env = os.environ if env is None else env
  count = _int_variable(env, 'JAX_NUM_PROCESSES', 1)
  index = _int_variable(env, 'JAX_PROCESS_ID', 0)
  coordinator = env.get('JAX_COORDINATOR_ADDRESS', '').strip() or None
  for name in (JOIN_TIMEOUT_ENV, HEARTBEAT_ENV, SHUTDOWN_ENV):
    timeout_s(env, name, 1)  # a bad value is refused now, not after the join
  if coordinator is not None:
    host, _, port = coordinator.rpartition(':')
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise DistributedSettingsError(f'JAX_COORDINATOR_ADDRESS={coordinator!r} is not HOST:PORT '
                                     '(process 0\'s address and a free port, e.g. 10.0.0.1:8476)')
  if count is not None and index is not None and index >= count:
    raise DistributedSettingsError(f'JAX_PROCESS_ID={index} but JAX_NUM_PROCESSES={count}: ids '
                                   f'run from 0 to {count - 1}')
  explicit = coordinator is not None or index is not None or (count or 1) > 1
  if explicit and coordinator is not None and count is not None and index is not None:
    return JobSettings(coordinator, count, index, 'variables') if count > 1 else None
  found = detected_cluster(env)  # fills in what the variables leave out
  if found is not None:
    name, detected_count = found
    detected_count = count if count is not None else int(detected_count)
    if index is not None and index >= detected_count:
      raise DistributedSettingsError(f'JAX_PROCESS_ID={index} but the job has {detected_count} '
                                     'processes')
    if detected_count <= 1:
      return None  # e.g. a one-task SLURM job: a plain run
    return JobSettings(coordinator, count, index, name)
  if not explicit:
    return None
  missing = [name for name, value in (('JAX_COORDINATOR_ADDRESS', coordinator),
                                      ('JAX_NUM_PROCESSES', count), ('JAX_PROCESS_ID', index))
             if value is None]
  raise DistributedSettingsError(
      f'{" and ".join(missing)} not set: outside a cluster jax detects (SLURM, Open MPI, TPU '
      'pods, Kubernetes), a multi-process job needs JAX_COORDINATOR_ADDRESS=HOST:PORT, '
      'JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0..N-1 on every process')


# ---------------------------------------------------------------------------------------------
# Joining.

_JOINED: JobSettings | None = None


def joined() -> JobSettings | None:
  """The job this process joined, or None."""
  return _JOINED


def _running_as_binary() -> bool:
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  return getattr(spec, 'name', None) in ('qprune.main', 'qprune.distributed')


def join(env=None) -> JobSettings | None:
  """Joins the job the environment describes (a no-op for a single process, or when joined).

  In the binary (`python -m qprune.main`), this first hands the run to a supervised child and
  exits with its status (see the module docstring); the child joins here. In a library call
  it joins directly. Raises DistributedSettingsError / JoinError (one line, exit 2)."""
  global _JOINED
  if _JOINED is not None:
    return _JOINED
  env = os.environ if env is None else env
  settings = job_settings(env)
  if settings is None:
    return None
  if _CHILD_ENV not in env and _running_as_binary():
    sys.exit(supervise(sys.argv[1:], settings))
  _initialize(settings, env)
  _JOINED = settings
  _watch_failures(settings)
  return settings


def _initialize(settings: JobSettings, env):
  """jax.distributed.initialize in a thread, waited for here: the wait is bounded by
  QPRUNE_JOIN_TIMEOUT and Ctrl-C/SIGTERM end it (jax's own connect blocks both for 5 minutes,
  then aborts)."""
  import jax  # pylint: disable=g-import-not-at-top
  join_s = timeout_s(env, JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT_S)
  kwargs = dict(coordinator_address=settings.coordinator, num_processes=settings.num_processes,
                process_id=settings.process_id,
                # jax's own limit after ours: ours fires first and ends the process cleanly.
                initialization_timeout=join_s + 60,
                heartbeat_timeout_seconds=timeout_s(env, HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S),
                shutdown_timeout_seconds=timeout_s(env, SHUTDOWN_ENV, DEFAULT_SHUTDOWN_S))
  if settings.cluster == 'variables':
    kwargs['cluster_detection_method'] = 'deactivate'
    if settings.process_id == 0:
      _check_port_free(settings)
  # jax's preemption service would install a C++ SIGTERM handler over qprune's: the training
  # loop agrees on its own stop step (any_signal), for SIGINT too.
  jax.config.update('jax_enable_preemption_service', False)
  failure = []
  done = threading.Event()

  def connect():
    try:
      jax.distributed.initialize(**kwargs)
    except BaseException as e:  # pylint: disable=broad-except
      failure.append(e)
    finally:
      done.set()

  thread = threading.Thread(target=connect, name='qprune-join', daemon=True)
  start = time.time()
  thread.start()
  if not done.wait(join_s):
    raise JoinError(f'{settings.describe()} could not join the job within {join_s} s: '
                    f'{_join_hint(settings)} (QPRUNE_JOIN_TIMEOUT sets the wait)')
  if failure:
    e = failure[0]
    raise JoinError(f'{settings.describe()} could not join the job after '
                    f'{time.time() - start:.0f} s: {type(e).__name__}: '
                    f'{" ".join(str(e).split())[:300]}') from None


_FAILED_KEY = 'qprune/failed'
_WATCH_S = 0.5  # how often each process looks for another's announced failure
_FAILING = threading.Event()  # this process is ending in failure (its watcher stays quiet)


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def _try_get(key: str) -> str | None:
  """The value of `key` in the coordination service's store, or None (never waits)."""
  client = _client()
  if client is None:
    raise RuntimeError('not joined')
  try:
    return client.key_value_try_get(key)
  except Exception as e:  # pylint: disable=broad-except
    if 'NOT_FOUND' in str(e) or 'not found' in str(e).lower():
      return None
    raise


def announce_failure(reason: str):
  """Tells the other processes this one is ending in failure, so that they end at once too
  (instead of when their next collective or the heartbeat times out)."""
  _FAILING.set()
  if _JOINED is None:
    return
  try:
    index = _JOINED.process_id_now()
    _client().key_value_set(_FAILED_KEY, json.dumps({'process': index, 'reason': reason[:200]}))
  except Exception:  # pylint: disable=broad-except  # the coordinator may be gone already
    return
  if index == 0:  # the coordination service lives in this process: keep it up until the others
    time.sleep(2 * _WATCH_S)  # have read why (else they only learn that it vanished)


def _watch_failures(settings: JobSettings):
  """A thread that ends this process with one line when another announces its failure. It asks
  in short waits, so that it is never inside a call when jax shuts its client down at exit."""
  stop = threading.Event()
  import atexit  # pylint: disable=g-import-not-at-top
  atexit.register(stop.set)  # registered after jax's shutdown hook, so it runs before it

  def watch():
    while not stop.is_set():
      try:
        value = _try_get(_FAILED_KEY)
      except Exception:  # pylint: disable=broad-except  # the coordinator may be gone
        return
      if value is None:
        stop.wait(_WATCH_S)
        continue
      if _FAILING.is_set() or stop.is_set():
        return
      _FAILING.set()
      failed = json.loads(value)
      print(f'qprune: error: {settings.describe()}: process {failed["process"]} of the job '
            f'failed ({failed["reason"]}); this process stops too: fix that and rerun the job '
            '(checkpoints are kept)', file=sys.stderr, flush=True)
      exit_now(EXIT_PEER_FAILED)

  threading.Thread(target=watch, name='qprune-failure-watch', daemon=True).start()


def _check_port_free(settings: JobSettings):
  """Process 0 serves the job on the coordinator's port: if that port is taken here (a second
  process 0, or another program), say so now instead of timing out."""
  import errno  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  assert settings.coordinator is not None, "cluster 'variables' names the coordinator"
  port = int(settings.coordinator.rpartition(':')[2])
  for family, address in ((socket.AF_INET6, '::'), (socket.AF_INET, '0.0.0.0')):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, port))
      return
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise JoinError(f'{settings.describe()}: port {port} of JAX_COORDINATOR_ADDRESS is '
                        'already in use on this host: another process 0 (two processes with '
                        'JAX_PROCESS_ID=0?) or another program holds it; give each process its '
                        'own id, or pick a free port') from None
      continue  # no IPv6 here: try IPv4


def _join_hint(settings: JobSettings) -> str:
  if settings.process_id == 0:
    return ('the other processes never connected (are they started, with the same '
            'JAX_NUM_PROCESSES and this JAX_COORDINATOR_ADDRESS, and can they reach it?)')
  return ('the coordinator (process 0) is unreachable or not all processes started (is process '
          '0 running, is the address reachable from here and the port free?)')


def exit_now(status: int):
  """Ends this process at once (no atexit: jax's shutdown barrier would wait for peers that are
  themselves blocked waiting for this one)."""
  try:
    sys.stdout.flush()
    sys.stderr.flush()
  finally:
    os._exit(status)  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------------
# Collective helpers (each a no-op / identity in a single-process run).


def process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def is_primary() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def barrier(name: str):
  """All processes wait here for each other (bounded by the heartbeat: a dead peer fails it)."""
  if process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'qprune:{name}')


_SHARED = {'count': 0}


def share(value, name: str = 'value'):
  """Process 0's `value` (JSON-able) on every process, through the coordination service's
  key-value store (no device computation)."""
  if process_count() <= 1:
    return value
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  assert client is not None, 'more than one process: jax.distributed is initialized'
  _SHARED['count'] += 1
  key = f'qprune/share/{name}/{_SHARED["count"]}'
  if is_primary():
    client.key_value_set(key, json.dumps(value))
    return value
  wait_ms = 1000 * timeout_s(os.environ, JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT_S)
  return json.loads(client.blocking_key_value_get(key, wait_ms))


def agreed_max(value: int) -> int:
  """The largest of every process's `value` (a collective: every process must call it)."""
  if process_count() <= 1:
    return int(value)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.max(multihost_utils.process_allgather(np.asarray([int(value)], np.int32))))


# ---------------------------------------------------------------------------------------------
# The supervisor (parent) and the child's exit policy.

_CPP_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ')


def collective_failure(e: BaseException) -> bool:
  """Whether `e` is a collective or coordination failure (a peer died or hung)."""
  text = f'{type(e).__name__}: {e}'
  return any(needle in text for needle in (
      'Gloo', 'gloo', 'Connection reset by peer', 'CoordinationService', 'coordination service',
      'Barrier timed out', 'DEADLINE_EXCEEDED', 'heartbeat', 'NCCL', 'UNAVAILABLE'))


def describe_failure(log: str, settings: JobSettings) -> str:
  """One line from the child's C++ log: what jax's coordination service said ended the job."""
  me = settings.describe()
  dead = re.search(r'stopped sending heartbeats\):\s*([\d,\s]+)', log) or re.search(
      r'Task (\d+) heartbeat timeout', log)
  if dead:
    ids = ', '.join(dead.group(1).split())
    return (f'{me}: process {ids} of the job stopped (no heartbeat): this process stops too; '
            'checkpoints are kept, rerun the job to resume')
  if re.search(r'[Dd]uplicate|already (been )?registered|re-?register', log):
    return (f'{me}: another process joined with the same process id: give each process its '
            'own JAX_PROCESS_ID (0..N-1)')
  if re.search(r'RegisterTask|DEADLINE_EXCEEDED', log):
    return (f'{me} could not join the job: {_join_hint(settings)}')
  if re.search(r'Socket closed|Connection refused|connection|UNAVAILABLE', log):
    return (f'{me} lost the coordinator (process 0): the job stopped; checkpoints are kept, '
            'rerun the job to resume')
  errors = [line for line in log.splitlines() if line[:1] in 'EF' and _CPP_LINE.match(line)]
  detail = _CPP_LINE.sub('', errors[-1]) if errors else 'no message'
  return f'{me}: the job stopped ({" ".join(detail.split())[:200]}); rerun the job to resume'


def supervise(args, settings: JobSettings) -> int:
  """Runs `python -m qprune.distributed --child ARGS` and returns its exit status, turning a
  C++ abort of the child into one `qprune: error:` line (status 3). SIGINT/SIGTERM sent to
  this process are passed on to the child, which stops at its next safe point."""
  cpp_read, cpp_write = os.pipe()
  python_stderr = os.dup(2)
  env = dict(os.environ, **{_CHILD_ENV: str(python_stderr)})
  child = subprocess.Popen([sys.executable, '-m', 'qprune.distributed', '--child', *args],
                           env=env, stderr=cpp_write, pass_fds=(python_stderr,))
  os.close(cpp_write)
  os.close(python_stderr)
  verbose = os.environ.get('QPRUNE_VERBOSE', '') not in ('', '0')
  tail = []

  def read_log():
    with os.fdopen(cpp_read, 'r', errors='replace') as f:
      for line in f:
        tail.append(line)
        del tail[:-400]
        if verbose:
          sys.stderr.write(line)
          sys.stderr.flush()

  reader = threading.Thread(target=read_log, daemon=True)
  reader.start()

  def forward(signum, frame):
    del frame
    try:
      child.send_signal(signum)
    except OSError:
      pass

  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, forward)
  while True:  # short waits: a signal may land on the reader thread, and its Python handler
    try:       # runs only when this (main) thread runs bytecode, never inside a blocking wait
      status = child.wait(timeout=0.2)
      break
    except subprocess.TimeoutExpired:
      continue
  reader.join(timeout=5)
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, signal.SIG_IGN)  # the run is over: its status is what counts
  if status >= 0:
    return status
  died = -status
  if died in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
    print(f'qprune: interrupted: {signal.Signals(died).name}: the job process was killed; '
          'rerun the same command to resume', file=sys.stderr, flush=True)
    return 128 + died
  print(f'qprune: error: {describe_failure("".join(tail), settings)}', file=sys.stderr,
        flush=True)
  return EXIT_PEER_FAILED


class _RememberingStream:
  """A text stream that remembers the last `qprune: error:` written (the reason the other
  processes are told)."""

  def __init__(self, stream):
    self._stream, self.last_error = stream, ''

  def write(self, text):
    for line in text.splitlines():
      if line.startswith('qprune: error: '):
        self.last_error = line[len('qprune: error: '):]
    return self._stream.write(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _stop_with_parent():
  """SIGTERM to this child when its supervisor dies (even by SIGKILL): it saves and stops
  instead of running on unsupervised (Linux; elsewhere nothing)."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if os.getppid() == 1:  # the parent died before prctl
    os.kill(os.getpid(), signal.SIGTERM)


def _child_main(args) -> int:
  """The supervised child: `python -m qprune.main ARGS` with the Python stderr on the real
  terminal, exiting at once on failure (see exit_now)."""
  import io  # pylint: disable=g-import-not-at-top
  import runpy  # pylint: disable=g-import-not-at-top
  _stop_with_parent()
  fd = int(os.environ[_CHILD_ENV])
  sys.stderr = _RememberingStream(io.TextIOWrapper(
      os.fdopen(fd, 'wb', buffering=0), write_through=True, errors='backslashreplace'))
  sys.argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), 'main.py'), *args]
  import faulthandler  # pylint: disable=g-import-not-at-top
  enable = faulthandler.enable
  # absl enables faulthandler on sys.stderr: its dump of a C++ abort goes with the C++ log.
  # (`or sys.stderr`: what faulthandler itself falls back to when the file is None.)
  faulthandler.enable = lambda *a, **k: enable(file=sys.__stderr__ or sys.stderr,
                                               all_threads=False)
  try:
    runpy.run_module('qprune.main', run_name='__main__', alter_sys=True)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
    if code != 0:
      if code not in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # those stop every process
        announce_failure(sys.stderr.last_error or f'exit status {code}')
      exit_now(code)
    return 0
  except BaseException as e:  # pylint: disable=broad-except
    if collective_failure(e) or _FAILING.is_set():
      _FAILING.set()
      me = _JOINED.describe() if _JOINED else 'this process'
      detail = re.sub(r'\[external/[^\]]*\]\s*', '', ' '.join(str(e).split()))
      print(f'qprune: error: {me}: another process of the job stopped ({detail[:160]}); '
            'checkpoints are kept, rerun the job to resume', file=sys.stderr, flush=True)
      exit_now(EXIT_PEER_FAILED)
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    announce_failure(f'{type(e).__name__}, a bug: see its traceback')
    exit_now(1)
  return 0


if __name__ == '__main__':
  if sys.argv[1:2] == ['--child']:
    # Through the imported module, not this __main__ copy: qprune.main joins through it, and
    # the child's exit policy must see that state (which job, whether failing).
    from qprune import distributed  # pylint: disable=g-import-not-at-top,import-self
    sys.exit(distributed._child_main(sys.argv[2:]))  # pylint: disable=protected-access
  print('usage: the qprune binary runs this module itself (python -m qprune.main ...)',
        file=sys.stderr)
  sys.exit(2)
