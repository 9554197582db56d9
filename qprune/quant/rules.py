"""Target rules by name: the one registry `quant.method` is checked against and dispatched by.

  choose_targets(layers, 'optimal', k=3)                 # {layer: exponents}
  choose_targets(layers, 'inq', bits=4)
  choose_targets(layers, 'kmeans', bits_budget=2.5)      # adaptive k: a bit budget ...
  choose_targets(layers, 'optimal', tolerance=0.05)      # ... or an L1-error tolerance
  choose_targets(layers, 'optimal', k=2, zero=False)     # {±2^a, ±2^b}: 2 bits, no zero code

'inq' is INQ's rule (Zhou et al. 2017: the top exponent from max|w|, then 2^(bits-1) - 1 below
it); 'kmeans' clusters log2|w| per layer; 'optimal' is the exactly least-error set (a dynamic
program over integer exponents; `objective` 'l1' or 'l2').
"""
from collections.abc import Callable, Mapping

from qprune.quant.kmeans import kmeans_targets
from qprune.quant.optimal import optimal_targets
from qprune.quant.targets import Targets, inq_targets


def _inq(layers, *, bits: int = 4, zero: bool = True, **unused) -> Targets:
  del unused
  if not zero:
    raise ValueError("INQ's rule has a zero code: zero=False needs method 'optimal'")
  return inq_targets(layers, bits)


def _clustered(fn):
  def rule(layers, *, k: int = 3, k_max: int = 8, tolerance: float | None = None,
           bits_budget: float | None = None, objective: str = 'l1', zero: bool = True,
           **unused) -> Targets:
    del unused
    if tolerance:
      choice = {'tolerance': tolerance}
    elif bits_budget:
      choice = {'bits_per_weight': bits_budget}
    else:
      choice = {'k': k}
    if fn is not optimal_targets and not zero:
      raise ValueError('k-means clusters with a zero code: zero=False needs method \'optimal\'')
    extra = {'objective': objective, 'zero': zero} if fn is optimal_targets else {}
    targets = fn(layers, k_max=k_max, **choice, **extra)
    empty = sorted(name for name, exponents in targets.items() if not exponents)
    if not zero and empty:
      raise ValueError(f'zero-free targets need a nonzero weight in every layer; all zero: '
                       f'{", ".join(empty)}')
    return targets
  return rule


TARGET_RULES: dict[str, Callable[..., Targets]] = {
    'kmeans': _clustered(kmeans_targets),
    'optimal': _clustered(optimal_targets),
    'inq': _inq,
}


def choose_targets(layers: Mapping, method: str, **options) -> Targets:
  """Target sets of `layers` ({name: weights}) by the rule `method` (a TARGET_RULES key).

  options: bits (inq); k, k_max, tolerance, bits_budget, objective (kmeans, optimal; a
  tolerance wins over a bit budget, which wins over k); zero=False (optimal only): zero-free
  sets {±2^e} (`targets` module docstring)."""
  if method not in TARGET_RULES:
    raise ValueError(f'unknown target rule {method!r}; choose one of '
                     f'{", ".join(TARGET_RULES)}')
  return TARGET_RULES[method](layers, **options)
