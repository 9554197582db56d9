"""The inference benchmark runs (--tiny: seconds, timings not asserted)."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow
def test_inference_benchmark_tiny_runs_and_reports_rows():
  proc = subprocess.run(
      [sys.executable, '-m', 'reproduce.benchmarks.inference', '--tiny', '--models=lenet5',
       '--json'],
      cwd=REPO_ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True, text=True,
      timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  rows = report['rows']
  assert {(r['measure'], r['backend']) for r in rows} == {
      ('latency', 'jax'), ('latency', 'onnx'), ('throughput', 'jax'), ('throughput', 'onnx')}
  for row in rows:  # structure only: no timing value is asserted
    assert row['model'] == 'lenet5' and row['macs_ratio'] > 1.5 and row['params_ratio'] > 1.5
    assert {'full_ms', 'pruned_ms', 'speedup', 'full_images_per_s'} <= set(row)
  assert report['meta']['tiny'] and '| lenet5 | latency | 1 | jax |' in proc.stdout
