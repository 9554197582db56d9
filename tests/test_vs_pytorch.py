"""benchmarks.vs_pytorch: its PyTorch models mirror the zoo's, and the side-by-side epoch runs.

Skipped without PyTorch (an optional extra, .[bench]; CI does not install it).
"""
import pytest

torch = pytest.importorskip('torch')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from qprune import models  # noqa: E402
from reproduce.benchmarks import vs_pytorch  # noqa: E402


@pytest.mark.parametrize('name,shape,build', [
    ('lenet5', (28, 28, 1), vs_pytorch.torch_lenet5),
    ('resnet20', (32, 32, 3), vs_pytorch.torch_resnet20)])
def test_torch_models_mirror_the_zoo(name, shape, build):
  variables = models.init_variables(models.create_model(name, 10), jax.random.PRNGKey(0), shape)
  model = build()
  assert vs_pytorch.torch_param_count(model) == models.count_params(variables['params'])
  # Same per-layer shapes, kernels as HWIO <-> OIHW.
  zoo = sorted(sorted(x.shape) for x in jax.tree.leaves(variables['params']))
  assert zoo == sorted(sorted(p.shape) for p in model.parameters())
  images = torch.from_numpy(np.zeros((2, shape[2], *shape[:2]), np.uint8))
  assert model.eval()(images).shape == (2, 10)


@pytest.mark.slow  # ~6 s: compiles the LeNet-5 train step
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_lenet5_epochs_side_by_side(dtype):
  r = vs_pytorch.bench_lenet5(batch_size=16, n_images=64, rounds=1, warmup=1, pause_s=0.0,
                              dtype=dtype)
  assert r['dtype'] == dtype
  assert r['steps_per_epoch'] == 4 and r['qprune_params'] == r['pytorch_params'] == 431_150
  assert r['qprune_epoch_s'] > 0 and r['pytorch_epoch_s'] > 0
  assert r['ratio'] == pytest.approx(r['qprune_epoch_s'] / r['pytorch_epoch_s'])
