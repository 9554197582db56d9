"""Element-wise masking of pytrees, shared by the optimizer (frozen weights get no update) and
INQ (which weights are frozen): below both, so neither imports the other."""
import jax
import jax.numpy as jnp


def zero_frozen(updates, mask):
  """Updates with frozen entries set to exactly 0 (apply after the optimizer, before apply_updates).

  mask: a bool pytree shaped like `updates`, True = frozen."""
  return jax.tree.map(lambda u, m: jnp.where(m, jnp.zeros_like(u), u), updates, mask)
