"""The one evaluation primitive: padded batches count every example once, jitted or not."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune.train import evaluation


def _logits(x):
  """Class = the example's single value (x in {0, 1, 2}), logits +5 / -5: loss ~ 0 or 10."""
  return 10.0 * jax.nn.one_hot(x[:, 0].astype(jnp.int32), 3) - 5.0


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('as_numpy', [False, True])
def test_sums_over_a_split_that_does_not_divide(jit, as_numpy):
  images = np.array([[0], [1], [2], [1], [0]], np.float32)   # 5 examples, batches of 2
  labels = np.array([0, 1, 0, 1, 2], np.int32)              # examples 2 and 4 wrong
  if not as_numpy:
    images, labels = jnp.asarray(images), jnp.asarray(labels)

  def run(images, labels):
    return evaluation.batch_sums(_logits, *evaluation.pad_to_batches(images, labels, 2))

  sums = jax.device_get((jax.jit(run) if jit else run)(images, labels))
  assert int(sums['count']) == 5 and int(sums['correct']) == 3
  # a wrong example costs 10 nats (+ log(1 + 2 e^-10) ~ 1e-4), a right one ~ 1e-4
  assert float(sums['loss']) == pytest.approx(20.0, abs=1e-3)
  metrics = evaluation.accuracy_and_loss(sums)
  assert float(metrics['accuracy']) == pytest.approx(0.6)
  assert float(metrics['loss']) == pytest.approx(4.0, abs=1e-3)


def test_padding_layout_and_vmap():
  images, labels, valid = evaluation.pad_to_batches(np.arange(5.0)[:, None], np.arange(5), 2)
  assert images.shape == (3, 2, 1) and labels.shape == (3, 2)
  assert valid.tolist() == [[True, True], [True, True], [True, False]]
  assert isinstance(images, np.ndarray)      # numpy in, numpy out (host padding)
  # bs never exceeds the split
  assert evaluation.pad_to_batches(np.zeros((3, 1)), np.zeros(3, int), 100)[0].shape == (1, 3, 1)
  with pytest.raises(ValueError, match='empty split'):
    evaluation.pad_to_batches(np.zeros((0, 1)), np.zeros(0, int), 2)

  # vmapped over K "models" (a scale on the logits): one compiled call, per-model sums
  x = jnp.asarray([[0.0], [1.0], [2.0]])
  y = jnp.asarray([0, 1, 1])
  batches = evaluation.pad_to_batches(x, y, 2)
  scales = jnp.asarray([1.0, -1.0])                        # -1 flips every argmax away
  sums = jax.jit(jax.vmap(lambda s: evaluation.batch_sums(lambda b: s * _logits(b), *batches)))(
      scales)
  assert sums['correct'].tolist() == [2, 0] and sums['count'].tolist() == [3, 3]
