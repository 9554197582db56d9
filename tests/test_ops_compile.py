"""qprune.ops.compile: the CPU compiler options are in effect, and an unknown option falls back."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune.ops import compile as compile_lib
from qprune.ops import conv as conv_ops


def _conv_hlo(fn):
  x, k = jnp.zeros((8, 16, 16, 32)), jnp.zeros((3, 3, 32, 32))
  return fn.lower(x, k).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='CPU-only options')
def test_cpu_options_move_convolutions_off_ynnpack():
  assert compile_lib.compiler_options() == compile_lib.CPU_COMPILER_OPTIONS
  conv = lambda x, k: conv_ops.xla_conv2d(x, k)
  default = _conv_hlo(jax.jit(conv))
  ours = _conv_hlo(compile_lib.jit(conv))
  assert '__ynn_fusion' in default  # XLA's default: a single-threaded YNNPACK conv fusion
  assert '__ynn_fusion' not in ours


def test_jit_wrapper_behaves_like_jax_jit():
  @compile_lib.jit(static_argnums=(1,))
  def scale(x, k):
    return x * k

  np.testing.assert_allclose(scale(jnp.arange(3.0), 2), [0.0, 2.0, 4.0])
  assert scale.__name__ == 'scale'
  assert 'mul' in scale.lower(jnp.arange(3.0), 3).as_text()


def test_unknown_option_falls_back_to_xla_defaults(monkeypatch):
  monkeypatch.setattr(compile_lib, 'CPU_COMPILER_OPTIONS', {'xla_cpu_no_such_option': 'x'})
  compile_lib._options_for.cache_clear()
  try:
    assert compile_lib._options_for('cpu') is None
    assert compile_lib._options_for('gpu') is None
  finally:
    compile_lib._options_for.cache_clear()


def test_env_switch_restores_defaults(monkeypatch):
  monkeypatch.setenv('QPRUNE_XLA_CPU_DEFAULTS', '1')
  compile_lib._options_for.cache_clear()
  try:
    assert compile_lib._options_for('cpu') is None
  finally:
    compile_lib._options_for.cache_clear()
