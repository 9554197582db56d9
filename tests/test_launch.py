"""launch.sh: dry-run commands, per-job workdirs/logs, collected table, failures, GPU slots.

Real training is too slow here: QPRUNE_PYTHON points to a fake interpreter (a small bash
script) that writes a results.json into --workdir, or fails when the config's name says so.
"""
import csv
import os
import subprocess
import sys

from conftest import REPO_ROOT

LAUNCH = os.path.join(REPO_ROOT, 'launch.sh')

FAKE_PYTHON = r'''#!/usr/bin/env bash
# fake "python -m qprune.main --config=C --workdir=W [--config.x=v ...]"
workdir=""; config=""; seed=""
for a in "$@"; do
  case "$a" in
    --workdir=*) workdir="${a#*=}" ;;
    --config=*) config="${a#*=}" ;;
    --config.seed=*) seed="${a#*=}" ;;
  esac
done
echo "fake run of $config seed $seed args: $*"
if [[ "$config" == *bad* ]]; then echo "boom" >&2; exit 3; fi
mkdir -p "$workdir"
start=$(date +%s.%N)
sleep "${FAKE_SLEEP:-0}"
fmt='{"mode": "train", "model": "lenet5", "dataset": "mnist", "test_accuracy": 0.9%s, '
fmt+='"params": 100, "macs": 2000, "epochs_run": 1, "wall_time_s": 0.5, '
fmt+='"gpu": "%s", "start": %s, "end": %s}\n'
printf "$fmt" "$seed" "${CUDA_VISIBLE_DEVICES:-}" "$start" "$(date +%s.%N)" \
  > "$workdir/results.json"
'''

FAKE_SMI = '''#!/usr/bin/env bash
echo "GPU 0: Fake GPU (UUID: GPU-0)"
echo "GPU 1: Fake GPU (UUID: GPU-1)"
'''


def _script(path, text):
  path.write_text(text)
  path.chmod(0o755)
  return str(path)


def _env(tmp_path, smi=None, **extra):
  env = dict(os.environ)
  env.update(QPRUNE_PYTHON=_script(tmp_path / 'fake_python', FAKE_PYTHON),
             QPRUNE_COLLECT_PYTHON=sys.executable,
             QPRUNE_NVIDIA_SMI=smi or str(tmp_path / 'no-nvidia-smi'))
  env.pop('VIRTUAL_ENV', None)
  env.update(extra)
  return env


def _configs(tmp_path, *names):
  folder = tmp_path / 'configs'
  folder.mkdir(exist_ok=True)
  for n in names:
    (folder / n).write_text('def get_config(): pass\n')
  return [str(folder / n) for n in names]


def _launch(args, env, cwd):
  return subprocess.run(['bash', LAUNCH, *args], env=env, cwd=cwd, capture_output=True,
                        text=True, timeout=120)


def test_help():
  out = subprocess.run(['bash', LAUNCH, '--help'], capture_output=True, text=True, check=True)
  assert 'Usage:' in out.stdout and '--dry-run' in out.stdout and '--multi-host' in out.stdout
  assert 'set -u' not in out.stdout and out.stdout.rstrip().endswith('nvidia-smi).')
  assert '\n#' not in out.stdout  # comment markers stripped


def test_dry_run_prints_commands(tmp_path):
  env = _env(tmp_path, QPRUNE_PYTHON=sys.executable)  # it checks the jobs with it
  out = _launch(['--configs', 'configs/mnist_lenet5.py,configs/cifar10_resnet20.py',
                 '--seeds', '0,1', '--set', '--config.epochs=1 --config.data_dir=../shared/data',
                 '--out', 'runs/sweep1', '--dry-run'], env, REPO_ROOT)
  assert out.returncode == 0, out.stderr
  commands = [ln for ln in out.stdout.splitlines() if not ln.startswith('#')]
  expected = ['mkdir -p runs/sweep1/logs'] + [
      f'{sys.executable} -m qprune.main --config=configs/{c}.py --workdir=runs/sweep1/{c}_s{s} '
      f'--config.epochs=1 --config.data_dir=../shared/data --config.seed={s} '
      f'>> runs/sweep1/logs/{c}_s{s}.log 2>&1'
      for c in ('mnist_lenet5', 'cifar10_resnet20') for s in (0, 1)]
  assert commands[:5] == expected
  assert commands[5].endswith('qprune/report/collect.py runs/sweep1 --plots')
  assert not os.path.exists(os.path.join(REPO_ROOT, 'runs', 'sweep1'))  # nothing ran


def test_dry_run_variants_sweep_file_and_gpus(tmp_path):
  sweep = tmp_path / 'sweep.txt'
  sweep.write_text('# comment\nconfigs/mnist_lenet5.py --config.learning_rate=0.02\n\n'
                   'configs/mnist_lenet5.py --config.width=0.5 --config.batch_size=64\n')
  env = _env(tmp_path, smi=_script(tmp_path / 'smi', FAKE_SMI), QPRUNE_PYTHON=sys.executable)
  out = _launch(['--sweep', str(sweep), '--configs', 'configs/mnist_lenet5.py', '--override', '',
                 '--override', '--config.epochs=2', '--out', 'o', '--dry-run'], env, REPO_ROOT)
  assert out.returncode == 0, out.stderr
  lines = [ln for ln in out.stdout.splitlines() if ln.startswith('CUDA')]
  workdirs = [ln.split('--workdir=')[1].split()[0] for ln in lines]
  assert workdirs == ['o/mnist_lenet5_s0', 'o/mnist_lenet5_epochs-2_s0',
                      'o/mnist_lenet5_learning_rate-0.02_s0',
                      'o/mnist_lenet5_width-0.5_batch_size-64_s0']
  assert [ln.split()[0] for ln in lines] == ['CUDA_VISIBLE_DEVICES=0', 'CUDA_VISIBLE_DEVICES=1'] * 2
  # the same workdir twice is refused
  dup = _launch(['--configs', 'configs/mnist_lenet5.py,other/mnist_lenet5.py', '--out', 'o',
                 '--dry-run'], env, REPO_ROOT)
  assert dup.returncode == 2 and 'share the workdir' in dup.stderr


def test_dry_run_checks_every_job(tmp_path):
  """Bad overrides and config files are named per job (one process checks them all), and
  nothing is printed to run; --no-check prints anyway."""
  env = _env(tmp_path, QPRUNE_PYTHON=sys.executable)
  args = ['--configs', 'configs/mnist_lenet5.py,configs/missing.py', '--override',
          '--config.epochs=1', '--override', '--config.epoch=1', '--out', 'o', '--dry-run']
  out = _launch(args, env, REPO_ROOT)
  assert out.returncode == 2, out.stdout + out.stderr
  errors = [ln for ln in out.stderr.splitlines() if ln.startswith('launch.sh: error: job ')]
  assert errors == [
      "launch.sh: error: job mnist_lenet5_epoch-1_s0: unknown config field 'epoch'; did you mean "
      "'epochs'? (python -m qprune.main --help lists the fields)",
      'launch.sh: error: job missing_epochs-1_s0: cannot load --config=configs/missing.py: '
      "[Errno 2] No such file or directory: 'configs/missing.py'",
      'launch.sh: error: job missing_epoch-1_s0: cannot load --config=configs/missing.py: '
      "[Errno 2] No such file or directory: 'configs/missing.py'"]
  assert 'qprune.main' not in out.stdout
  bad_value = _launch(['--configs', 'configs/mnist_lenet5.py', '--set', '--config.mode=zip',
                       '--out', 'o', '--dry-run'], env, REPO_ROOT)
  assert bad_value.returncode == 2 and "mode='zip': must be one of" in bad_value.stderr
  unchecked = _launch(args + ['--no-check'], env, REPO_ROOT)
  assert unchecked.returncode == 0 and unchecked.stdout.count(' -m qprune.main ') == 4


def test_dry_run_output_runs_as_printed(tmp_path):
  (good,) = _configs(tmp_path, 'good.py')
  env = _env(tmp_path)  # the fake interpreter: no check (it is not Python)
  out = _launch(['--configs', good, '--seeds', '0,1', '--out', 'runs/x', '--no-plots',
                 '--dry-run', '--no-check'], env, str(tmp_path))
  assert out.returncode == 0, out.stderr
  script = tmp_path / 'printed.sh'
  script.write_text(out.stdout)
  ran = subprocess.run(['bash', '-e', str(script)], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
  assert ran.returncode == 0, ran.stderr
  for seed in (0, 1):
    assert (tmp_path / 'runs' / 'x' / f'good_s{seed}' / 'results.json').exists()
    assert 'fake run of' in (tmp_path / 'runs' / 'x' / 'logs' / f'good_s{seed}.log').read_text()
  assert (tmp_path / 'runs' / 'x' / 'summary.md').exists()


def test_multi_host_prints_per_host_commands(tmp_path):
  env = _env(tmp_path, QPRUNE_PYTHON='python')
  out = _launch(['--configs', 'configs/mnist_lenet5.py', '--multi-host', '--hosts', '4',
                 '--coordinator', '10.0.0.1:1234', '--out', '/shared/runs'], env, REPO_ROOT)
  assert out.returncode == 0, out.stderr
  assert ('JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=$h python '
          '-m qprune.main --config=configs/mnist_lenet5.py') in out.stdout
  assert 'JAX_NUM_PROCESSES=4 python -m qprune.main' in out.stdout  # TPU pod form
  assert not os.path.exists('/shared/runs')


def test_sequential_run_failure_and_summary(tmp_path):
  good, bad = _configs(tmp_path, 'good.py', 'bad.py')
  out_dir = tmp_path / 'out'
  out = _launch(['--configs', f'{bad},{good}', '--seeds', '0,1', '--set', '--config.epochs=1',
                 '--out', str(out_dir)], _env(tmp_path), str(tmp_path))
  assert out.returncode == 1
  assert 'failed: bad_s0 bad_s1' in out.stderr
  # the failing jobs ran first and did not stop the good ones
  for seed in (0, 1):
    assert (out_dir / f'good_s{seed}' / 'results.json').exists()
    log = (out_dir / 'logs' / f'good_s{seed}.log').read_text()
    assert f'--config.epochs=1 --config.seed={seed}' in log
    assert (out_dir / 'logs' / f'good_s{seed}.rc').read_text().strip() == '0'
  assert 'boom' in (out_dir / 'logs' / 'bad_s0.log').read_text()
  assert (out_dir / 'logs' / 'bad_s1.rc').read_text().strip() == '3'
  with open(out_dir / 'summary.csv') as f:
    rows = {r['job']: r for r in csv.DictReader(f)}
  assert rows['good_s1']['status'] == 'ok' and rows['good_s1']['test_accuracy'] == '0.91'
  assert rows['bad_s0']['status'] == 'failed (exit 3)' and rows['bad_s0']['test_accuracy'] == ''
  assert rows['good_s0']['config'] == good and rows['good_s0']['seed'] == '0'
  md = (out_dir / 'summary.md').read_text()
  assert '| good_s0 | ok |' in md and 'not ok: bad_s0, bad_s1' in md
  # the seeds of one job aggregated: mean ± sample std over the finished ones
  assert '## Over seeds' in md
  good_line = next(ln for ln in md.splitlines() if ln.startswith('| good | 2/2 |'))
  assert '0.9050 ± 0.0071' in good_line
  assert any(ln.startswith('| bad | 0/2 |') for ln in md.splitlines())
  with open(out_dir / 'summary_seeds.csv') as f:
    groups = {r['group']: r for r in csv.DictReader(f)}
  assert groups['good']['n'] == '2'
  assert abs(float(groups['good']['test_accuracy_mean']) - 0.905) < 1e-9
  assert abs(float(groups['good']['test_accuracy_std']) - 0.00707107) < 1e-6
  assert groups['bad']['n'] == '0' and groups['bad']['test_accuracy_mean'] == ''
  assert (out_dir / 'plots' / 'accuracy_vs_macs.png').exists()


def test_one_job_per_gpu_in_parallel(tmp_path):
  (good,) = _configs(tmp_path, 'good.py')
  out_dir = tmp_path / 'out'
  env = _env(tmp_path, smi=_script(tmp_path / 'smi', FAKE_SMI), FAKE_SLEEP='1')
  out = _launch(['--configs', good, '--seeds', '0,1,2', '--out', str(out_dir), '--no-plots'], env,
                str(tmp_path))
  assert out.returncode == 0, out.stdout + out.stderr
  import json  # pylint: disable=g-import-not-at-top
  runs = [json.loads((out_dir / f'good_s{s}' / 'results.json').read_text()) for s in range(3)]
  assert sorted(r['gpu'] for r in runs[:2]) == ['0', '1']
  assert runs[2]['gpu'] in ('0', '1')
  # the first two overlapped (one per GPU); the third waited for a free GPU
  assert runs[0]['start'] < runs[1]['end'] and runs[1]['start'] < runs[0]['end']
  assert runs[2]['start'] >= min(runs[0]['end'], runs[1]['end']) - 0.05
  assert (out_dir / 'summary.csv').exists() and not (out_dir / 'plots').exists()


def test_dry_run_checks_and_prints_the_words_the_job_gets(tmp_path):
  """A sweep line is split as a shell would (quotes, a # inside a value, Windows line ends): the
  check and the printed command see the same words, so a line the dry run passes runs."""
  import shlex  # pylint: disable=g-import-not-at-top
  sweep = tmp_path / 'sweep.txt'
  sweep.write_bytes(b'# prune with two ratios\r\n'
                    b'configs/mnist_lenet5_prune.py "--config.prune.search_ratios=(0.5, 0.7)" '
                    b"--config.prune.search_criteria='l1'\r\n")
  env = _env(tmp_path, QPRUNE_PYTHON=sys.executable)
  out = _launch(['--sweep', str(sweep), '--out', 'o', '--dry-run'], env, REPO_ROOT)
  assert out.returncode == 0, out.stderr
  (line,) = [ln for ln in out.stdout.splitlines() if ' -m qprune.main ' in ln]
  words = shlex.split(line)
  assert '--config.prune.search_ratios=(0.5, 0.7)' in words
  assert '--config.prune.search_criteria=l1' in words
  unmatched = tmp_path / 'bad.txt'
  unmatched.write_text('configs/mnist_lenet5.py "--config.epochs=1\n')
  bad = _launch(['--sweep', str(unmatched), '--out', 'o', '--dry-run'], env, REPO_ROOT)
  assert bad.returncode == 2 and 'bad.txt, line 1: unmatched quote' in bad.stderr
