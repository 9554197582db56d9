"""Low-level ops the models are built from."""
