"""Fault injection at the library's boundary: every case calls one public function with one bad
input and checks the answer with tests/test_faults.py's `Outcome` protocol. A `UserError` is the
clear answer (status 2, its message as the `qprune: error:` line), a warning is reported as a
`qprune: warning:` line, any other exception is a traceback (status 1), a return is status 0;
`unchanged` checks that nothing was written where the call refused.

`CASES` {name: fn(env, tmp) -> Outcome}; `env` (tests/test_faults.py's Env) is not needed here.
`tools/fault_table.py` collects these with the binary's cases.
"""
import functools
import os
import sys
import traceback
import warnings

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_faults import Outcome, case_registry  # noqa: E402  pylint: disable=wrong-import-position

CASES, _, case = case_registry()


def call(fn, *args, **kwargs) -> tuple:
  """(status, output, result) of a library call, as the Outcome protocol reads it."""
  from qprune.errors import UserError  # pylint: disable=g-import-not-at-top
  result = None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    try:
      result = fn(*args, **kwargs)
      status, output = 0, ''
    except UserError as e:
      status, output = 2, f'qprune: error: {e}'
    except Exception:  # pylint: disable=broad-except
      status, output = 1, traceback.format_exc()
  notes = [f'qprune: warning: {w.message}' for w in caught
           if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
  return status, '\n'.join(notes + [output]).strip(), result


def outcome(fn, *args, expect='', expect_status=2, written=None, **kwargs) -> Outcome:
  status, output, _ = call(fn, *args, **kwargs)
  unchanged = None if written is None else not os.path.exists(written)
  return Outcome(status, output, expect_status=expect_status, expect=expect, unchanged=unchanged)


@functools.cache
def lenet():
  """(model, variables, groups, masks) of LeNet-5 (random weights; pruning by layer names)."""
  import jax  # pylint: disable=g-import-not-at-top

  import qprune  # pylint: disable=g-import-not-at-top
  from qprune import prune  # pylint: disable=g-import-not-at-top
  model = qprune.create_model('lenet5', num_classes=10)
  variables = qprune.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  groups = prune.derive_groups(variables)
  masks = prune.make_masks(variables, groups, 'l1', 0.5)
  return model, variables, groups, masks


def _spec():
  from qprune.models.spec import model_spec  # pylint: disable=g-import-not-at-top
  return model_spec('lenet5', 10, (28, 28, 1))


def _targets():
  from qprune import quant  # pylint: disable=g-import-not-at-top
  return quant.inq_targets(quant.quantizable_layers(lenet()[1]['params']), 3)


# ---------------------------------------------------------------------------------------------
# Target sets and quantization.

@case('lib_kmeans_targets_empty')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  return outcome(quant.kmeans_targets, {}, k=3, expect='layers is empty')


@case('lib_optimal_targets_empty')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  return outcome(quant.optimal_targets, {}, k=3, expect='layers is empty')


@case('lib_kmeans_targets_k_zero')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  layers = quant.quantizable_layers(lenet()[1]['params'])
  return outcome(quant.kmeans_targets, layers, k=0, expect=r'k is the number of exponents.*got 0')


@case('lib_optimal_targets_k_negative')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  layers = quant.quantizable_layers(lenet()[1]['params'])
  return outcome(quant.optimal_targets, layers, k=-2, expect=r'integer >= 1; got -2')


@case('lib_quantize_fractional_exponent')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  return outcome(quant.quantize_params, lenet()[1]['params'], {'conv1': (-3.5, -2)},
                 expect=r"targets\['conv1'\] has exponent -3.5")


@case('lib_quantize_targets_for_missing_layers')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  return outcome(quant.quantize_params, lenet()[1]['params'], {'stage1_block1/conv1': (-3,)},
                 expect='names layers the model lacks')


@case('lib_run_inq_empty_schedule')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  return outcome(quant.run_inq, lenet()[1]['params'], _targets(), lambda p, m: p, schedule=(),
                 expect='schedule must be increasing fractions')


@case('lib_save_quantized_targets_for_missing_layers')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, 'm.qpq')
  return outcome(quant.save_quantized, path, lenet()[1], {'fc9': (-3,)}, _spec(),
                 expect='names layers the model lacks', written=path)


@case('lib_save_quantized_spec_not_a_zoo_spec')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, 'm.qpq')
  return outcome(quant.save_quantized, path, lenet()[1], _targets(), {},
                 expect='not a zoo model spec', written=path)


@case('lib_save_quantized_spec_of_another_model')
def _(env, tmp):
  from qprune import quant  # pylint: disable=g-import-not-at-top
  from qprune.models.spec import model_spec  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, 'm.qpq')
  return outcome(quant.save_quantized, path, lenet()[1], _targets(),
                 model_spec('resnet20', 10, (32, 32, 3)),
                 expect='spec does not describe these variables', written=path)


@case('lib_save_quantized_params_instead_of_variables')
def _(env, tmp):
  import numpy as np  # pylint: disable=g-import-not-at-top

  import qprune  # pylint: disable=g-import-not-at-top
  from qprune import quant  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, 'm.qpq')
  status, output, _ = call(quant.save_quantized, path, lenet()[1]['params'], _targets(), None)
  if status == 0:  # accepted: the file must then load (with the model: no batch_stats stored)
    status, output, loaded = call(qprune.load_quantized, path, model=lenet()[0])
    if status == 0 and not np.allclose(
        np.asarray(loaded[1]['params']['fc2']['bias']),
        np.asarray(lenet()[1]['params']['fc2']['bias'])):
      status, output = 1, 'Traceback: loaded leaves differ'
  return Outcome(status, output, expect_status=0)


@case('lib_load_quantized_user_model_without_model')
def _(env, tmp):
  import qprune  # pylint: disable=g-import-not-at-top
  from qprune import quant  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, 'm.qpq')
  status, output, _ = call(quant.save_quantized, path, lenet()[1], _targets(), None)
  if status:
    return Outcome(status, output, expect='pass the model')
  return outcome(qprune.load_quantized, path,
                 expect='holds a model outside the zoo.*pass the model')


def _saved_user_lenet(tmp):
  """A LeNet-5 saved as a model outside the zoo (no spec), with its model and example input."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from qprune import quant  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, 'm.qpq')
  example = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.uint8)
  status, output, _ = call(quant.save_quantized, path, lenet()[1], _targets(), None,
                           model=lenet()[0], example_input=example)
  return path, status, output


@case('lib_load_quantized_model_of_another_class')
def _(env, tmp):
  import qprune  # pylint: disable=g-import-not-at-top
  path, status, output = _saved_user_lenet(tmp)
  if status:
    return Outcome(status, output, expect='holds a LeNet5; the given model is')
  return outcome(qprune.load_quantized, path, model=qprune.create_model('resnet20', 10),
                 expect='holds a LeNet5; the given model is a ResNetCifar')


@case('lib_load_quantized_model_of_other_widths')
def _(env, tmp):
  import qprune  # pylint: disable=g-import-not-at-top
  path, status, output = _saved_user_lenet(tmp)
  if status:
    return Outcome(status, output, expect='stored shape')
  return outcome(qprune.load_quantized, path, model=qprune.create_model('lenet5', 5),
                 expect=r"leaf 'params/fc\d/(bias|kernel)': stored shape \(10,\), the given "
                        'LeNet5 needs')


@case('lib_load_quantized_missing_file')
def _(env, tmp):
  import qprune  # pylint: disable=g-import-not-at-top
  path = os.path.join(tmp, 'absent.qpq')
  return outcome(qprune.load_quantized, path, expect='absent.qpq: cannot read it')


# ---------------------------------------------------------------------------------------------
# Pruning.

@case('lib_make_masks_params_instead_of_variables')
def _(env, tmp):
  from qprune import prune  # pylint: disable=g-import-not-at-top
  _, variables, groups, _ = lenet()
  return outcome(prune.make_masks, variables['params'], groups, 'l1', 0.5, expect_status=0)


@case('lib_shrink_all_false_mask')
def _(env, tmp):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from qprune import prune  # pylint: disable=g-import-not-at-top
  model, variables, groups, masks = lenet()
  bad = {**masks, 'conv1': jnp.zeros_like(masks['conv1'])}
  return outcome(prune.shrink, model, variables, groups, bad,
                 expect=r"masks\['conv1'\] keeps no channel")


@case('lib_shrink_short_mask')
def _(env, tmp):
  from qprune import prune  # pylint: disable=g-import-not-at-top
  model, variables, groups, masks = lenet()
  bad = {**masks, 'conv1': masks['conv1'][:5]}
  return outcome(prune.shrink, model, variables, groups, bad,
                 expect=r"masks\['conv1'\] has shape \(5,\); the group has 20 channels")


@case('lib_shrink_another_models_masks')
def _(env, tmp):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from qprune import prune  # pylint: disable=g-import-not-at-top
  model, variables, groups, _ = lenet()
  other = {'stage1_block1/conv1': jnp.ones((16,), bool)}
  return outcome(prune.shrink, model, variables, groups, other, expect='masks of another model')


@case('lib_shrink_float_scores_as_masks')
def _(env, tmp):
  from qprune import prune  # pylint: disable=g-import-not-at-top
  model, variables, groups, _ = lenet()
  scores = prune.score('l1', variables, groups)
  return outcome(prune.shrink, model, variables, groups, scores, expect='float32, not bool')


@case('lib_shrink_another_models_groups')
def _(env, tmp):
  import jax  # pylint: disable=g-import-not-at-top

  import qprune  # pylint: disable=g-import-not-at-top
  from qprune import prune  # pylint: disable=g-import-not-at-top
  model, variables, _, _ = lenet()
  resnet = qprune.create_model('resnet20', 10)
  resnet_vars = qprune.init_variables(resnet, jax.random.PRNGKey(0), (32, 32, 3))
  other = prune.derive_groups(resnet_vars)
  masks = prune.full_masks(other)
  return outcome(prune.shrink, model, variables, other, masks, expect='groups of another model')


@case('lib_derive_groups_no_model_outside_the_zoo')
def _(env, tmp):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from qprune import prune  # pylint: disable=g-import-not-at-top
  variables = {'params': {'Conv_0': {'kernel': jnp.zeros((3, 3, 1, 4))}}}
  return outcome(prune.derive_groups, variables, expect='pass model= and example_input=')


# ---------------------------------------------------------------------------------------------
# Models.

@case('lib_create_model_zero_classes')
def _(env, tmp):
  import qprune  # pylint: disable=g-import-not-at-top
  return outcome(qprune.create_model, 'lenet5', num_classes=0,
                 expect='num_classes must be an integer >= 1, got 0')


@case('lib_create_model_negative_width')
def _(env, tmp):
  import qprune  # pylint: disable=g-import-not-at-top
  return outcome(qprune.create_model, 'vgg11', num_classes=10, width=-1.0, expect='width is a')


@case('lib_float_images_in_0_1')
def _(env, tmp):
  import numpy as np  # pylint: disable=g-import-not-at-top
  model, variables, _, _ = lenet()
  images = np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
  return outcome(model.apply, variables, images, train=False, expect_status=0,
                 expect=r'float images in \[0, 1\]')


# ---------------------------------------------------------------------------------------------
# pytest.

@pytest.mark.parametrize('name', list(CASES))
def test_library_fault(tmp_path, name):
  result = CASES[name](None, str(tmp_path))
  assert not result.problems(), (result.problems(), result.output[-2000:])


def test_uint8_images_raise_no_warning():
  import numpy as np  # pylint: disable=g-import-not-at-top
  model, variables, _, _ = lenet()
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype(np.uint8)
  status, output, _ = call(model.apply, variables, images, train=False)
  assert (status, output) == (0, '')
  status, output, _ = call(model.apply, variables, images.astype(np.float32), train=False)
  assert (status, output) == (0, '')
