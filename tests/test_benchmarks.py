"""Smoke tests: the train-step benchmark's worker runs every variant (no timing asserted)."""
import jax.numpy as jnp
import pytest

from qprune.benchmarks import train_step


@pytest.mark.parametrize('variant', sorted(train_step.VARIANTS))
def test_train_step_worker_runs(variant):
  result = train_step._worker('lenet5', 8, 2, variant, jnp.float32)
  assert len(result['times']) == 2 and all(t > 0 for t in result['times'])
  assert result['macs'] == 2_293_000
