"""The channel-group records: `Slot` (one tensor axis a group indexes) and `ChannelGroup`.

They live apart from the code that derives groups (`qprune.prune.groups` by the zoo's names,
`qprune.prune.trace` from the data flow) so that both import the records and neither the other.
"""
import dataclasses
from collections.abc import Sequence

from qprune.errors import UserError

RESIDUAL = 'residual'


@dataclasses.dataclass(frozen=True)
class Slot:
  """One tensor axis that a group indexes.

  path: module path joined by '/', e.g. 'stage1_block1/conv2'.
  length: the member uses the prefix mask[:length] (< group size only in the residual group).
  repeat: consumer rows per channel after a flatten (mask tiled `repeat` times); 1 otherwise.
  offset: where the slice starts on the layer's axis (a concatenation's later inputs; a BatchNorm
    or depthwise conv after it).
  period: rows between two tiles after a flatten (the concatenated width); 0 means `length`.
  The member's positions on the layer axis are `p * (period or length) + offset + c` for
  p < repeat and c < length.
  """
  path: str
  length: int
  repeat: int = 1
  offset: int = 0
  period: int = 0

  def positions(self):
    """numpy indices of this slot on its layer axis, channel-major within each tile."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    period = self.period or self.length
    return (np.arange(self.repeat)[:, None] * period + self.offset +
            np.arange(self.length)[None, :]).ravel()


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """Coupled channels pruned together.

  producers: kernels (conv (kh, kw, in, C) or dense (in, C) + its bias) whose output axis is this
    group's channels. norms: BatchNorm layers (scale, bias and batch_stats mean, var) on them.
    consumers: kernels whose input axis (conv axis 2, dense axis 0) reads them.
    gates: modules whose output is this group's activation (the BNs, or the dense producer when
    there is no BN): masking in activation space multiplies these outputs by the mask.
    widths: (channels-override key, prefix length) pairs for `create_model(channels=...)`;
      empty for traced groups of non-zoo models (shrink then rebuilds layers by `features`).
    depthwise: producers that are depthwise convs coupled to this group (in = out channels).
    channel_norms: ((path, kind, block, width), ...) of the norms among `norms` that normalize
      across channels: kind 'layer' (LayerNorm), 'rms' (RMSNorm) or 'group' (GroupNorm), block
      the channels of one GroupNorm group (1 otherwise), width the layer's channel count. Masked
      evaluation normalizes these over the kept channels only; GroupNorm channels are kept or
      pruned in whole groups of `block` (so a shrunk GroupNorm keeps its group size).
  """
  name: str
  size: int
  producers: tuple[Slot, ...]
  norms: tuple[Slot, ...]
  consumers: tuple[Slot, ...]
  widths: tuple[tuple[str, int], ...]
  depthwise: tuple[str, ...] = ()
  channel_norms: tuple[tuple[str, str, int, int], ...] = ()

  @property
  def block(self) -> int:
    """Channels pruned together (GroupNorm groups; 1 = any channel on its own)."""
    import math  # pylint: disable=g-import-not-at-top
    return math.lcm(1, *(n[2] for n in self.channel_norms))

  @property
  def gates(self) -> tuple[Slot, ...]:
    return self.norms if self.norms else self.producers

  @property
  def prefix_lengths(self) -> tuple[int, ...]:
    """Every prefix that some layer sees; each must keep >= 1 channel."""
    return tuple(sorted({s.length for s in self.producers}))


Groups = tuple[ChannelGroup, ...]


class IgnoredLayersError(UserError):
  """`ignored_layers` names a layer the model does not have."""


def _matches(path: str, patterns: Sequence[str]) -> bool:
  return any(path == p or (p.endswith('/') and path.startswith(p)) for p in patterns)


def ignore_layers(groups: Groups, ignored_layers: Sequence[str], known=None) -> Groups:
  """Groups without those whose producers include an ignored layer (see derive_groups).

  known: every layer path that may be named (default: the groups' own members)."""
  if isinstance(ignored_layers, str):
    ignored_layers = (ignored_layers,)
  if not ignored_layers:
    return tuple(groups)
  known = set(known or ()) | {s.path for g in groups for s in g.producers + g.consumers + g.norms}
  unknown = [p for p in ignored_layers if not p.endswith('/') and p not in known]
  if unknown:
    raise IgnoredLayersError(f'ignored_layers: no layer {unknown[0]!r} in the groups; layers are '
                     f'{sorted(known)}')
  return tuple(g for g in groups if not any(_matches(s.path, ignored_layers) for s in g.producers))
