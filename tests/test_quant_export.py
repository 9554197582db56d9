"""Export file: bit packing, save -> load bit-identical weights and predictions, bad files
rejected."""
import os
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qprune.models import create_model
from qprune.models.spec import model_spec
from qprune.quant import export, kmeans, report, targets


@pytest.mark.parametrize('bits', [1, 2, 3, 5, 7])
def test_pack_unpack_roundtrip(bits):
  codes = np.random.default_rng(bits).integers(0, 2 ** bits, size=37).astype(np.uint32)
  data = export.pack_codes(codes, bits)
  assert len(data) == int(np.ceil(37 * bits / 8))
  np.testing.assert_array_equal(export.unpack_codes(data, 37, bits), codes)


def test_encode_hand_case():
  # Set {0, ±1/4, ±1}: codes 0 -> 0, 1 -> 1/4, 2 -> 1, 3 -> -1/4, 4 -> -1.
  q = np.array([0.0, 0.25, 1.0, -0.25, -1.0, -0.0], np.float32)
  np.testing.assert_array_equal(export.encode(q, (-2, 0)), [0, 1, 2, 3, 4, 0])
  np.testing.assert_array_equal(export.code_table((-2, 0))[export.encode(q, (-2, 0))], q)
  with pytest.raises(ValueError, match='outside the target set'):
    export.encode(np.array([0.5], np.float32), (-2, 0))


def lenet_variables(seed=0):
  """Random LeNet-5 variables from shapes only (eval_shape; no slow compiled init)."""
  model = create_model('lenet5', 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1),
                                                                            jnp.uint8)))
  rng = np.random.default_rng(seed)
  leaf = lambda path, s: (np.abs(rng.normal(1, 0.1, s.shape)) if path[-1].key == 'var'
                          else rng.normal(0, 0.05, s.shape)).astype(np.float32)
  return model, jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  model, variables = lenet_variables()
  layers = targets.quantizable_layers(variables['params'])
  sets = kmeans.kmeans_targets(layers, k=3)
  sets['conv1'] = targets.inq_exponents(float(np.abs(layers['conv1']).max()), 3)  # mixed methods
  path = str(tmp_path_factory.mktemp('export') / 'lenet.qpq')
  spec = model_spec('lenet5', 10, (28, 28, 1), dataset='mnist')
  nbytes = export.save_quantized(path, variables, sets, spec)
  return model, variables, sets, path, nbytes


def test_save_load_bit_identical_weights_and_predictions(saved):
  model, variables, sets, path, nbytes = saved
  assert nbytes == os.path.getsize(path)
  loaded_model, loaded = export.load_quantized(path)
  expected = dict(variables, params=targets.quantize_params(variables['params'], sets))
  chex.assert_trees_all_equal(jax.device_get(loaded), jax.device_get(expected))  # bit for bit
  for name, w in targets.quantizable_layers(loaded['params']).items():
    assert bool(jnp.all(targets.in_target_set(w, sets[name]))), name
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1)), jnp.uint8)
  predict = lambda m, v: jax.jit(lambda v, x: m.apply(v, x, train=False))(v, images)
  chex.assert_trees_all_equal(predict(loaded_model, loaded), predict(model, expected))
  assert export.read_targets(path) == {k: tuple(v) for k, v in sets.items()}


def test_file_size_is_packed_codes_plus_floats(saved):
  _, variables, sets, path, nbytes = saved
  layers = targets.quantizable_layers(variables['params'])
  codes = sum(int(np.ceil(w.size * targets.bits_per_weight(len(sets[n])) / 8))
              for n, w in layers.items())
  floats = export.float32_nbytes(variables) - 4 * sum(w.size for w in layers.values())
  assert codes + floats < nbytes < (codes + floats) * 1.05 + 2048  # header is small
  assert nbytes < export.float32_nbytes(variables) / 8


def test_truncated_or_foreign_files_rejected(saved, tmp_path):
  *_, path, nbytes = saved
  data = open(path, 'rb').read()
  cases = {
      'truncated': data[:-10],
      'preamble': data[:5],
      'version': data[:8] + struct.pack('<H', 99) + data[10:],
      'magic': b'NOTQPRUN' + data[8:],
      'corrupt': data[:-1] + bytes([data[-1] ^ 0xFF]),
  }
  messages = {'truncated': 'truncated', 'preamble': 'truncated', 'version': 'version 99',
              'magic': 'bad magic', 'corrupt': 'CRC32'}
  for name, blob in cases.items():
    bad = tmp_path / f'{name}.qpq'
    bad.write_bytes(blob)
    with pytest.raises(ValueError, match=messages[name]):
      export.load_quantized(str(bad))


def test_layer_report(saved):
  _, variables, sets, _, _ = saved
  rows = report.layer_report(variables['params'], sets)
  assert [r['name'] for r in rows] == list(targets.quantizable_layers(variables['params']))
  for r in rows:
    assert r['bits'] == targets.bits_per_weight(len(r['exponents']))
    assert 1 <= r['distinct_values'] <= 2 * len(r['exponents']) + 1
    assert r['l1_error'] > 0
  again = report.layer_report(targets.quantize_params(variables['params'], sets), sets)
  assert all(r['l1_error'] == 0.0 for r in again)
  assert 'total' in report.format_table(rows)
  assert 2 <= report.average_bits(rows) <= 3


def test_entropy_coded_export_decodes_to_the_same_weights(tmp_path):
  """codec 'xz' (entropy_coding=True): the same dequantized weights as the bit-packed export,
  never larger, and much smaller when most codes are zero."""
  model = create_model('lenet5', 10)
  variables = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1),
                                                                         jnp.uint8), train=False))
  spec = model_spec('lenet5', 10, (28, 28, 1))
  for sparse in (False, True):
    if sparse:  # 90 % of fc1 at zero, like a pruned or strongly regularized layer
      fc1 = np.array(variables['params']['fc1']['kernel'])
      fc1[np.random.default_rng(0).random(fc1.shape) < 0.9] = 0.0
      variables['params']['fc1']['kernel'] = fc1
    layers = targets.quantizable_layers(variables['params'])
    chosen = kmeans.kmeans_targets(layers, k=3)
    packed = export.save_quantized(str(tmp_path / 'p.qpq'), variables, chosen, spec)
    coded = export.save_quantized(str(tmp_path / 'x.qpq'), variables, chosen, spec,
                                  entropy_coding=True)
    assert coded <= packed and (not sparse or coded < 0.6 * packed)
    _, a = export.load_quantized(str(tmp_path / 'p.qpq'))
    _, b = export.load_quantized(str(tmp_path / 'x.qpq'))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_encode_zero_free_hand_case():
  # Zero-free set {±1/4, ±1}: codes 0 -> 1/4, 1 -> 1, 2 -> -1/4, 3 -> -1; no code for 0.
  q = np.array([0.25, 1.0, -0.25, -1.0], np.float32)
  np.testing.assert_array_equal(export.encode(q, (-2, 0), zero=False), [0, 1, 2, 3])
  np.testing.assert_array_equal(export.code_table((-2, 0), zero=False), q)
  for outside in (0.0, -0.0, 0.5):
    with pytest.raises(ValueError, match='outside the target set'):
      export.encode(np.array([outside], np.float32), (-2, 0), zero=False)


def test_zero_free_export_round_trip_and_version(tmp_path):
  """Zero-free sets: 2 bits for 2 exponents, the same weights after load, version 3 (older
  readers refuse the file rather than misread it), and a header claiming the wrong bits or a
  zero-free leaf in a version-2 file is refused."""
  _, variables = lenet_variables()
  layers = targets.quantizable_layers(variables['params'])
  from qprune.quant import optimal  # pylint: disable=g-import-not-at-top
  sets = optimal.optimal_targets(layers, k=2, zero=False)
  spec = model_spec('lenet5', 10, (28, 28, 1), dataset='mnist')
  path = str(tmp_path / 'zf.qpq')
  nbytes = export.save_quantized(path, variables, sets, spec, zero=False)
  data = open(path, 'rb').read()
  assert struct.unpack_from('<H', data, 8)[0] == export.ZERO_FREE_VERSION
  _, loaded = export.load_quantized(path)
  expected = targets.quantize_params(variables['params'], sets, zero=False)
  chex.assert_trees_all_equal(jax.device_get(loaded['params']), jax.device_get(expected))
  for name, w in targets.quantizable_layers(loaded['params']).items():
    assert bool(jnp.all(w != 0)) and bool(jnp.all(targets.in_target_set(w, sets[name], False)))
  codes = sum(int(np.ceil(w.size * 2 / 8)) for w in layers.values())
  with_zero = export.save_quantized(str(tmp_path / 'z.qpq'), variables, sets, spec)
  assert nbytes < with_zero - codes // 3  # 2 bits a weight instead of 3
  header = export._parse_header(data)[0]  # pylint: disable=protected-access
  assert all(m.get('zero') is False for m in header['leaves'] if m['kind'] == 'codes')
  with pytest.raises(export.ExportFormatError, match='zero flag'):
    export._check_header(header, version=2)  # pylint: disable=protected-access
  leaf = next(m for m in header['leaves'] if m['kind'] == 'codes')
  leaf['bits'] = 3
  with pytest.raises(export.ExportFormatError, match=r'\(zero-free\) need 2'):
    export._check_header(header, version=3)  # pylint: disable=protected-access
