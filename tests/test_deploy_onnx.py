"""ONNX export: onnxruntime logits equal qprune's (full, shrunk and quantized models) and the
CLI."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT

import qprune
from qprune import deploy, files, prune, quant
from qprune.models.spec import model_spec
from qprune.modes import common

ort = pytest.importorskip('onnxruntime')  # in the test extra: always installed under CI

TOL = 1e-4


def _session(data: bytes):
  return ort.InferenceSession(data, providers=['CPUExecutionProvider'])


def _random_stats(variables, seed=0):
  """Non-trivial BatchNorm statistics and affine params, so folding them is really tested."""
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = path[-1].key
    if name in ('var', 'scale'):
      return x * np.float32(0.5) + rng.uniform(0.0, 1.0, x.shape).astype(np.float32)
    if name in ('mean', 'bias'):
      return x + rng.normal(0.0, 0.2, x.shape).astype(np.float32)
    return x
  return jax.tree_util.tree_map_with_path(perturb, variables)


def _lenet(seed=0):
  model = qprune.create_model('lenet5', 10, mean=(0.1307,), std=(0.3081,))
  variables = qprune.init_variables(model, jax.random.PRNGKey(seed), (28, 28, 1))
  return model, _random_stats(variables, seed)


def _check(model, variables, images, input_shape, **kwargs):
  ours = np.asarray(model.apply(variables, images, train=False))
  theirs = _session(deploy.to_onnx(model, variables, input_shape, **kwargs)).run(
      None, {'images': np.asarray(images)})[0]
  assert theirs.shape == ours.shape and theirs.dtype == np.float32
  diff = float(np.max(np.abs(theirs - ours)))
  assert diff <= TOL, diff
  return ours, theirs


@pytest.mark.real_data
def test_lenet5_full_pruned_and_quantized_match_on_real_mnist(mnist_small, tmp_path):
  images = np.asarray(mnist_small.test.images[:300])
  model, variables = _lenet()
  _check(model, variables, images, (28, 28, 1))
  _check(model, variables, images[:64], (28, 28, 1), fold_bn=False)

  groups = prune.derive_groups(variables)
  masks = prune.make_masks(variables, groups, 'l1', 0.5, 'uniform')
  small_model, small_variables = prune.shrink(model, variables, groups, masks)
  _check(small_model, small_variables, images, (28, 28, 1))

  targets = quant.kmeans_targets(quant.quantizable_layers(variables['params']), k=3)
  spec = model_spec('lenet5', 10, (28, 28, 1), mean=(0.1307,), std=(0.3081,))
  quant.save_quantized(str(tmp_path / 'm.qpq'), variables, targets, spec)
  model_q, variables_q = qprune.load_quantized(str(tmp_path / 'm.qpq'))
  ours, theirs = _check(model_q, variables_q, images, (28, 28, 1))
  labels = np.asarray(mnist_small.test.labels[:300])
  assert np.mean(ours.argmax(-1) == labels) == np.mean(theirs.argmax(-1) == labels)


@pytest.mark.slow
def test_resnet20_full_and_residual_pruned_graph():
  model = qprune.create_model('resnet20', 10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
  variables = _random_stats(qprune.init_variables(model, jax.random.PRNGKey(1), (32, 32, 3)), 1)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  _check(model, variables, images, (32, 32, 3))
  groups = prune.derive_groups(variables, residual=True)
  masks = prune.make_masks(variables, groups, 'l1', 0.5, 'uniform')
  small_model, small_variables = prune.shrink(model, variables, groups, masks)
  assert small_variables['params']['stage3_block3']['conv2']['kernel'].shape[-1] < 64  # stream
  _check(small_model, small_variables, images, (32, 32, 3))


def test_unsupported_model_and_bad_shape_are_clear_errors():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  with pytest.raises(deploy.UnsupportedModelError, match='Dense does not run on an input'):
    deploy.to_onnx(nn.Dense(3), {'params': {}}, (28, 28, 1))  # not the zoo: traced, and it fails
  model, variables = _lenet()
  with pytest.raises(deploy.UnsupportedModelError, match='input_shape'):
    deploy.to_onnx(model, variables, (28, 28))


def _fake_run(workdir, model_name='lenet5', quantized=False):
  """A finished-run workdir as the binary leaves it (model.json + model/ + results.json)."""
  model, variables = _lenet()
  spec = model_spec(model_name, 10, (28, 28, 1), mean=(0.1307,), std=(0.3081,))
  results = {'mode': 'train'}
  if quantized:
    targets = quant.kmeans_targets(quant.quantizable_layers(variables['params']), k=3)
    path = os.path.join(workdir, 'model.qpq')
    os.makedirs(workdir, exist_ok=True)
    quant.save_quantized(path, variables, targets, spec)
    variables = {**variables, 'params': quant.quantize_params(variables['params'], targets)}
    results = {'mode': 'quantize', 'export_path': path}
  common.save_model(workdir, spec, variables)
  files.write_json_atomic(os.path.join(workdir, 'results.json'), results)
  return model, variables


def test_export_of_a_quantized_run_reads_the_qpq(tmp_path):
  from qprune import export  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  _fake_run(workdir, quantized=True)
  out = export.export(workdir, 'onnx')
  assert out['source'].endswith('model.qpq') and os.path.getsize(out['out']) == out['bytes']
  model_q, variables_q = qprune.load_quantized(out['source'])
  images = np.random.default_rng(2).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  theirs = _session(open(out['out'], 'rb').read()).run(None, {'images': images})[0]
  ours = np.asarray(model_q.apply(variables_q, images, train=False))
  assert np.max(np.abs(theirs - ours)) <= TOL
  codes = export.export(workdir, 'codes')
  assert codes['out'].endswith('model_codes.npz') and os.path.exists(codes['out'])


def test_cli_exports_a_run_and_rejects_bad_input(tmp_path):
  workdir = str(tmp_path / 'run')
  model, variables = _fake_run(workdir)
  out = str(tmp_path / 'lenet.onnx')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-m', 'qprune.export', f'--workdir={workdir}',
                         '--format=onnx', f'--out={out}'], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.strip().splitlines()[-1])['out'] == out
  images = np.random.default_rng(3).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  theirs = _session(open(out, 'rb').read()).run(None, {'images': images})[0]
  assert np.max(np.abs(theirs - np.asarray(model.apply(variables, images)))) <= TOL
  proc = subprocess.run([sys.executable, '-m', 'qprune.export', f'--workdir={workdir}',
                         '--format=codes'], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 2 and 'no quantized export' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_export_of_a_pruned_run_uses_its_shrunk_spec(tmp_path):
  from qprune import export  # pylint: disable=g-import-not-at-top
  model, variables = _lenet()
  groups = prune.derive_groups(variables)
  masks = prune.make_masks(variables, groups, 'l1', 0.5, 'uniform')
  small_model, small_variables = prune.shrink(model, variables, groups, masks)
  spec = model_spec('lenet5', 10, (28, 28, 1), mean=(0.1307,), std=(0.3081,),
                    channels=prune.shrunk_widths(groups, masks))
  workdir = str(tmp_path / 'pruned')
  common.save_model(workdir, spec, small_variables)
  files.write_json_atomic(os.path.join(workdir, 'results.json'), {'mode': 'prune'})
  out = export.export(workdir, 'onnx', str(tmp_path / 'p.onnx'))
  images = np.random.default_rng(4).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  theirs = _session(open(out['out'], 'rb').read()).run(None, {'images': images})[0]
  ours = np.asarray(small_model.apply(small_variables, images, train=False))
  assert np.max(np.abs(theirs - ours)) <= TOL
  with pytest.raises(deploy.ExportError, match='no finished run'):
    export.export(str(tmp_path), 'onnx')


@pytest.mark.real_data
def test_verify_committed_quantized_lenet_on_the_full_test_split(data_dir, cache_dir):
  """The committed 3-bit LeNet-5 through onnxruntime: the same predictions on all 10k images."""
  import os  # pylint: disable=g-import-not-at-top

  from conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top

  from qprune.deploy import verify  # pylint: disable=g-import-not-at-top
  result = verify.verify(os.path.join(REPO_ROOT, 'results', 'mnist_lenet5', 'optimal_k3'),
                         data_dir)
  assert result['images'] == 10000 and result['max_abs_logit_diff'] < 1e-4
  assert result['onnx_accuracy'] == result['qprune_accuracy'] > 0.99
