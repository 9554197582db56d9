"""The research harness of qprune: how the committed results were made, kept apart from the library.

Not part of the installed package (setup.cfg ships `qprune` only); run it from a checkout:

  python -m reproduce.results write                    # RESULTS.md and results/plots/
  python -m reproduce.sweeps.cifar10_resnet20 DATA OUT gpu   # a study: runs, publishes, rewrites
  python -m reproduce.benchmarks.train_step --model=resnet20 # speed

It uses only qprune's public modules (nothing in qprune imports it); docs/reproduce.md lists
every command.
"""
