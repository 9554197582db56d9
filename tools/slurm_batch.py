r"""launch.sh's SLURM engine: a batch of qprune jobs as ONE sbatch job array (standard library
only).

  python tools/slurm_batch.py --out OUT --jobs JOBS_FILE [--sbatch "ARGS"] [--wait] [--dry-run]
      [--python PY] [--collect-python PY] [--plots]

JOBS_FILE has one job a line, `NAME<TAB>ARG<TAB>ARG...` (the arguments after
`python -m qprune.main`). One array task per job runs `srun PY -m qprune.main ARGS` in the
submit directory: with the default allocation that is one process; with `--sbatch "--nodes=2
--ntasks-per-node=1"` (or `--ntasks=N`, `--gres=gpu:K` with one task per GPU) it is one
multi-process run, every task joining the job by itself (qprune/distributed.py detects SLURM).

* `#SBATCH --requeue`: a preempted task (SLURM sends SIGTERM; the binary saves a checkpoint and
  exits 143) is queued again and resumes from its checkpoints.
* Logs: task 0's output is appended to `OUT/logs/<name>.log` (every start and restart is
  headed by one `# ...` line), task k > 0's to `OUT/logs/<name>.task<k>.log`; the exit status
  goes to `OUT/logs/<name>.rc` as with the local scheduler; SLURM's own output of the batch
  script goes to `OUT/logs/slurm-<array job>_<task>.out`.
* `--wait`: returns when SLURM holds none of the batch's tasks (a requeued one included), then
  collects `OUT/summary.md`/`.csv` (qprune/report/collect.py) and exits 1 when a job failed.
  Without it, a second job (`--dependency=afterany`) collects when the array has ended, and
  this returns at once, printing the job ids.
* `--dry-run`: prints the sbatch script and the sbatch commands; submits nothing.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COLLECT = os.path.join(REPO, 'qprune', 'report', 'collect.py')
POLL_S = 5.0


def read_jobs(path: str) -> list[tuple[str, list[str]]]:
  with open(path) as f:
    rows = [line.rstrip('\n').split('\t') for line in f if line.strip()]
  return [(row[0], row[1:]) for row in rows]


def batch_script(jobs: Sequence[tuple[str, list[str]]], out: str, python: str,
                 workdir: str) -> str:
  """The sbatch script: one array task per job (task i runs job i)."""
  logs = os.path.join(os.path.abspath(out), 'logs')
  name = 'qprune-' + (os.path.basename(os.path.abspath(out)) or 'batch')
  lines = [
      '#!/bin/bash',
      f'#SBATCH --job-name={name}',
      f'#SBATCH --array=0-{len(jobs) - 1}',
      f'#SBATCH --chdir={workdir}',
      f'#SBATCH --output={logs}/slurm-%A_%a.out',
      '#SBATCH --open-mode=append',
      '#SBATCH --requeue',
      '# Written by qprune launch.sh --scheduler slurm (tools/slurm_batch.py): array task i runs',
      '# job i. A preempted task is requeued and resumes from its checkpoints (the binary saves',
      '# on SIGTERM and exits 143).',
      'set -u',
      f'LOGS={shlex.quote(logs)}',
      'case "$SLURM_ARRAY_TASK_ID" in',
  ]
  for i, (job, args) in enumerate(jobs):
    command = shlex.join([python, '-m', 'qprune.main', *args])
    lines.append(f'  {i}) NAME={shlex.quote(job)}; CMD=({command}) ;;')
  lines += [
      '  *) echo "no job for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
      'esac',
      'LOG="$LOGS/$NAME.log"',
      'rm -f "$LOGS/$NAME.rc"',
      'echo "# $(date \'+%F %T\') slurm job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}'
      ' (restart ${SLURM_RESTART_COUNT:-0}, ${SLURM_NTASKS:-1} process(es)) on'
      ' $(hostname -s): ${CMD[*]}" >> "$LOG"',
      '# Task 0 writes the job log; the other tasks of a multi-process run their own.',
      'srun --kill-on-bad-exit=0 bash -c \'if [ "$SLURM_PROCID" = 0 ]; then exec "$@" >> "$0" '
      '2>&1; else exec "$@" >> "${0%.log}.task$SLURM_PROCID.log" 2>&1; fi\' "$LOG" "${CMD[@]}"',
      'RC=$?',
      'echo "$RC" > "$LOGS/$NAME.rc"',
      'exit "$RC"',
  ]
  return '\n'.join(lines) + '\n'


def collect_command(out: str, collect_python: str, plots: bool) -> list[str]:
  return [collect_python, COLLECT, out] + (['--plots'] if plots else [])


def submit(argv: list[str]) -> str:
  """Runs sbatch --parsable ...; returns the job id."""
  try:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
  except OSError as e:
    raise SystemExit(f'launch.sh: error: cannot run {argv[0]} ({e.strerror}): is SLURM '
                     'installed here (sbatch on PATH)?') from None
  if done.returncode != 0:
    message = ' '.join(done.stderr.split()) or f'exit status {done.returncode}'
    raise SystemExit(f'launch.sh: error: sbatch refused the batch: {message}')
  return done.stdout.strip().split(';')[0]


def held(job_id: str) -> int:
  """How many of the array's tasks SLURM still holds (pending, running, requeued, ...)."""
  done = subprocess.run(['squeue', '-h', '-r', '-j', job_id, '-o', '%i %T'],
                        capture_output=True, text=True, check=False)
  if done.returncode != 0:  # an unknown (purged) job id: nothing held
    return 0
  return len([line for line in done.stdout.splitlines() if line.strip()])


def failed_jobs(jobs, out: str) -> list[str]:
  failed = []
  for name, _ in jobs:
    try:
      with open(os.path.join(out, 'logs', name + '.rc')) as f:
        ok = f.read().strip() == '0'
    except OSError:
      ok = False
    if not ok:
      failed.append(name)
  return failed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--jobs', required=True)
  parser.add_argument('--sbatch', default='', help='more sbatch options, e.g. "--nodes=2 '
                      '--ntasks-per-node=1 --gres=gpu:4 --time=4:00:00"')
  parser.add_argument('--wait', action='store_true')
  parser.add_argument('--dry-run', action='store_true')
  parser.add_argument('--python', default='python')
  parser.add_argument('--collect-python', default=None)
  parser.add_argument('--plots', action='store_true')
  args = parser.parse_args(argv)
  jobs = read_jobs(args.jobs)
  if not jobs:
    print('launch.sh: error: no jobs', file=sys.stderr)
    return 2
  out = args.out
  script = batch_script(jobs, out, args.python, os.getcwd())
  extra = shlex.split(args.sbatch)
  collect = collect_command(out, args.collect_python or args.python, args.plots)
  logs = os.path.join(os.path.abspath(out), 'logs')
  script_path = os.path.join(out, 'slurm_batch.sh')
  array_submit = ['sbatch', '--parsable', *extra, script_path]
  def collect_submit(job_id: str) -> list[str]:
    return ['sbatch', '--parsable', f'--dependency=afterany:{job_id}', '--job-name=qprune-collect',
            f'--output={logs}/collect.log', f'--chdir={os.getcwd()}', '--ntasks=1',
            '--wrap', shlex.join(collect)]

  if args.dry_run:
    print(f'# {len(jobs)} job(s) as one SLURM job array; {script_path}:')
    print(script, end='')
    print(f'# submitted with: {shlex.join(array_submit)}')
    if args.wait:
      print(f'# then, when SLURM holds none of its tasks: {shlex.join(collect)}')
    else:
      print(f'# then a collecting job: {shlex.join(collect_submit("JOBID"))}')
    return 0
  os.makedirs(logs, exist_ok=True)
  with open(script_path, 'w') as f:
    f.write(script)
  job_id = submit(array_submit)
  print(f'[launch] {len(jobs)} job(s) submitted as SLURM job array {job_id} '
        f'(tasks 0-{len(jobs) - 1}); logs in {logs}', flush=True)
  if not args.wait:
    collector = submit(collect_submit(job_id))
    print(f'[launch] job {collector} collects {out}/summary.md when the array has ended '
          f'(squeue -j {job_id},{collector})', flush=True)
    return 0
  start = time.time()
  while held(job_id):
    time.sleep(POLL_S)
  print(f'[launch] SLURM holds none of job {job_id}\'s tasks after {time.time() - start:.0f} s; '
        'collecting', flush=True)
  if subprocess.run(collect, check=False).returncode != 0:
    print('launch.sh: warning: collecting the results failed', file=sys.stderr)
  failed = failed_jobs(jobs, out)
  if failed:
    print(f'launch.sh: {len(failed)} of {len(jobs)} job(s) failed: {" ".join(failed)} '
          f'(logs in {logs})', file=sys.stderr)
    return 1
  print(f'[launch] all {len(jobs)} job(s) ok; summary: {out}/summary.md')
  return 0


if __name__ == '__main__':
  sys.exit(main())
