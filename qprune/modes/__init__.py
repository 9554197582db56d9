"""Modes of the binary: each composes data, models, training, quantization and pruning.

A mode is `run(config, workdir, mesh) -> qprune.records.Results` (its mode's record; the
binary adds the run header and writes it as results.json).
"""
from qprune.modes import pipeline, prune, quantize, train

MODES = {'train': train.run, 'quantize': quantize.run, 'prune': prune.run,
         'pipeline': pipeline.run}
