"""The errors that mean bad input (reported as one line, exit status 2), not a bug."""
from qprune.configs import ConfigError
from qprune.data.sources import DataNotFoundError
from qprune.modes.common import RunError
from qprune.train.checkpoint import CheckpointError
from qprune.train.loop import TrainingDivergedError

USER_ERRORS = (ConfigError, DataNotFoundError, RunError, CheckpointError, TrainingDivergedError)
