"""Flax NNX modules wherever Linen works: the same functions take an nnx.Module (its state
inside) and give back the same kind, a new module where Linen gets variables; the module passed
is never changed."""
import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import optax
import pytest
from flax import nnx

import qprune
from qprune import deploy, prune, quant

X = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))


class Net(nnx.Module):
  """Conv-BN, a depthwise conv (coupled), a residual add, a GroupNorm'd branch concatenated."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.depthwise = nnx.Conv(8, 8, (3, 3), feature_group_count=8, use_bias=False, rngs=rngs)
    self.blocks = nnx.List([nnx.Conv(8, 8, (3, 3), rngs=rngs), nnx.Conv(8, 4, (1, 1), rngs=rngs)])
    self.gn = nnx.GroupNorm(4, num_groups=2, rngs=rngs)
    self.head = nnx.Linear(12, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.stem(x)))
    x = x + nnx.relu(self.blocks[0](self.depthwise(x)))
    x = jnp.concatenate([x, nnx.gelu(self.gn(self.blocks[1](x)))], -1)
    return self.head(x.mean((1, 2)))


def _leaves(module):
  return [np.asarray(v) for v in jax.tree.leaves(nnx.state(module))]


@pytest.fixture(scope='module')
def pruned():
  module = Net(rngs=nnx.Rngs(0))
  before = _leaves(module)
  groups = prune.derive_groups(module, example_input=X)
  masks = prune.make_masks(module, groups, 'l1', 0.5)
  small = prune.shrink(module, groups, masks)
  return module, before, groups, masks, small


def test_groups_masks_shrink_return_new_modules(pruned):
  module, before, groups, masks, small = pruned
  assert {g.name: g.size for g in groups} == {'stem': 8, 'blocks/1': 4}
  assert next(g for g in groups if g.name == 'blocks/1').block == 2  # whole GroupNorm groups
  assert isinstance(small, Net) and small is not module
  assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(module)))  # untouched
  assert small.stem.kernel.shape == (3, 3, 3, 4) and small.depthwise.feature_group_count == 4
  assert small.gn.num_groups == 1 and small.head.in_features == 6
  small.eval()
  gated = prune.apply_with_gates(module, X, groups, masks)
  np.testing.assert_allclose(small(X), gated, atol=1e-5)
  masked = prune.apply_masks(module, groups, masks)
  assert isinstance(masked, Net) and masked.stem.kernel.shape == module.stem.kernel.shape
  assert qprune.count_params(small) < qprune.count_params(module)
  assert qprune.count_macs(small, X) < qprune.count_macs(module, X)


def test_quantization_returns_new_modules(pruned):
  module = pruned[0]
  layers = quant.quantizable_layers(module)
  assert set(layers) == {'stem', 'depthwise', 'blocks/0', 'blocks/1', 'head'}
  targets = quant.inq_targets(layers, 3)
  quantized = quant.quantize_params(module, targets)
  assert not np.array_equal(np.asarray(quantized.stem.kernel), np.asarray(module.stem.kernel))
  assert bool(quant.in_target_set(quantized.head.kernel[...], targets['head']).all())
  seen = []

  def retrain(m, mask):
    seen.append(type(m).__name__)
    return m

  out, _ = quant.run_inq(module, targets, retrain, schedule=(0.5, 1.0))
  assert seen == ['Net'] and isinstance(out, Net)
  assert bool(quant.in_target_set(out.stem.kernel[...], targets['stem']).all())


def test_inq_optax_drives_an_nnx_optimizer():
  module = Net(rngs=nnx.Rngs(0))
  targets = quant.inq_targets(quant.quantizable_layers(module), 4)
  optimizer = nnx.Optimizer(module, quant.inq_optax(optax.sgd(0.01), targets, steps_per_stage=2),
                            wrt=nnx.Param)
  labels = jnp.arange(4) % 5

  @nnx.jit
  def step(m, opt):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(X), labels).mean()
    opt.update(m, nnx.grad(loss)(m))

  for _ in range(7):
    step(module, optimizer)
  assert bool(quant.inq_done(optimizer.opt_state))
  for name, w in quant.quantizable_layers(module).items():
    assert bool(quant.in_target_set(w, targets[name]).all()), name


def test_save_load_and_onnx_of_a_pruned_quantized_module(pruned, tmp_path):
  small = pruned[4]
  targets = quant.inq_targets(quant.quantizable_layers(small), 3)
  quantized = quant.quantize_params(small, targets)
  path = str(tmp_path / 'net.qpq')
  quant.save_quantized(path, quantized, targets, example_input=X)
  loaded = qprune.load_quantized(path, model=Net(rngs=nnx.Rngs(7)))
  loaded.eval()
  quantized.eval()
  np.testing.assert_array_equal(loaded(X), quantized(X))
  assert loaded.gn.num_groups == 1
  session = onnxruntime.InferenceSession(deploy.to_onnx(loaded, None, X),
                                         providers=['CPUExecutionProvider'])
  logits = session.run(None, {'images': np.asarray(X)})[0]
  np.testing.assert_allclose(logits, loaded(X), atol=1e-4)
  assert (logits.argmax(-1) == np.asarray(loaded(X)).argmax(-1)).all()


def test_tracker_and_search_take_a_module():
  module = Net(rngs=nnx.Rngs(0))
  tracker = prune.EarlyBirdTracker('l1', 0.5, window=2, example_input=X)
  assert not tracker.update(module)
  assert tracker.update(module)  # same weights: the same masks twice
  images = (jax.random.uniform(jax.random.PRNGKey(2), (2, 4, 8, 8, 3)) * 255)
  labels = jnp.zeros((2, 4), jnp.int32)
  found = prune.search(module, tracker.groups,
                       prune.candidate_grid(['l1'], [0.25, 0.5], ['uniform']), X,
                       images, images, labels)
  assert len(found.rows) == 2 and set(found.best_masks) == {g.name for g in tracker.groups}
