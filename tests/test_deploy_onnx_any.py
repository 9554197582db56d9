"""ONNX for models outside the zoo, built from the jaxpr, checked in onnxruntime against JAX."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
import pytest

import qprune
from qprune import deploy, prune

X = jax.random.normal(jax.random.PRNGKey(1), (4, 12, 12, 3))


class Mixed(nn.Module):
  """LayerNorm, GroupNorm, a depthwise conv, concatenation, average pooling, flatten, GELU."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.gelu(nn.LayerNorm()(nn.Conv(8, (3, 3), strides=2)(x)))
    y = nn.GroupNorm(num_groups=2)(nn.Conv(8, (3, 3), feature_group_count=8)(x))
    x = jnp.concatenate([x, nn.relu(y)], -1)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


def _onnx_logits(data, x):
  session = onnxruntime.InferenceSession(data, providers=['CPUExecutionProvider'])
  return session.run(None, {'images': np.asarray(x)})[0]


def test_any_linen_model_and_its_shrunk_form_match_jax():
  model = Mixed()
  variables = model.init(jax.random.PRNGKey(0), X)
  logits = _onnx_logits(deploy.to_onnx(model, variables, X), X)
  expected = model.apply(variables, X)
  np.testing.assert_allclose(logits, expected, atol=1e-5)
  assert (logits.argmax(-1) == np.asarray(expected).argmax(-1)).all()
  groups = prune.derive_groups(variables, model=model, example_input=X)
  small, small_vars = prune.shrink(model, variables, groups,
                                   prune.make_masks(variables, groups, 'l1', 0.5))
  np.testing.assert_allclose(_onnx_logits(deploy.to_onnx(small, small_vars, X), X),
                             small.apply(small_vars, X), atol=1e-5)


def test_zoo_model_through_the_jaxpr_builder_matches_the_zoo_graph():
  model = qprune.create_model('lenet5', 10)
  variables = qprune.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
  ours = _onnx_logits(deploy.to_onnx(model, variables, images, builder='jaxpr'), images)
  zoo = _onnx_logits(deploy.to_onnx(model, variables, (28, 28, 1)), images)
  np.testing.assert_allclose(ours, zoo, atol=1e-3)
  np.testing.assert_allclose(ours, model.apply(variables, images, train=False), atol=1e-3)


def test_the_traced_graph_takes_any_batch_size():
  """Exported from a one-image example, the graph runs batches of 1, 3 and 7 (a symbolic batch
  axis: flatten, pooling and broadcasts read it at run time) and matches JAX on each; a model
  whose Python computes with the batch size is told to fix it, and then exports fixed."""
  model = Mixed()
  variables = model.init(jax.random.PRNGKey(0), X)
  data = deploy.to_onnx(model, variables, X[:1])
  proto = onnx.load_from_string(data)
  batch_dims = [v.type.tensor_type.shape.dim[0] for v in (*proto.graph.input, *proto.graph.output)]
  assert [d.dim_param for d in batch_dims] == ['batch', 'batch']
  for n in (1, 3, 7):
    images = jax.random.normal(jax.random.PRNGKey(n), (n, 12, 12, 3))
    np.testing.assert_allclose(_onnx_logits(data, images), model.apply(variables, images),
                               atol=1e-5)

  class PerBatchScale(nn.Module):  # the batch size as a number in the model's arithmetic
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(x) * np.float32(1.0 / x.shape[0])

  scaled = PerBatchScale()
  scaled_vars = scaled.init(jax.random.PRNGKey(0), jnp.zeros((2, 4)))
  with pytest.raises(deploy.UnsupportedPrimitiveError, match='dynamic_batch=False'):
    deploy.to_onnx(scaled, scaled_vars, jnp.ones((2, 4)))
  fixed = onnx.load_from_string(deploy.to_onnx(scaled, scaled_vars, jnp.ones((2, 4)),
                                               dynamic_batch=False))
  assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
  with pytest.raises(deploy.UnsupportedModelError, match="pass builder='jaxpr'"):
    zoo = qprune.create_model('lenet5', 10)
    deploy.to_onnx(zoo, qprune.init_variables(zoo, jax.random.PRNGKey(0), (28, 28, 1)),
                   (28, 28, 1), dynamic_batch=False)


def test_an_untranslated_primitive_is_named():
  class Sorts(nn.Module):
    @nn.compact
    def __call__(self, x):
      return jnp.sort(nn.Dense(3)(x), axis=-1)

  model = Sorts()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
  with pytest.raises(deploy.UnsupportedPrimitiveError, match="primitive 'sort'"):
    deploy.to_onnx(model, variables, jnp.zeros((1, 4)))
