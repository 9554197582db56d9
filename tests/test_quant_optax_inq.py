"""quant.inq_optax: INQ inside a plain optax loop equals quant.run_inq, compiles once,
checkpoints."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO_ROOT, count_compiles

from qprune import quant

STEPS = 5                     # updates per stage: 1 snap + 4 train steps
SCHEDULE = quant.DEFAULT_SCHEDULE
TOTAL = (len(SCHEDULE) - 1) * STEPS + 1


def _problem():
  rng = np.random.default_rng(0)
  params = {'l1': {'kernel': jnp.asarray(0.5 * rng.standard_normal((6, 5)), jnp.float32),
                   'bias': jnp.zeros(5)},
            'l2': {'kernel': jnp.asarray(0.5 * rng.standard_normal((5, 3)), jnp.float32),
                   'bias': jnp.zeros(3)}}
  xs = jnp.asarray(rng.standard_normal((TOTAL, 16, 6)), jnp.float32)
  ys = jnp.asarray(rng.standard_normal((TOTAL, 16, 3)), jnp.float32)
  targets = quant.kmeans_targets(quant.quantizable_layers(params), k=3)
  return params, xs, ys, targets


def _loss(p, x, y):
  h = jnp.tanh(x @ p['l1']['kernel'] + p['l1']['bias'])
  return jnp.mean((h @ p['l2']['kernel'] + p['l2']['bias'] - y) ** 2)


def _bits(tree):
  return jax.tree.map(lambda a: np.asarray(a).view(np.uint32).copy(), tree)


def _optax_loop(params, xs, ys, tx, start=0, stop=TOTAL, opt_state=None):
  @jax.jit
  def inq_train_step(p, s, x, y):
    updates, s = tx.update(jax.grad(_loss)(p, x, y), s, p)
    return optax.apply_updates(p, updates), s
  opt_state = tx.init(params) if opt_state is None else opt_state
  for t in range(start, stop):  # batch t at update t (snap updates ignore theirs)
    params, opt_state = inq_train_step(params, opt_state, xs[t], ys[t])
  return params, opt_state


def _run_inq(params, xs, ys, targets, inner, fresh_optimizer_per_stage):
  """quant.run_inq whose retrain does STEPS - 1 steps on the batches the optax loop trains on."""
  @jax.jit
  def retrain_step(p, o, mask, x, y):
    updates, o = inner.update(jax.grad(_loss)(p, x, y), o, p)
    return optax.apply_updates(p, quant.zero_frozen(updates, mask)), o
  carried = {'stage': 0, 'opt': inner.init(params)}

  def retrain(p, mask):
    stage = carried['stage']
    o = inner.init(p) if fresh_optimizer_per_stage else carried['opt']
    for t in range(stage * STEPS + 1, (stage + 1) * STEPS):
      p, o = retrain_step(p, o, mask, xs[t], ys[t])
    carried.update(stage=stage + 1, opt=o)
    return p
  return quant.run_inq(params, targets, retrain, SCHEDULE)


@pytest.mark.parametrize('reset', [False, True])
def test_same_weights_as_run_inq_bit_for_bit(reset):
  params, xs, ys, targets = _problem()
  inner = optax.sgd(0.1, momentum=0.9)
  tx = quant.inq_optax(inner, targets, STEPS, SCHEDULE, reset_inner_on_snap=reset)
  ours, state = _optax_loop(params, xs, ys, tx)
  theirs, mask = _run_inq(params, xs, ys, targets, inner, reset)
  assert bool(quant.inq_done(state))
  # Identical values: float equality, which is bit equality except that a zero weight may be
  # +0.0 here (p + (0 - p)) and -0.0 in run_inq (its last snap computes sgn(w)·0 for w < 0).
  assert jax.tree.all(jax.tree.map(np.array_equal, ours, theirs))
  assert jax.tree.all(jax.tree.map(np.array_equal, state.mask, mask))
  for name in targets:
    assert bool(jnp.all(quant.in_target_set(ours[name]['kernel'], targets[name])))
  # The biases trained too (they are not quantized), so this was not a trivial run.
  assert float(jnp.max(jnp.abs(ours['l1']['bias']))) > 0
  assert jax.tree.all(jax.tree.map(np.array_equal, _bits(quant.inq_params(ours, state)),
                                   _bits(ours)))


def test_one_compilation_for_the_whole_schedule():
  params, xs, ys, targets = _problem()
  tx = quant.inq_optax(optax.adam(1e-2), targets, STEPS, SCHEDULE)
  (_, state), compiles = count_compiles('inq_train_step',
                                        lambda: _optax_loop(params, xs, ys, tx))
  assert compiles == 1
  assert int(state.stage) == len(SCHEDULE) and int(state.count) == TOTAL


def test_state_is_arrays_and_resumes_from_a_host_copy():
  params, xs, ys, targets = _problem()
  tx = quant.inq_optax(optax.sgd(0.1, momentum=0.9), targets, STEPS, SCHEDULE)
  straight, _ = _optax_loop(params, xs, ys, tx)
  half = TOTAL // 2
  p, s = _optax_loop(params, xs, ys, tx, stop=half)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(s))
  saved = jax.tree.map(np.asarray, jax.device_get((p, s)))  # what a checkpoint would hold
  p2, s2 = jax.tree.map(jnp.asarray, saved)
  resumed, _ = _optax_loop(p2, xs, ys, tx, start=half, opt_state=s2)
  assert jax.tree.all(jax.tree.map(np.array_equal, _bits(straight), _bits(resumed)))


def test_works_inside_a_chain_and_reports_stage():
  params, xs, ys, targets = _problem()
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   quant.inq_optax(optax.sgd(0.05), targets, STEPS, SCHEDULE))
  p, s = _optax_loop(params, xs, ys, tx, stop=STEPS + 1)
  assert not bool(quant.inq_done(s))
  frozen = float(np.mean(np.asarray(quant.optax_inq._find_state(s).mask['l1']['kernel'])))
  assert frozen == pytest.approx(np.ceil(0.75 * 30) / 30)
  with pytest.raises(quant.InqOptaxError, match='one InqState'):
    quant.inq_done(optax.sgd(0.1).init(params))


def test_bad_arguments_are_clear_errors():
  params, _, _, targets = _problem()
  with pytest.raises(quant.InqOptaxError, match='increasing'):
    quant.inq_optax(optax.sgd(0.1), targets, STEPS, (0.75, 0.5))
  with pytest.raises(quant.InqOptaxError, match='steps_per_stage'):
    quant.inq_optax(optax.sgd(0.1), targets, 0)
  tx = quant.inq_optax(optax.sgd(0.1), targets, STEPS)
  state = tx.init(params)
  with pytest.raises(quant.InqOptaxError, match='needs params'):
    tx.update(params, state)


def test_docs_optax_example_runs(capsys):
  page = open(os.path.join(REPO_ROOT, 'docs', 'library.md')).read()
  section = page.split('## Compression inside your own optax loop', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  assert 'tx = quant.inq_optax(' in code
  exec(compile(code, 'docs/library.md', 'exec'), {})  # pylint: disable=exec-used
  assert capsys.readouterr().out.strip().splitlines()[-1] == 'True True'
