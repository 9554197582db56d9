"""The one evaluation primitive: loss and accuracy sums of a logits function over a whole split.

Every evaluation in qprune goes through it: the training loop's test accuracy
(`steps.make_eval_fn`), the vmapped candidate search (`qprune.prune.evaluate_masks`, vmapped over
masks) and the sensitivity scans (`qprune.report.sensitivity`, vmapped over variants). A split is
cut into equal batches by `pad_to_batches`, the last one zero-padded and its padding marked
invalid, so every example counts exactly once whatever the split size, and the batch shape (hence
the compiled function) does not depend on it. `batch_sums` scans the batches with `lax.map`
(memory bounded by one batch) and works jitted, un-jitted and under `vmap`.
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def pad_to_batches(images, labels, batch_size: int) -> tuple:
  """(images [B, bs, ...], labels [B, bs], valid bool [B, bs]) with bs = min(batch_size, N): the
  split zero-padded to a multiple of bs, `valid` marking the real examples.

  numpy inputs are padded on the host (returns numpy); jax arrays (or tracers) with jnp."""
  xp = np if isinstance(images, np.ndarray) and isinstance(labels, np.ndarray) else jnp
  n = labels.shape[0]
  if n == 0:
    raise ValueError('cannot evaluate an empty split')
  bs = max(1, min(int(batch_size), n))
  pad = (-n) % bs
  images = xp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
  labels = xp.pad(labels, (0, pad))
  valid = xp.arange(n + pad) < n
  return (images.reshape((-1, bs) + images.shape[1:]), labels.reshape(-1, bs),
          valid.reshape(-1, bs))


def batch_sums(logits_fn: Callable, images, labels, valid=None) -> dict[str, jax.Array]:
  """{'loss': summed cross-entropy, 'correct': count, 'count': valid examples} of
  `logits_fn(images[b])` over the batches b of images [B, bs, ...] / labels [B, bs] (valid: bool
  [B, bs], default all)."""
  if valid is None:
    valid = jnp.ones(labels.shape, bool)

  def one_batch(batch):
    x, y, ok = batch
    logits = logits_fn(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return (jnp.sum(jnp.where(ok, losses, 0.0)),
            jnp.sum(jnp.where(ok, jnp.argmax(logits, -1) == y, False)))

  losses, correct = jax.lax.map(one_batch, (images, labels, valid))
  return {'loss': losses.sum(), 'correct': correct.sum(), 'count': jnp.sum(valid)}


def accuracy_and_loss(sums: dict) -> dict:
  """{'accuracy', 'loss' (mean)} from `batch_sums`' sums (works on arrays of them too)."""
  count = jnp.maximum(sums['count'], 1)
  return {'accuracy': sums['correct'] / count, 'loss': sums['loss'] / count}
