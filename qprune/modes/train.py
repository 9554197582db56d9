"""mode=train: train a model of the zoo (from scratch or from init_from) and save it."""

from qprune.modes import common
from qprune.records import TrainResults
from qprune.train import loop


def run(config, workdir: str, mesh) -> TrainResults:
  spec, variables = common.initial_model(config)  # before the data: a bad init_from fails fast
  data = common.load_data(config, mesh)
  model = common.build(spec, config)
  result = loop.fit(model, variables, data, common.train_options(config), workdir, mesh=mesh,
                    label='train')
  variables = result.state.variables
  common.save_model(workdir, spec, variables)
  return TrainResults(test_accuracy=result.test_accuracy, epochs_run=result.epochs_run,
                      train_examples=data.train.size, test_examples=data.test.size,
                      history=result.history, **common.model_counts(spec, variables, config))
