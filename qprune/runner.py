"""Run orchestration: one check before any work, the workdir, the mode, the header, one write.

  check(config, workdir, overridden)   # what the run, --only_check_args and launch.sh --dry-run
                                       # all ask: the config, then the run's folders and layers
  record = run(config, workdir)        # -> the mode's typed record (qprune.records)

`run` validates with `check`, prepares and locks the workdir (a finished identical run is
reported, not redone), runs config.mode, stamps the run header (modes/common.stamp: the one place
a record and a pipeline stage get their header), and serializes the record once: results.json,
then report.md.
"""
import os
import sys
import time
from collections.abc import Callable, Iterable

from qprune import records


def check(config, workdir: str, overridden: Iterable[str] = ()) -> None:
  """UserError (one line) for whatever would stop the run before its first epoch: a bad or
  inapplicable config value (`overridden`: the dotted fields a command line set), a workdir that
  is a file or holds another config's run, an init_from/decide_from that is missing or would be
  deleted by overwrite, layers the model lacks. Writes nothing."""
  from qprune import configs  # pylint: disable=g-import-not-at-top
  configs.validate(config, overridden=tuple(overridden))
  from qprune.modes import common  # pylint: disable=g-import-not-at-top
  common.preflight(config, workdir)


def run(config, workdir: str, overridden: Iterable[str] = (),
        initialize: Callable[[], object] | None = None) -> records.Results:
  """Checks, prepares the workdir and runs config.mode; returns its record (also written as
  results.json). initialize: called after the check, before the workdir is touched (joining a
  multi-process job: which process writes the run's files depends on it)."""
  from qprune import errors, files  # pylint: disable=g-import-not-at-top
  check(config, workdir, overridden)
  errors.collected_warnings(clear=True)
  from qprune.modes import MODES, common  # pylint: disable=g-import-not-at-top
  from qprune.train import parallel  # pylint: disable=g-import-not-at-top
  if initialize is not None:
    initialize()
  finished = common.prepare_workdir(config, workdir)
  if finished is not None:
    print(f'{workdir} already holds this finished run; nothing to do.', flush=True)
    return records.from_json(finished)
  enable_compilation_cache(config.compilation_cache_dir or
                           os.environ.get('QPRUNE_COMPILATION_CACHE', ''))
  mesh = parallel.make_mesh()
  start = time.time()
  record = common.stamp(MODES[config.mode](config, workdir, mesh), config, config.mode)
  record.wall_time_s, record.devices = time.time() - start, int(mesh.devices.size)
  record.machine, record.command = machine_description(), command_line()
  # data, search, ... one line each
  record.warnings = [*record.warnings, *errors.collected_warnings()]
  if parallel.is_primary():  # one writer on a multi-host job's shared workdir
    files.write_json_atomic(os.path.join(workdir, common.RESULTS_JSON), record.to_json())
    write_report(config, workdir, record)
  return record


def enable_compilation_cache(path: str):
  """JAX's persistent compilation cache in `path` ('' = off): every compiled step is stored, so
  the next run of the same shapes (a sweep's next job, a resume) loads it instead of compiling."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', os.path.abspath(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def machine_description() -> str:
  """'<device kind> x<count>, <CPU model>, <cores> cores': where a result was measured."""
  import platform  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  devices = jax.devices()
  return f'{devices[0].device_kind} x{len(devices)}, {cpu}, {os.cpu_count()} cores'


def command_line() -> str:
  """The command that started this run, as typed (relative paths stay relative)."""
  import shlex  # pylint: disable=g-import-not-at-top
  return shlex.join(['python', '-m', 'qprune.main', *sys.argv[1:]])


def write_report(config, workdir: str, record: records.Results):
  """report.md + plots; a failure here only warns (the run's results are already safe)."""
  from qprune import report  # pylint: disable=g-import-not-at-top
  # The full-precision weights the quantization targets were chosen from, for the histograms.
  full_precision = {'quantize': config.init_from or None,
                    'pipeline': os.path.join(workdir, 'prune')}.get(config.mode)
  try:
    path = report.write_report(workdir, record, variables=full_precision)
    print(f'report: {path}', flush=True)
  except Exception as e:  # pylint: disable=broad-except
    print(f'qprune: warning: could not write the report: {type(e).__name__}: {e}',
          file=sys.stderr, flush=True)


def summary(record: records.Results) -> str:
  """The mode's summary block (before -> after), then its headline numbers as one JSON line."""
  import json  # pylint: disable=g-import-not-at-top
  return '\n'.join(record.summary_lines() + [json.dumps(record.headline())])
