"""Distillation loss (qprune.train.distill): hand-computed values, jitted and not, and its wiring
into the train step and the quantize mode."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune import models
from qprune.train import distill, loop, steps
from qprune.train.state import create_state

RUNNERS = [pytest.param(lambda f: f, id='eager'), pytest.param(jax.jit, id='jit')]


@pytest.mark.parametrize('run', RUNNERS)
def test_soft_kl_by_hand(run):
  # teacher softmax [1/4, 3/4], student [1/2, 1/2]: KL = 1/4 ln(1/2) + 3/4 ln(3/2)
  teacher = jnp.array([[0.0, math.log(3.0)]])
  student = jnp.zeros((1, 2))
  expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
  assert float(run(lambda s, t: distill.soft_kl(s, t, 1.0))(student, teacher)) == pytest.approx(
      expected, rel=1e-6)
  # At T = 2 the teacher's logits halve: softmax [1/(1+sqrt 3), sqrt 3/(1+sqrt 3)].
  p = 1 / (1 + math.sqrt(3))
  at_2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
  assert float(run(lambda s, t: distill.soft_kl(s, t, 2.0))(student, teacher)) == pytest.approx(
      at_2, rel=1e-6)


@pytest.mark.parametrize('run', RUNNERS)
def test_distillation_loss_mixes_hard_and_soft(run):
  student = jnp.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]])
  teacher = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
  labels = jnp.array([0, 2])
  hard = float(steps.cross_entropy(student, labels))
  soft = float(distill.soft_kl(student, teacher, 3.0))
  loss = run(lambda w: distill.distillation_loss(student, teacher, labels, w, 3.0))
  assert float(loss(0.0)) == pytest.approx(hard, rel=1e-6)
  assert float(loss(1.0)) == pytest.approx(9.0 * soft, rel=1e-6)
  assert float(loss(0.25)) == pytest.approx(0.75 * hard + 0.25 * 9.0 * soft, rel=1e-6)
  # A student that already matches its teacher has nothing left to learn from it.
  assert float(distill.distillation_loss(teacher, teacher, labels, 1.0, 3.0)) == pytest.approx(
      0.0, abs=1e-6)


def test_no_gradient_reaches_the_teacher():
  student = jnp.array([[1.0, -1.0, 0.5]])
  teacher = jnp.array([[2.0, 0.0, 0.0]])
  grad = jax.grad(lambda t: distill.distillation_loss(student, t, jnp.array([1]), 0.5, 2.0))(
      teacher)
  assert np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize('weight, temperature', [(-0.1, 1.0), (1.5, 1.0), (0.5, 0.0)])
def test_bad_settings_are_refused(weight, temperature):
  with pytest.raises(ValueError, match='distillation'):
    distill.Distillation(models.create_model('lenet5', 10), weight, temperature)


def test_equal_settings_give_equal_hooks():
  """Equal Distillation hooks hash equal, so the fits of one run share a compiled step."""
  model = models.create_model('lenet5', 10)
  assert distill.Distillation(model, 0.5, 2.0).hooks() == distill.Distillation(
      model, 0.5, 2.0).hooks()
  assert hash(distill.Distillation(model, 0.5).hooks()) == hash(
      distill.Distillation(model, 0.5).hooks())


def _relative_gap(a, b):
  a, b = np.concatenate([np.ravel(x) for x in a]), np.concatenate([np.ravel(x) for x in b])
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_train_step_descends_the_distillation_loss():
  """One SGD step (no momentum, no decay) with the hook moves the params by -lr * the gradient
  of the distillation loss, with the teacher in inference mode on the same batch."""
  model = models.create_model('lenet5', 10, mean=(0.1307,), std=(0.3081,))
  student = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  teacher = models.init_variables(model, jax.random.PRNGKey(1), (28, 28, 1))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  to_float = lambda key, x: x.astype(jnp.float32) / 255.0
  lr = 0.1
  options = loop.TrainOptions(learning_rate=lr, lr_schedule='constant', momentum=0.0,
                              nesterov=False, weight_decay=0.0, batch_size=8)
  tx = loop.make_optimizer(options, train_size=8)
  x = to_float(None, images)
  teacher_logits = model.apply(teacher, x, train=False)

  def updates(hooks):
    step = steps.make_train_step(model, tx, 8, to_float, hooks, donate=False)
    new_state, _ = step(create_state(student, tx), images, labels, jnp.arange(8), jnp.int32(0),
                        jax.random.PRNGKey(0), {distill.TEACHER: teacher}, steps.zero_metrics())
    return [a - b for a, b in zip(jax.tree_util.tree_leaves(new_state.params),
                                  jax.tree_util.tree_leaves(student['params']))]

  def expected(loss):
    def total(params):
      logits, _ = model.apply({'params': params, 'batch_stats': student['batch_stats']}, x,
                              train=True, mutable=['batch_stats'])
      return loss(logits)
    return [-lr * g for g in jax.tree_util.tree_leaves(jax.grad(total)(student['params']))]

  kd = expected(lambda lg: distill.distillation_loss(lg, teacher_logits, labels, 0.7, 2.0))
  ce = expected(lambda lg: steps.cross_entropy(lg, labels))
  got = updates(distill.Distillation(model, 0.7, 2.0).hooks())
  # The compiled step's conv gradients differ from plain autodiff by ~1 % (qprune's CPU conv
  # path); the distillation and the cross-entropy updates differ by far more than that.
  assert _relative_gap(got, kd) < 0.03
  assert _relative_gap(ce, kd) > 0.3
  assert _relative_gap(updates(steps.StepHooks()), ce) < 0.03
