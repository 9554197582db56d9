"""Training: optimizer, state, jitted steps, the epoch loop, checkpoints, data parallelism."""
from qprune.train.loop import FitResult, TrainingDivergedError, TrainOptions, evaluate, fit
from qprune.train.steps import StepHooks
