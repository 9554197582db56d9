"""The studies behind RESULTS.md, each a list of commands planned by a small Python driver.

  python -m reproduce.sweeps.cifar10_resnet20 DATA OUT [gpu|cpu|tiny]
  python -m reproduce.sweeps.prune_decision DATA OUT [gpu|cpu|cpu40|tiny] [--criteria=l1,bn_gamma]
  python -m reproduce.sweeps.attention_ablation DATA OUT [mnist|cifar|tiny|tiny_cifar]
  python -m reproduce.sweeps.recipe_ablation DATA OUT [cpu40|tiny] [--changes=ema,linear]

Every driver's `plan(...)` is a pure function from its arguments to `Step`s (the tests check
them); `run_steps` runs them one after another: a step whose `done` files exist is skipped (a
rerun resumes the study; every qprune run also resumes from its own checkpoints), a failing step
stops the study with the path of its log. `--dry_run` prints the commands instead. The launch.sh
sweep files beside the configs (configs/sweeps/*.txt) are plain command lists.
"""
import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Optional

PYTHON = 'python'  # argv[0] of a step: replaced by $QPRUNE_PYTHON or this interpreter


@dataclasses.dataclass(frozen=True)
class Step:
  """One command of a study: `argv` (argv[0] 'python' is the interpreter), where its output goes
  (`log`; None: the console), and the files that mark it finished (`done`: skipped once every
  one exists; none: always run)."""
  argv: tuple[str, ...]
  log: str | None = None
  done: tuple[str, ...] = ()
  env: tuple[tuple[str, str], ...] = ()

  def shown(self) -> str:
    command = shlex.join(self.argv)
    return command + (f' > {shlex.quote(self.log)} 2>&1' if self.log else '')


def qprune_run(config: str, workdir: str, overrides: Sequence[str], log: str | None = None,
               skip_finished: bool = False, done: Sequence[str] = ()) -> Step:
  """`python -m qprune.main --config=CONFIG --workdir=WORKDIR OVERRIDES...`; with
  `skip_finished`, skipped once WORKDIR/results.json exists, else once every file of `done`
  does."""
  return Step((PYTHON, '-m', 'qprune.main', f'--config={config}', f'--workdir={workdir}',
               *overrides), log=log,
              done=(os.path.join(workdir, 'results.json'),) if skip_finished else tuple(done))


def publish(workdir: str, dest: str, skip_published: bool = False) -> Step:
  """`python -m qprune.report.publish --workdir=WORKDIR --to=DEST`; with `skip_published`,
  skipped once DEST/results.json exists (a study resumed from a fresh checkout)."""
  return Step((PYTHON, '-m', 'qprune.report.publish', f'--workdir={workdir}', f'--to={dest}'),
              done=(os.path.join(dest, 'results.json'),) if skip_published else ())


def publish_sweep(sweep: str, group: str) -> Step:
  return Step((PYTHON, '-m', 'qprune.report.publish', f'--sweep={sweep}', f'--to={group}'))


def write_book() -> Step:
  return Step((PYTHON, '-m', 'reproduce.results', 'write'))


def repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_steps(steps: Iterable[Step], dry_run: bool = False,
              python: str | None = None) -> int:
  """Runs `steps` in order from the checkout's root; the first failure's exit status (0: all
  ran). A step's log folder is created; its output replaces the log of an earlier try."""
  python = python or os.environ.get('QPRUNE_PYTHON') or sys.executable
  for step in steps:
    if dry_run:
      print(step.shown())
      continue
    if step.done and all(os.path.exists(path) for path in step.done):
      print(f'== finished, skipped: {step.shown()}', file=sys.stderr, flush=True)
      continue
    print(f'== {step.shown()}', file=sys.stderr, flush=True)
    argv = [python if i == 0 and arg == PYTHON else arg for i, arg in enumerate(step.argv)]
    env: dict[str, str] = {**os.environ, 'QPRUNE_PYTHON': python, **dict(step.env)}
    if step.log:
      os.makedirs(os.path.dirname(os.path.abspath(step.log)), exist_ok=True)
      with open(step.log, 'w') as log:
        rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                             cwd=repo_root())
    else:
      rc = subprocess.call(argv, env=env, cwd=repo_root())
    if rc != 0:
      where = f': see {step.log}' if step.log else ''
      print(f'qprune: error: step failed (exit {rc}){where}: {step.shown()}', file=sys.stderr)
      return rc
  return 0


def driver_parser(module: str, doc: str, kinds: Sequence[str],
                  default: str) -> argparse.ArgumentParser:
  """The command line every driver starts from: DATA OUT [KIND] and --dry_run; `doc` is the
  driver's docstring (its first paragraph is the description)."""
  parser = argparse.ArgumentParser(prog=f'python -m {module}', description=doc.split('\n\n')[0])
  parser.add_argument('data')
  parser.add_argument('out')
  parser.add_argument('kind', nargs='?', default=default, choices=kinds)
  parser.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  return parser


def run_driver(steps: Iterable[Step], args: argparse.Namespace) -> int:
  """Runs a driver's planned steps (`run_steps`); a finished smoke test (a kind starting with
  'tiny') says where it is, since nothing of it is published."""
  rc = run_steps(steps, dry_run=args.dry_run)
  if rc == 0 and args.kind.startswith('tiny') and not args.dry_run:
    print(f'tiny run finished: {shlex.quote(args.out)} (not published)')
  return rc
