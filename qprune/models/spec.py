"""A model's JSON-able description, stored beside checkpoints and exports so they can be rebuilt."""
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from qprune.models import create_model
from qprune.models.base import ZooModel

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def model_spec(name: str, num_classes: int, input_shape, *, width: float = 1.0,
               mean=(0.5,), std=(0.5,), channels: Mapping[str, int] | None = None,
               dataset: str = '') -> dict:
  """Everything needed to rebuild a model: plain JSON types only."""
  return {'name': name, 'num_classes': int(num_classes),
          'input_shape': [int(d) for d in input_shape],
          'width': float(width), 'mean': [float(m) for m in mean], 'std': [float(s) for s in std],
          'channels': {str(k): int(v) for k, v in (channels or {}).items()}, 'dataset': dataset}


def model_from_spec(spec: Mapping[str, Any], *, dtype: str = 'float32',
                    conv_impl: str = 'auto') -> ZooModel:
  """Inverse of `model_spec` (inference and training use the same module)."""
  return create_model(spec['name'], spec['num_classes'], width=spec['width'], dtype=DTYPES[dtype],
                      mean=spec['mean'], std=spec['std'], conv_impl=conv_impl,
                      channels=dict(spec.get('channels', {})))
