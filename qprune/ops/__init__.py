"""Low-level ops the models are built from, and every CPU-specific speed-up, in one place.

Each special case was measured on the 2-core CPU only, so each is switched by backend and can be
turned off; on GPU/TPU qprune runs plain JAX/Flax:

  compile.jit     jax.jit plus XLA CPU compiler options (CPU backend only;
                  QPRUNE_XLA_CPU_DEFAULTS=1 compiles with XLA's defaults)
  conv.conv2d     impl='auto': a custom-VJP conv whose kernel gradient (or, for unpadded convs,
                  input gradient) is matmuls on CPU, lax's conv elsewhere (config.conv_impl=
                  xla|fast forces one)
  pool.max_pool   under the same impl: non-overlapping max pooling (2x2/2) as elementwise
                  maxima with a custom VJP instead of XLA's slow select-and-scatter gradient
  batchnorm       FusedBatchNorm (one-pass forward, hand-written backward) on CPU, flax's
                  nn.BatchNorm elsewhere (QPRUNE_BATCHNORM=fused|flax forces one)
  malloc          the binaries re-execute once with glibc's huge-page malloc tunable on Linux
                  (QPRUNE_HUGEPAGES=0 turns it off; silent unless -v 1 / QPRUNE_VERBOSE=1)
  masking         element-wise pytree masking (frozen weights), shared by train and quant
"""
