"""`ShrunkModel`: any Flax (Linen) model run with some layers' widths overridden, the shrunk form
of a model outside the zoo (`qprune.prune.shrink` builds it; `quant.load_quantized(path,
model=...)` rebuilds it from a file's overrides)."""
import dataclasses
from collections.abc import Mapping

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ShrunkModel:
  """A Flax model run with some layers' widths overridden: the shrunk form of any model.

  Contract: every pruned producer is a layer whose `features` field sets its output width
  (`nn.Conv`, `nn.Dense`, `nn.ConvTranspose`, qprune's `layers.Conv`); a depthwise conv also
  gets `feature_group_count = features`, a GroupNorm its kept `num_groups` (or keeps its
  `group_size`). Every other layer must infer its width from its input (BatchNorm, LayerNorm,
  RMSNorm do). `apply`/`init` run `model` with those fields replaced at call time (an
  `nn.intercept_methods` interceptor on the layers named in `overrides`), so the variable tree,
  layer paths and call signature stay the model's own.

  overrides: ((layer path, ((field, value), ...)), ...). To save a shrunk user model, store
  `dict(small.overrides_dict())` as JSON beside its variables; rebuild it with
  `ShrunkModel.from_dict(YourModel(...), saved)`.
  """
  model: object
  overrides: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]

  def _intercept(self, next_fun, args, kwargs, context):
    fields = self._table().get('/'.join(context.module.path))
    if fields and isinstance(context.module, nn.GroupNorm):  # it takes one of the two fields
      fields = tuple((f, v) for f, v in fields if getattr(context.module, f) is not None)
    if fields:
      for field, value in fields:
        if getattr(context.module, field) != value:
          object.__setattr__(context.module, field, value)
    return next_fun(*args, **kwargs)

  def _table(self):
    return dict(self.overrides)

  def apply(self, variables, *args, **kwargs):
    with nn.intercept_methods(self._intercept):
      return self.model.apply(variables, *args, **kwargs)

  def init(self, rngs, *args, **kwargs):
    with nn.intercept_methods(self._intercept):
      return self.model.init(rngs, *args, **kwargs)

  def overrides_dict(self) -> dict[str, dict[str, int]]:
    """JSON-able {layer path: {field: value}}."""
    return {path: dict(fields) for path, fields in self.overrides}

  @classmethod
  def from_dict(cls, model, overrides: Mapping[str, Mapping[str, int]]) -> 'ShrunkModel':
    return cls(model, freeze_overrides(overrides))


def freeze_overrides(overrides) -> tuple:
  return tuple(sorted((str(p), tuple(sorted((str(f), int(v)) for f, v in fields.items())))
                      for p, fields in overrides.items()))
