"""`jit`: jax.jit plus the XLA options that make conv nets fast on the CPU backend.

Why: XLA's CPU backend hands convolutions, dots, reductions and elementwise ops to YNNPACK
fusions, and those run on a single thread unless autotuned. Measured on the 2-core development
machine (ResNet-20 CIFAR shapes, batch 256, f32): a 3x3 conv at 16x16x32 or 8x8x64 runs at 55-70
GFLOP/s on one core through YNNPACK and at 110-135 GFLOP/s on both cores through XLA's own (Eigen)
convolution; the ResNet-20 train step with lax convs is 2.4-2.7x faster with these options
(`python -m reproduce.benchmarks.train_step --variants=xla_conv,plain`).
Keeping YNNPACK for reductions only is what measured best: without it the BatchNorm statistics
become slow two-stage reduce-windows, and YNNPACK's elementwise fusions cost 1.1x more than XLA's.

`compiler_options()` resolves lazily (never at import: a multi-host run must initialize JAX's
distributed runtime before any backend exists) and only on the CPU backend; GPU and TPU compile
with XLA's defaults. If this jaxlib does not know the option (it is marked experimental), the
probe compile fails and qprune falls back to XLA's defaults with one warning, rather than failing.
Set QPRUNE_XLA_CPU_DEFAULTS=1 to compare against XLA's defaults.
"""
import functools
import os

import jax
import jax.numpy as jnp
from absl import logging

CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE',
}


@functools.cache
def _options_for(backend: str):
  if backend != 'cpu' or os.environ.get('QPRUNE_XLA_CPU_DEFAULTS') == '1':
    return None
  try:
    jax.jit(jnp.sum, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.zeros(2)).compile()
  except Exception as e:  # pylint: disable=broad-except  # an unknown option: keep XLA defaults
    logging.warning('XLA rejected qprune\'s CPU compiler options (%s); using XLA defaults: %s',
                    CPU_COMPILER_OPTIONS, e)
    return None
  return CPU_COMPILER_OPTIONS


def compiler_options():
  """The options `jit` adds for the default backend: a dict on CPU, None elsewhere."""
  return _options_for(jax.default_backend())


class _LazyJit:
  """jax.jit(fun, compiler_options=compiler_options(), **kwargs), built at first use."""

  def __init__(self, fun, kwargs):
    self._fun, self._kwargs, self._jitted = fun, kwargs, None
    functools.update_wrapper(self, fun)

  def _get(self):
    if self._jitted is None:
      self._jitted = jax.jit(self._fun, compiler_options=compiler_options(), **self._kwargs)
    return self._jitted

  def __call__(self, *args, **kwargs):
    return self._get()(*args, **kwargs)

  def __getattr__(self, name):  # lower, trace, eval_shape, clear_cache, ...
    return getattr(self._get(), name)


def jit(fun=None, *, xla_defaults: bool = False, **kwargs):
  """Drop-in for `jax.jit` (also as `@jit(static_argnums=...)`) with `compiler_options()`.

  xla_defaults=True is plain `jax.jit` (benchmarks use it for the baseline).
  """
  if fun is None:
    return functools.partial(jit, xla_defaults=xla_defaults, **kwargs)
  return jax.jit(fun, **kwargs) if xla_defaults else _LazyJit(fun, kwargs)
