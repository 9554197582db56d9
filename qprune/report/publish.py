r"""Publishing a finished run: a small, self-contained copy of its folder, fit to commit or share.

  python -m qprune.report.publish --workdir=W --to=results/mnist_lenet5/optimal_k3
  python -m qprune.report.publish --sweep=runs/q --to=results/mnist_lenet5   # every finished run

`publish` copies from a finished run what a user needs to use and judge it: results.json,
config.json, report.md with its plots, and the model itself (model.json + model/ for
`qprune.load_model`, the bit-packed export model.qpq for `qprune.load_quantized`); never
checkpoints. Paths inside results.json become relative to the folder; other absolute paths (in
the recorded command, the config, the report) become relative to the folder the run was started
from (`root`, default the current one), so no published file names the machine it ran on.

Nothing is lost by publishing: the destination must be empty, missing, or a folder published
before (only the files `publish` writes); never the run itself, a folder holding it, or a folder
inside it. The new folder is built beside the destination and swapped in only once complete, so
a run that turns out to lack its model leaves an earlier publication as it was.
"""
import argparse
import os
import re
import shutil
import sys
import tempfile

from qprune import files, records
from qprune.errors import UserError
from qprune.quant.inq import DEFAULT_SCHEDULE

RESULTS_JSON, CONFIG_JSON, REPORT_MD = 'results.json', 'config.json', 'report.md'
MODEL_FILES = ('model.json', 'model')
PLOTS_DIR = 'plots'


class PublishError(UserError):
  """A run folder cannot be published (or a published one cannot be read)."""


def read_json(path: str):
  """The parsed file; PublishError when it is missing (a damaged one: DamagedFileError)."""
  data = files.read_json(path, required=())
  if data is None:
    raise PublishError(f'{path} is missing')
  return data


def read_record(path: str) -> records.Results:
  """results.json at `path` as the record of its mode."""
  try:
    return records.from_json(read_json(path))
  except TypeError as e:
    raise PublishError(f'{path}: {e}') from None


def export_path(record: records.Results) -> str | None:
  """The run's bit-packed export (quantize and pipeline runs); None where the run saved
  model.json + model/ instead."""
  if isinstance(record, (records.QuantizeResults, records.PipelineResults)):
    return record.export_path
  return None


def published_names(record: records.Results) -> set:
  """The names a published folder of `record` may hold (what `publish` writes)."""
  export = export_path(record)
  model = {export.split('/')[0]} if export else set(MODEL_FILES)
  return {RESULTS_JSON, CONFIG_JSON, REPORT_MD, PLOTS_DIR} | model


def _is_inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_destination(workdir: str, dest: str):
  """PublishError unless `dest` may be (re)written with a publication of `workdir`: not the run,
  not a folder holding it or inside it, and missing, empty or published before."""
  source, target = os.path.realpath(workdir), os.path.realpath(dest)
  if _is_inside(source, target):
    raise PublishError(f'--to={dest} is the run {workdir} itself or a folder holding it: '
                       f'publish to a new folder, e.g. results/<dataset>_<model>/<name>')
  if _is_inside(target, source):
    raise PublishError(f'--to={dest} is inside the run {workdir}: publish to a folder outside it')
  if not os.path.lexists(dest):
    return
  if not os.path.isdir(dest) or os.path.islink(dest):
    raise PublishError(f'--to={dest} exists and is not a folder: move it away or choose '
                       f'another --to')
  names = set(os.listdir(dest))
  if not names:
    return
  why = None
  if RESULTS_JSON not in names:
    why = f'holds {", ".join(sorted(names)[:5])} but no {RESULTS_JSON}'
  else:
    try:
      extra = names - published_names(read_record(os.path.join(dest, RESULTS_JSON)))
    except UserError as e:
      extra, why = set(), f'its {RESULTS_JSON} is unreadable ({e})'
    if extra:
      why = f'also holds {", ".join(sorted(extra)[:5])}, which publish never writes (a workdir?)'
  if why:
    raise PublishError(f'--to={dest} is not empty and not a published folder ({why}): nothing '
                       f'was changed; move it away or choose another --to')


def publish(workdir: str, dest: str, *, command: str | None = None,
            machine: str | None = None, root: str | None = None) -> list[str]:
  """Copies the finished run in `workdir` to `dest`; returns the names written.

  `dest` may be missing, empty, or published before (then replaced, keeping the `command` /
  `machine` filled in then); anything else is refused before a file is touched. `command` /
  `machine` fill in results.json's fields for a run made before the binary recorded them (never
  overriding recorded ones). `root` is the folder the run was started from (default: the
  current one): absolute paths inside it or beside it are written relative to it
  (`portable_paths`).
  """
  root = os.path.abspath(root or os.getcwd())
  source = os.path.join(workdir, RESULTS_JSON)
  # The run's own results.json is copied (paths made relative, the header filled in), not
  # rewritten from its record: to_json() would add every field the run predates as null and
  # reorder the keys, so the published file would no longer be the one the run wrote.
  data = read_json(source)
  try:
    record = records.from_json(data)
  except TypeError as e:
    raise PublishError(f'{source}: {e}') from None
  check_destination(workdir, dest)
  earlier = records.Results()
  if os.path.isfile(os.path.join(dest, RESULTS_JSON)):  # republished: keep what was filled in
    earlier = read_record(os.path.join(dest, RESULTS_JSON))
  header = {'command': record.command or command or earlier.command,  # recorded values win
            'machine': record.machine or machine or earlier.machine}
  data.update({k: v for k, v in header.items() if v})
  workdir_abs = os.path.abspath(workdir)
  data = _map_strings(data, lambda v: portable_paths(_inside_relative(v, workdir_abs), root))
  export = export_path(records.from_json(data))
  if export and (os.path.isabs(export) or os.path.normpath(export).startswith('..')):
    raise PublishError(f'{source}: export_path {export} is outside the run folder (a copied run?): '
                       f'publish the run that made it')
  model_files = [export] if export else list(MODEL_FILES)
  for name in model_files:
    if not os.path.exists(os.path.join(workdir, name)):
      raise PublishError(f'{workdir} has no {name}: not a finished run (nothing was changed)')

  parent = os.path.dirname(os.path.abspath(dest))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(os.path.abspath(dest))}.new-')
  try:
    for name in model_files:
      src, dst = os.path.join(workdir, name), os.path.join(staging, name)
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
    if os.path.exists(os.path.join(workdir, CONFIG_JSON)):
      with open(os.path.join(workdir, CONFIG_JSON)) as f:
        files.write_text_atomic(os.path.join(staging, CONFIG_JSON), portable_paths(f.read(), root))
    if os.path.isdir(os.path.join(workdir, PLOTS_DIR)):
      shutil.copytree(os.path.join(workdir, PLOTS_DIR), os.path.join(staging, PLOTS_DIR))
    if os.path.exists(os.path.join(workdir, REPORT_MD)):
      with open(os.path.join(workdir, REPORT_MD)) as f:
        # The report names the machine-local workdir; the published copy names its own folder.
        report = f.read().replace(workdir_abs, os.path.normpath(dest))
      files.write_text_atomic(os.path.join(staging, REPORT_MD), portable_paths(report, root))
    files.write_json_atomic(os.path.join(staging, RESULTS_JSON), data, indent=1)
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; a published folder is for sharing
    _swap_in(staging, dest)
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging, ignore_errors=True)
  return sorted(os.listdir(dest))


def _swap_in(staging: str, dest: str):
  """Puts the complete folder `staging` at `dest`: an empty or missing `dest` is replaced in one
  rename; a published one is renamed aside first and deleted only after the swap."""
  if os.path.isdir(dest) and not os.listdir(dest):
    os.rmdir(dest)
  if not os.path.exists(dest):
    os.rename(staging, dest)
    return
  old = os.path.join(os.path.dirname(staging),
                     os.path.basename(staging).replace('.new-', '.old-', 1))
  os.rename(dest, old)
  try:
    os.rename(staging, dest)
  except BaseException:
    os.rename(old, dest)
    raise
  shutil.rmtree(old, ignore_errors=True)


def run_name(config: dict) -> str:
  """A short folder name for a run from its config.json: 'fp' ('fp_bf16' in bfloat16),
  'optimal_k3', 'inq_b5', 'kmeans_budget2.5', ... plus '_zero_free' for zero-free sets, '_steps5'
  for a schedule of 5 steps other than the default, and '_final0' / '_retrain2' where the recipe
  is not the default."""
  mode = config.get('mode')
  if mode == 'train':
    return 'fp' + ('_bf16' if config.get('compute_dtype') == 'bfloat16' else '')
  if mode == 'prune':
    p = config['prune']
    return f'prune_{p["criterion"]}_r{p["ratio"]}'
  q = config['quant']
  if q['method'] == 'inq':
    name = f'inq_b{q["bits"]}'
  elif q.get('bits_budget'):
    name = f'{q["method"]}_budget{q["bits_budget"]}'
  elif q.get('tolerance'):
    name = f'{q["method"]}_tol{q["tolerance"]}'
  else:
    name = f'{q["method"]}_k{q["k"]}'
  if q.get('zero_code') is False:
    name += '_zero_free'
  schedule = tuple(q.get('schedule') or DEFAULT_SCHEDULE)
  if schedule != DEFAULT_SCHEDULE:
    name += f'_steps{len(schedule)}'
  if q.get('distill_weight'):
    name += f'_distill{q["distill_weight"]:g}'
    if q.get('distill_temperature', 1.0) != 1.0:
      name += f'_t{q["distill_temperature"]:g}'
  if mode == 'pipeline':
    name = f'pipeline_{name}'
  if not q.get('final_epochs'):
    name += '_final0'
  if q.get('retrain_epochs') != 1:
    name += f'_retrain{q["retrain_epochs"]}'
  return name


def publish_sweep(sweep_dir: str, group_dir: str, root: str | None = None) -> list[str]:
  """Publishes every finished run under `sweep_dir` (e.g. a launch.sh --out folder) as
  `group_dir/<run_name>`; returns the names. Every destination is checked before the first
  run is published. `root` as for `publish`."""
  plan = {}
  for entry in sorted(os.listdir(sweep_dir)):
    workdir = os.path.join(sweep_dir, entry)
    if os.path.isfile(os.path.join(workdir, RESULTS_JSON)):
      name = run_name(read_json(os.path.join(workdir, CONFIG_JSON)))
      if name in plan:
        raise PublishError(f'two runs in {sweep_dir} would both be published as {name} '
                           f'({plan[name]} and {workdir}): nothing was published')
      check_destination(workdir, os.path.join(group_dir, name))
      plan[name] = workdir
  for name, workdir in plan.items():
    publish(workdir, os.path.join(group_dir, name), root=root)
  return list(plan)


# An absolute POSIX path: '/' not preceded by a name character, then path components.
_ABSOLUTE_PATH = re.compile(r'(?<![\w.~/-])/[\w.+-]+(?:/[\w.+-]*)*')


def portable_paths(text: str, root: str) -> str:
  """`text` with every absolute path inside `root`, or beside it (`root`'s parent's tree, e.g. a
  data folder at ../shared/data), written relative to `root`; other paths are left alone."""
  root = os.path.normpath(root)
  parent = os.path.dirname(root)
  def relative(match):
    path = match.group(0)
    inside = path == root or path.startswith(root + os.sep)
    beside = parent != os.sep and path.startswith(parent + os.sep)
    return os.path.relpath(path, root) if inside or beside else path
  return _ABSOLUTE_PATH.sub(relative, text)


def _map_strings(value, fn):
  """`value` (JSON data) with `fn` applied to every string in it."""
  if isinstance(value, dict):
    return {k: _map_strings(v, fn) for k, v in value.items()}
  if isinstance(value, list):
    return [_map_strings(v, fn) for v in value]
  return fn(value) if isinstance(value, str) else value


def _inside_relative(value: str, root: str) -> str:
  """`value` relative to `root` where it is a path inside `root` (a run's own artifacts)."""
  if value == root or value.startswith(root + os.sep):
    return os.path.relpath(value, root)
  return value


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m qprune.report.publish',
                                   description=__doc__.split('\n\n')[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='a finished run')
  source.add_argument('--sweep', help='a folder of runs (launch.sh --out): publish every '
                      'finished one as --to/<name from its config>')
  parser.add_argument('--to', required=True, help='the published folder (with --sweep: the '
                      'group folder, e.g. results/mnist_lenet5)')
  parser.add_argument('--command', help="results.json's command, for a run that did not record "
                      'it')
  parser.add_argument('--machine', help="results.json's machine, for a run that did not record "
                      'it')
  parser.add_argument('--root', help='the folder the runs were started from (default: this one); '
                      'absolute paths in or beside it are published relative to it')
  args = parser.parse_args(argv)
  try:
    if args.sweep:
      if args.command or args.machine:
        raise PublishError('--command and --machine apply to one run (--workdir), not a --sweep')
      names = publish_sweep(args.sweep, args.to, root=args.root)
    else:
      names = publish(args.workdir, args.to, command=args.command, machine=args.machine,
                      root=args.root)
    print('\n'.join(names))
    return 0
  except (UserError, OSError) as e:
    message = files.os_error_message(e) if isinstance(e, OSError) else str(e)
    print(f'qprune: error: {message}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
