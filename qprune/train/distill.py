"""Knowledge distillation: train a student on a teacher's softened outputs (Hinton et al., 2015,
"Distilling the Knowledge in a Neural Network").

Used while retraining a quantized model, where the teacher is the full-precision model it
started from (Polino et al., 2018, "Model compression via distillation and quantization"; Mishra
and Marr, 2018, "Apprentice"): the soft targets pull the partly frozen network back towards the
function it had, instead of fitting the hard labels further.

    loss = (1 - weight) * CE(student, labels)
           + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

T^2 keeps the soft term's gradient on the scale of the hard one as T grows (Hinton et al.).
The teacher runs in inference mode (its BatchNorm running statistics) on the same augmented batch,
its variables come in `aux['teacher']`, so changing them needs no recompilation.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from qprune.train import steps

TEACHER = 'teacher'  # the aux key of the teacher's variables


def soft_kl(student_logits, teacher_logits, temperature: float) -> jax.Array:
  """Mean over the batch of KL(softmax(teacher / T) || softmax(student / T))."""
  log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def distillation_loss(student_logits, teacher_logits, labels, weight: float,
                      temperature: float) -> jax.Array:
  """(1 - weight) * cross-entropy on labels + weight * T^2 * soft KL (module docstring)."""
  hard = steps.cross_entropy(student_logits, labels)
  soft = soft_kl(student_logits, jax.lax.stop_gradient(teacher_logits), temperature)
  return (1.0 - weight) * hard + weight * temperature ** 2 * soft


@dataclasses.dataclass(frozen=True)
class Distillation:
  """A `StepHooks.task_loss` distilling from a teacher of architecture `model`.

  Frozen and compared by value, so the fits of one run (the INQ steps, the final epoch) that
  build equal hooks share one compiled train step.
  """
  model: nn.Module
  weight: float
  temperature: float = 1.0

  def __post_init__(self):
    if not 0.0 <= self.weight <= 1.0:
      raise ValueError(f'distillation weight must be in [0, 1], got {self.weight}')
    if not self.temperature > 0:
      raise ValueError(f'distillation temperature must be > 0, got {self.temperature}')

  def __call__(self, logits, labels, images, aux: Any) -> jax.Array:
    teacher = self.model.apply(aux[TEACHER], images, train=False)
    return distillation_loss(logits, teacher, labels, self.weight, self.temperature)

  def hooks(self) -> steps.StepHooks:
    return steps.StepHooks(task_loss=self)
