import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT, count_compiles

from qprune import models
from qprune.data import pipeline
from qprune.train import loop, optim


def _lenet(seed=0):
  model = models.create_model('lenet5', 10, mean=(0.1307,), std=(0.3081,))
  return model, models.init_variables(model, jax.random.PRNGKey(seed), (28, 28, 1))


def _subset(data, n_train, n_test=256):
  cut = lambda s, n: pipeline.Split(s.images[:n], s.labels[:n])
  return pipeline.Data(data.info, cut(data.train, n_train), cut(data.test, n_test))


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                    jax.tree_util.tree_leaves(b)))


def preempt_after_first_epoch(epoch, state, history):
  """An on_epoch_end that sends this process SIGTERM after epoch 1 (noticed at the next step,
  mid-epoch 2)."""
  if epoch == 1:
    os.kill(os.getpid(), signal.SIGTERM)
  return False, {}


@pytest.mark.real_data
def test_lenet_learns_real_mnist(mnist_small):
  model, variables = _lenet()
  options = loop.TrainOptions(epochs=2, batch_size=64, learning_rate=0.05, progress=False)
  result = loop.fit(model, variables, mnist_small, options, None)
  assert result.epochs_run == 2 and len(result.history) == 2
  assert result.history[1]['train_loss'] < result.history[0]['train_loss']
  assert result.test_accuracy > 0.9  # 2048 real images, 2 epochs


@pytest.mark.real_data
def test_sigterm_mid_epoch_then_resume_gives_identical_params(mnist_small, tmp_path):
  data = _subset(mnist_small, 512)
  model, variables = _lenet()
  options = loop.TrainOptions(epochs=3, batch_size=64, learning_rate=0.05, progress=False)
  straight = loop.fit(model, variables, data, options, str(tmp_path / 'a'))

  with pytest.raises(SystemExit, match='SIGTERM'):
    loop.fit(model, variables, data, options, str(tmp_path / 'b'),
             on_epoch_end=preempt_after_first_epoch)
  resumed = loop.fit(model, variables, data, options, str(tmp_path / 'b'))
  assert _leaves_equal(straight.state.params, resumed.state.params)
  assert _leaves_equal(straight.state.batch_stats, resumed.state.batch_stats)
  lines = (tmp_path / 'b' / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(ln)['epoch'] for ln in lines] == [1, 2, 3]
  assert [h['train_loss'] for h in resumed.history] == [h['train_loss'] for h in straight.history]


@pytest.mark.real_data
def test_finished_run_is_not_retrained(mnist_small, tmp_path):
  data = _subset(mnist_small, 256)
  model, variables = _lenet()
  options = loop.TrainOptions(epochs=1, batch_size=64, progress=False)
  first = loop.fit(model, variables, data, options, str(tmp_path))
  again = loop.fit(model, variables, data, options, str(tmp_path))
  assert _leaves_equal(first.state.params, again.state.params)
  assert len((tmp_path / 'metrics.jsonl').read_text().splitlines()) == 1


@pytest.mark.real_data
def test_frozen_elements_never_move(mnist_small):
  data = _subset(mnist_small, 256)
  model, variables = _lenet()
  rng = np.random.default_rng(0)
  freeze = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.random(p.shape) < 0.5),
                                  variables['params'])
  options = loop.TrainOptions(epochs=2, batch_size=64, weight_decay=1e-2, progress=False)
  result = loop.fit(model, variables, data, options, None, aux={'freeze_mask': freeze})
  for before, after, frozen in zip(*(jax.tree_util.tree_leaves(t) for t in
                                     (variables['params'], result.state.params, freeze))):
    np.testing.assert_array_equal(np.asarray(after)[np.asarray(frozen)],
                                  np.asarray(before)[np.asarray(frozen)])
    assert np.any(np.asarray(after)[~np.asarray(frozen)] != np.asarray(before)[~np.asarray(frozen)])


def test_diverging_loss_stops_with_a_hint(tmp_path):
  model, variables = _lenet()
  rng = np.random.default_rng(0)
  split = pipeline.Split(jnp.asarray(rng.integers(0, 256, (128, 28, 28, 1)), jnp.uint8),
                         jnp.asarray(rng.integers(0, 10, 128), jnp.int32))
  data = pipeline.Data(None, split, split)
  options = loop.TrainOptions(epochs=2, batch_size=64, learning_rate=1e12, progress=False)
  with pytest.raises(loop.TrainingDivergedError, match='lower learning_rate'):
    loop.fit(model, variables, data, options, str(tmp_path))


def test_freezable_optimizer_zeroes_updates_of_frozen_elements():
  tx = optim.freezable(optim.sgd(optim.lr_schedule('constant', 0.1, 10), weight_decay=0.1))
  params = {'kernel': jnp.array([1.0, -2.0, 3.0])}
  grads = {'kernel': jnp.array([0.5, 0.5, 0.5])}
  state = tx.init(params)
  mask = {'kernel': jnp.array([True, False, True])}
  for _ in range(3):
    updates, state = jax.jit(tx.update)(grads, state, params, freeze_mask=mask)
    np.testing.assert_array_equal(updates['kernel'][jnp.array([0, 2])], [0.0, 0.0])
    assert updates['kernel'][1] != 0


_TWO_DEVICE_SCRIPT = textwrap.dedent('''
    import sys, jax, numpy as np
    from qprune import models
    from qprune.data import pipeline
    from qprune.train import loop
    data = pipeline.load_data('mnist', sys.argv[1], train_subset=256, eval_subset=64,
                              cache_dir=sys.argv[2])
    model = models.create_model('lenet5', 10)
    variables = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
    options = loop.TrainOptions(epochs=1, batch_size=64, progress=False)
    init = [np.asarray(l) for l in jax.tree_util.tree_leaves(variables['params'])]  # fit donates
    result = loop.fit(model, variables, data, options, None)
    leaves = [np.asarray(l) for l in jax.tree_util.tree_leaves(result.state.params)]
    np.savez(sys.argv[3], n=jax.device_count(), **{f'init{i}': l for i, l in enumerate(init)},
             **{f'trained{i}': l for i, l in enumerate(leaves)})
''')


@pytest.mark.real_data
def test_two_host_devices_match_one(data_dir, cache_dir, mnist_small, tmp_path):
  outputs = {}
  for n in (1, 2):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
               PYTHONPATH=REPO_ROOT)
    out = str(tmp_path / f'{n}.npz')
    subprocess.run([sys.executable, '-c', _TWO_DEVICE_SCRIPT, data_dir, cache_dir, out],
                   env=env, check=True, capture_output=True, timeout=600)
    outputs[n] = np.load(out)
  assert int(outputs[1]['n']) == 1 and int(outputs[2]['n']) == 2
  # The two runs sum the batch in different orders, and four steps through BatchNorm amplify
  # that (on one CPU up to 0.1 % of the update, 4e-5 absolute, on another under 1e-5). A
  # sharding bug (unsynced BN statistics, gradients summed instead of averaged, half a batch)
  # moves the weights by a large fraction of the update (training on half of each batch: 26 % to
  # 150 % per leaf); so per leaf: |two - one| <= 1 % of how far one device's training moved it.
  leaves = [k[len('init'):] for k in outputs[1].files if k.startswith('init')]
  assert len(leaves) == 10  # LeNet-5's kernels and biases, BatchNorm's scales and offsets
  for i in leaves:
    init, one, two = outputs[1][f'init{i}'], outputs[1][f'trained{i}'], outputs[2][f'trained{i}']
    update = np.linalg.norm(one - init)
    assert update > 0
    assert np.linalg.norm(two - one) <= 1e-2 * update, (np.linalg.norm(two - one), update)


@pytest.mark.real_data
def test_bfloat16_compute_trains_with_float32_params(mnist_small):
  model = models.create_model('lenet5', 10, dtype=jnp.bfloat16)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  options = loop.TrainOptions(epochs=1, batch_size=64, learning_rate=0.05, progress=False)
  result = loop.fit(model, variables, _subset(mnist_small, 512), options, None)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(result.state.params))
  assert np.isfinite(result.history[0]['train_loss']) and result.test_accuracy > 0.5


@pytest.mark.real_data
def test_one_train_step_and_one_eval_compile_per_run(mnist_small):
  """A 3-epoch fit then three INQ-like fits with the same options: the train step and the
  evaluation compile once each, not per epoch or per fit."""
  from qprune import quant  # pylint: disable=g-import-not-at-top
  data = _subset(mnist_small, 128)
  model, variables = _lenet()
  # A learning rate no other test uses, so nothing is cached from earlier tests.
  options = loop.TrainOptions(epochs=3, batch_size=64, learning_rate=0.0123, progress=False)
  aux = {'freeze_mask': quant.no_frozen(variables['params'])}

  def run():
    result = loop.fit(model, variables, data, options, None, aux=aux)
    for _ in range(3):
      result = loop.fit(model, result.state.variables, data, options, None, aux=aux)
    return result

  result, step_compiles = count_compiles('jit(step)', run)
  assert result.epochs_run == 3
  assert step_compiles == 1
  _, eval_compiles = count_compiles('jit(evaluate)', lambda: loop.fit(
      model, variables, data, options, None, aux=aux))
  assert eval_compiles == 0  # compiled by `run` already


@pytest.mark.parametrize('distill_weight, learning_rate, eval_batch', [
    (0.0, 0.00321, 192), (0.5, 0.00322, 160)], ids=['plain', 'distilled'])
def test_quantize_mode_compiles_one_train_step_and_one_eval(mnist_small, tmp_path, distill_weight,
                                                            learning_rate, eval_batch):
  """A whole 4-step INQ run (3 retraining stages + the final BN/bias epoch, each its own fit)
  compiles the train step once and the evaluation once, with distillation too."""
  from qprune import configs  # pylint: disable=g-import-not-at-top
  from qprune.modes import common, quantize  # pylint: disable=g-import-not-at-top
  from qprune.train import parallel  # pylint: disable=g-import-not-at-top
  config = configs.sibling_config(os.path.join(REPO_ROOT, 'configs', 'x.py'), 'mnist_lenet5_quant')
  # A learning rate no other test uses, so nothing is cached from earlier tests.
  config.batch_size, config.quant.learning_rate, config.progress = 64, learning_rate, False
  config.quant.retrain_epochs, config.quant.final_epochs = 1, 1
  config.quant.distill_weight = distill_weight
  config.eval_batch_size = eval_batch  # an eval shape no other test compiles
  data = _subset(mnist_small, 128)
  model, variables = _lenet()
  spec = common.spec_for(config)
  spec['input_shape'] = (28, 28, 1)
  mesh = parallel.make_mesh()

  def run():
    return quantize.quantize_model(config, str(tmp_path), mesh, data, spec, variables)

  counts = {}
  record, counts['step'] = count_compiles('jit(step)', lambda: count_compiles(
      'jit(evaluate)', run))
  record, counts['evaluate'] = record
  assert len(record.inq_steps) == 3 and record.final_epochs == 1
  assert counts == {'step': 1, 'evaluate': 1}


def test_prune_mode_compiles_once_per_model_shape(mnist_small, tmp_path):
  """Pretraining (2 epochs), the candidate search and fine-tuning (2 epochs) compile the train
  step and the evaluation once per model shape (the unpruned and the shrunk one), not per epoch,
  and the search once for all its candidates."""
  from qprune import configs  # pylint: disable=g-import-not-at-top
  from qprune.modes import common  # pylint: disable=g-import-not-at-top
  from qprune.modes import prune as prune_mode
  from qprune.train import parallel  # pylint: disable=g-import-not-at-top
  config = configs.sibling_config(os.path.join(REPO_ROOT, 'configs', 'x.py'), 'mnist_lenet5_prune')
  config.mode, config.progress = 'prune', False
  # Shapes and a learning rate no other test uses, so nothing is cached from earlier tests.
  config.batch_size, config.eval_batch_size, config.learning_rate = 48, 176, 0.0123
  config.epochs, config.prune.stop_rule, config.prune.pretrain_epochs = 2, 'fixed', 2
  config.prune.search_criteria, config.prune.search_ratios = ('l1',), (0.5, 0.6)
  config.prune.search_selections, config.prune.max_params = ('uniform',), None
  config.prune.holdout, config.prune.bn_batches, config.prune.finetune_epochs = 100, 1, 2
  configs.validate(config)
  data = _subset(mnist_small, 400)
  _, variables = _lenet()
  spec = common.spec_for(config)
  mesh = parallel.make_mesh()

  def run():
    return prune_mode.prune_model(config, str(tmp_path), mesh, data, spec, variables)

  counts = {}
  nested, counts['step'] = count_compiles('jit(step)', lambda: count_compiles(
      'jit(evaluate)', lambda: count_compiles('evaluate_candidates', run)))
  (record, counts['search']), counts['evaluate'] = nested
  assert record.pretrain_epochs == 2 and record.finetune_epochs == 2
  assert counts == {'step': 2, 'evaluate': 2, 'search': 1}


def test_tensorboard_scalars_mirror_metrics(mnist_small, tmp_path):
  """tensorboard=True: every numeric field of each epoch's metrics line is also a TensorBoard
  scalar (tensorboardX event file under <stage>/tensorboard/); training is unchanged."""
  pytest.importorskip('tensorboardX')
  data = _subset(mnist_small, 128)
  model, variables = _lenet()
  options = loop.TrainOptions(epochs=2, batch_size=64, progress=False)
  plain = loop.fit(model, variables, data, options, str(tmp_path / 'plain'))
  board = loop.fit(model, variables, data, dataclasses.replace(options, tensorboard=True),
                   str(tmp_path / 'board'))
  assert _leaves_equal(plain.state.params, board.state.params)
  events = os.listdir(tmp_path / 'board' / 'tensorboard')
  assert len(events) == 1 and events[0].startswith('events.out.tfevents')
  raw = open(tmp_path / 'board' / 'tensorboard' / events[0], 'rb').read()
  for name in (b'train_loss', b'train_accuracy', b'test_accuracy'):
    assert name in raw


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
  from qprune.train import steps
  logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
  labels = jnp.array([0, 2])
  np.testing.assert_allclose(steps.smoothed_cross_entropy(logits, labels, 0.0),
                             steps.cross_entropy(logits, labels), rtol=1e-6)
  s = 0.1
  targets = (1 - s) * np.eye(3)[[0, 2]] + s / 3
  expected = -(targets * np.asarray(jax.nn.log_softmax(logits))).sum(-1).mean()
  np.testing.assert_allclose(steps.smoothed_cross_entropy(logits, labels, s), expected, rtol=1e-6)


def test_label_smoothing_changes_the_update_not_the_reported_loss(mnist_small):
  from qprune.train import steps
  from qprune.train.state import create_state
  model, variables = _lenet()
  data = _subset(mnist_small, 256)
  results = []
  for smoothing in (0.0, 0.3):
    tx = optim.sgd(optim.lr_schedule('constant', 0.1, 1), 0.9, 0.0)
    step = steps.make_train_step(model, optim.freezable(tx), 64, pipeline.AUGMENTATIONS['none'],
                                 donate=False, label_smoothing=smoothing)
    state, metrics = step(create_state(variables, optim.freezable(tx)), data.train.images,
                          data.train.labels, jnp.arange(256), jnp.int32(0),
                          jax.random.PRNGKey(0), {}, steps.zero_metrics())
    results.append((state.params, float(metrics['loss'])))
  (plain_params, plain_loss), (smooth_params, smooth_loss) = results
  assert plain_loss == pytest.approx(smooth_loss, rel=1e-6)  # the same forward pass, plain CE
  assert not _leaves_equal(plain_params, smooth_params)


def test_moving_average_follows_the_trained_weights(mnist_small):
  """ema_decay: after each step the average is decay_t x itself + (1 - decay_t) x the new
  variables, decay_t = min(decay, (1 + t) / (10 + t)); without it the state carries none."""
  from qprune.train import steps
  from qprune.train.state import create_state
  model, variables = _lenet()
  data = _subset(mnist_small, 256)
  tx = optim.freezable(optim.sgd(optim.lr_schedule('constant', 0.1, 1), 0.9, 0.0))
  step = steps.make_train_step(model, tx, 64, pipeline.AUGMENTATIONS['none'], donate=False,
                               ema_decay=0.99)
  state = create_state(variables, tx, ema=True)
  averages = [state.ema]
  for index in range(2):
    state, _ = step(state, data.train.images, data.train.labels, jnp.arange(256),
                    jnp.int32(index), jax.random.PRNGKey(0), {}, steps.zero_metrics())
    averages.append(state.ema)
  # Step t = 1 (the second) used decay_t = 2 / 11, below 0.99: the warm-up term decides.
  live = state.live_variables
  expected = jax.tree_util.tree_map(lambda a, v: (2 / 11) * a + (9 / 11) * v, averages[1], live)
  for got, want in zip(jax.tree_util.tree_leaves(averages[2]),
                       jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert state.variables is state.ema and not _leaves_equal(state.ema, live)
  assert create_state(variables, tx).ema is None


@pytest.mark.real_data
def test_moving_average_is_evaluated_saved_and_resumed(mnist_small, tmp_path):
  """fit with ema_decay: the reported accuracy is the average's, the state hands the average on,
  and a run preempted mid-epoch resumes to the same average."""
  data = _subset(mnist_small, 512)
  model, variables = _lenet()
  options = loop.TrainOptions(epochs=3, batch_size=64, learning_rate=0.05, progress=False,
                              ema_decay=0.9)
  straight = loop.fit(model, variables, data, options, str(tmp_path / 'a'))
  assert straight.state.variables is straight.state.ema
  assert straight.test_accuracy == pytest.approx(
      loop.evaluate(model, straight.state.ema, data.test, 1000)['accuracy'])
  assert not _leaves_equal(straight.state.ema, straight.state.live_variables)

  with pytest.raises(SystemExit, match='SIGTERM'):
    loop.fit(model, variables, data, options, str(tmp_path / 'b'),
             on_epoch_end=preempt_after_first_epoch)
  resumed = loop.fit(model, variables, data, options, str(tmp_path / 'b'))
  assert _leaves_equal(straight.state.ema, resumed.state.ema)


def test_linear_schedule_warms_up_then_decays_to_zero():
  schedule = optim.lr_schedule('linear', 0.2, 100, warmup_steps=10)
  values = [float(schedule(t)) for t in (0, 5, 10, 55, 100)]
  np.testing.assert_allclose(values, [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-7)
  np.testing.assert_allclose(float(optim.lr_schedule('linear', 0.2, 100)(50)), 0.1, atol=1e-7)
