"""The open integer-code .npz: docs/deployment.md's numpy-only loader rebuilds load_quantized's
weights exactly."""
import os
import re

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT
from flax import traverse_util

import qprune
from qprune import deploy, quant
from qprune.models.spec import model_spec


def _readme_loader():
  page = open(os.path.join(REPO_ROOT, 'docs', 'deployment.md')).read()
  section = page.split('## Integer codes without qprune', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  imports = re.findall(r'^\s*(?:import|from)\s+(\w+)', code, re.M)
  assert set(imports) == {'json', 'numpy'}, imports  # numpy only: no qprune
  namespace = {}
  exec(compile(code, 'docs/deployment.md', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace['load_qprune_codes']


def _quantized_export(tmp_path, name='lenet5', shape=(28, 28, 1), k=3):
  model = qprune.create_model(name, 10)
  variables = qprune.init_variables(model, jax.random.PRNGKey(0), shape)
  targets = quant.kmeans_targets(quant.quantizable_layers(variables['params']), k=k)
  targets = {**targets, next(iter(targets)): ()} if k == 0 else targets
  spec = model_spec(name, 10, shape)
  path = str(tmp_path / 'model.qpq')
  quant.save_quantized(path, variables, targets, spec)
  return variables, targets, spec, path


def _assert_bits_equal(flat, variables):
  want = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  assert set(flat) == set(want)
  for key, value in want.items():
    got = np.asarray(flat[key])
    assert got.dtype == np.float32 and got.shape == value.shape, key
    assert np.array_equal(got.view(np.uint32), np.asarray(value, np.float32).view(np.uint32)), key


def test_readme_loader_is_bit_exact_against_load_quantized(tmp_path):
  variables, targets, spec, qpq = _quantized_export(tmp_path)
  out = str(tmp_path / 'model_codes.npz')
  nbytes = deploy.qpq_file_to_codes(qpq, out)
  assert nbytes == os.path.getsize(out)
  _, reference = qprune.load_quantized(qpq)
  spec_read, flat = _readme_loader()(out)
  assert spec_read == spec
  _assert_bits_equal(flat, reference)
  with np.load(out) as z:  # the integer tensors really are integers, tables are metadata
    assert z['params/conv1/kernel.sign'].dtype == np.int8
    assert z['params/conv1/kernel.index'].dtype == np.uint8
    assert list(z['params/conv1/kernel.exponents']) == list(targets['conv1'])
    assert set(np.unique(z['params/conv1/kernel.sign'])) <= {-1, 0, 1}


def test_save_codes_and_load_codes_match_the_qpq(tmp_path):
  variables, targets, spec, qpq = _quantized_export(tmp_path)
  out = str(tmp_path / 'direct.npz')
  deploy.save_codes(out, variables, targets, spec)
  model_q, reference = qprune.load_quantized(qpq)
  model_c, loaded = deploy.load_codes(out)
  _assert_bits_equal(traverse_util.flatten_dict(jax.device_get(loaded), sep='/'), reference)
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
  np.testing.assert_array_equal(model_c.apply(loaded, images), model_q.apply(reference, images))


def test_zero_free_codes_match_the_qpq(tmp_path):
  """Zero-free sets: the .npz has signs ±1 only and indices from 1, and both loaders rebuild the
  .qpq's weights bit for bit."""
  model = qprune.create_model('lenet5', 10)
  variables = qprune.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  targets = quant.choose_targets(quant.quantizable_layers(variables['params']), 'optimal', k=2,
                                 zero=False)
  spec = model_spec('lenet5', 10, (28, 28, 1))
  qpq = str(tmp_path / 'model.qpq')
  quant.save_quantized(qpq, variables, targets, spec, zero=False)
  out = str(tmp_path / 'codes.npz')
  deploy.qpq_file_to_codes(qpq, out)
  _, reference = qprune.load_quantized(qpq)
  _, flat = _readme_loader()(out)
  _assert_bits_equal(flat, reference)
  deploy.save_codes(str(tmp_path / 'direct.npz'), variables, targets, spec, zero=False)
  _, loaded = deploy.load_codes(str(tmp_path / 'direct.npz'))
  _assert_bits_equal(traverse_util.flatten_dict(jax.device_get(loaded), sep='/'), reference)
  with np.load(out) as z:
    assert set(np.unique(z['params/conv1/kernel.sign'])) == {-1, 1}
    assert set(np.unique(z['params/conv1/kernel.index'])) == {1, 2}


@pytest.mark.slow
def test_resnet_and_an_empty_target_set(tmp_path):
  variables, targets, spec, qpq = _quantized_export(tmp_path, 'resnet20', (32, 32, 3), k=2)
  empty = dict(targets, fc=())  # a layer whose only code is zero
  quant.save_quantized(qpq, variables, empty, spec)
  out = str(tmp_path / 'r.npz')
  deploy.qpq_file_to_codes(qpq, out)
  _, reference = qprune.load_quantized(qpq)
  _, flat = _readme_loader()(out)
  _assert_bits_equal(flat, reference)
  assert not np.any(flat['params/fc/kernel'])


def test_not_a_codes_file_is_a_clear_error(tmp_path):
  bad = tmp_path / 'x.npz'
  np.savez(bad, a=np.zeros(2))
  with pytest.raises(deploy.CodesFormatError, match='qprune-codes-v1'):
    deploy.load_codes(str(bad))
  (tmp_path / 'y.npz').write_bytes(b'garbage')
  with pytest.raises(deploy.CodesFormatError, match='readable'):
    deploy.load_codes(str(tmp_path / 'y.npz'))
