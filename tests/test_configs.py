"""Every shipped config loads and validates, in the mode it is written for."""
import glob
import json
import os

import pytest
from conftest import REPO_ROOT

from qprune import configs

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'configs', '**', '*.py'), recursive=True))


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_loads_and_validates(path):
  config = configs.sibling_config(path, os.path.splitext(os.path.basename(path))[0])
  if config.mode == 'quantize':
    config.init_from = '/some/trained/run'
  configs.validate(config)


def test_bad_values_are_all_named_at_once():
  config = configs.base_config()
  config.epochs = -1
  config.prune.ratio = 1.0
  config.mode = 'prune'
  with pytest.raises(configs.ConfigError) as e:
    configs.validate(config)
  assert 'epochs=-1' in str(e.value) and 'prune.ratio' in str(e.value)


def test_a_config_json_from_an_older_schema_matches_its_own_command():
  """Fields added to the schema later are filled at their defaults, so an older run resumes."""
  wanted = configs.semantic_dict(configs.base_config())
  older = json.loads(json.dumps(wanted))
  del older['quant']['final_epochs'], older['prune']['aggregate'], older['compute_dtype']
  assert configs.with_new_defaults(older) == wanted
  older['quant']['k'] = 1  # a real difference stays one
  assert configs.with_new_defaults(older) != wanted


def test_unset_optional_fields_are_none_and_the_older_spellings_still_mean_unset():
  """'' / 0 / () were how "not set" was spelled before None: config files, command lines and
  config.json files of earlier runs that use them read as None (and aggregate '' as 'none')."""
  base = configs.base_config()
  for path in configs.UNSET_FIELDS:
    node = base
    for name in path.split('.'):
      node = node[name]
    assert node is None, path
  config = configs.base_config()
  config.mode = 'prune'
  config.init_from, config.train_subset, config.prune.search_ratios = '', 0, ()
  config.prune.max_params, config.quant.tolerance, config.prune.aggregate = 0.0, 0.0, ''
  configs.validate(config)
  assert (config.init_from, config.train_subset, config.prune.search_ratios,
          config.prune.max_params, config.quant.tolerance) == (None,) * 5
  assert config.prune.aggregate == 'none'
  config.train_subset, config.prune.max_params = 500, 0.4  # set values stay set
  configs.validate(config)
  assert (config.train_subset, config.prune.max_params) == (500, 0.4)

  wanted = configs.semantic_dict(configs.base_config())
  older = json.loads(json.dumps(wanted))
  older.update(init_from='', train_subset=0, eval_subset=0)
  older['prune'].update(search_criteria=[], max_macs=0.0, decide_from='', aggregate='')
  older['quant'].update(bits_budget=0.0)
  wanted['prune']['aggregate'] = 'none'
  assert configs.with_new_defaults(older) == wanted
  older['train_subset'] = 100  # a real difference stays one
  assert configs.with_new_defaults(older) != wanted


@pytest.mark.parametrize('field, value, message', [
    ('method', 'exact', "quant.method='exact'"),
    ('objective', 'l3', "quant.objective='l3'"),
    ('final_epochs', -1, 'quant.final_epochs=-1'),
    ('distill_weight', 1.5, 'quant.distill_weight=1.5: must be in .0, 1.'),
    ('distill_temperature', 0.0, 'quant.distill_temperature=0.0: must be > 0'),
    ('exclude', ('conv1', ''), 'quant.exclude'),
    ('zero_code', False, "quant.zero_code=False: False .zero-free sets. needs "
                         "quant.method='optimal', not 'kmeans'"),
])
def test_bad_quantization_fields(field, value, message):
  config = configs.base_config()
  config.mode, config.init_from = 'quantize', '/some/trained/run'
  config.quant[field] = value
  with pytest.raises(configs.ConfigError, match=message.replace('(', r'\(')):
    configs.validate(config)


@pytest.mark.parametrize('fields, message', [
    ({'criterion': 'se_l1'}, 'needs prune.se_gates=True'),
    ({'search_criteria': ('l1', 'se_bn_gamma')}, "\\['se_bn_gamma'\\]: a learned-attention"),
    ({'se_reduction': 0}, 'prune.se_reduction=0'),
    ({'search_method': 'greedy'}, "prune.search_method='greedy': must be one of exhaustive, race"),
    ({'decide_from': '/a/run', 'stop_rule': 'fixed', 'pretrain_epochs': 0},
     'a decision from a snapshot'),
    ({'shrink_weights': 'last'}, "prune.shrink_weights='last': must be one of decision, final"),
    ({'shrink_weights': 'final'}, "'final' needs prune.decide_from"),
    ({'train_budget': 0.5}, "prune.budget_of=None: prune.train_budget and prune.budget_of go "
     'together'),
    ({'budget_of': '/a/run'}, "prune.train_budget=None: prune.train_budget and prune.budget_of"),
    ({'train_budget': -1.0, 'budget_of': '/a/run'}, 'prune.train_budget=-1.0: must be > 0'),
])
def test_bad_pruning_study_fields(fields, message):
  config = configs.base_config()
  config.mode = 'prune'
  for field, value in fields.items():
    config.prune[field] = value
  with pytest.raises(configs.ConfigError, match=message):
    configs.validate(config)
  config.prune.se_gates, config.prune.criterion = True, 'se_bn_gamma'
  config.prune.search_criteria, config.prune.decide_from, config.prune.se_reduction = (), '', 4
  config.prune.search_method, config.prune.shrink_weights = 'race', 'decision'
  config.prune.train_budget, config.prune.budget_of = 0.5, '/a/run'
  configs.validate(config)


def test_allowed_values_come_from_the_registries():
  """One place per enumeration: validation checks against the tables that dispatch."""
  from qprune import prune, quant  # pylint: disable=g-import-not-at-top
  from qprune.data import pipeline  # pylint: disable=g-import-not-at-top
  from qprune.modes import MODES  # pylint: disable=g-import-not-at-top
  from qprune.train import optim  # pylint: disable=g-import-not-at-top
  assert set(configs.MODES) == set(MODES)
  assert set(configs.QUANT_METHODS) == set(quant.TARGET_RULES)
  assert configs.STOP_RULES == prune.STOP_RULES
  assert configs.SEARCH_METHODS == prune.SEARCH_METHODS
  assert configs.SCHEDULES == optim.LR_SCHEDULES
  assert set(configs.AUGMENTS) == set(pipeline.AUGMENTATIONS)


def test_every_quant_and_prune_field_says_what_it_does():
  """--help and docs/configs.md describe each field (configs.FIELD_HELP), none left out."""
  base = configs.base_config()
  fields = {f'{s}.{k}' for s in ('quant', 'prune') for k in base[s].keys()}
  assert fields == set(configs.FIELD_HELP), sorted(fields ^ set(configs.FIELD_HELP))


def test_quant_bits_is_the_code_width_of_every_method():
  """quant.bits=b: INQ's rule at b bits, or the most exponents b-bit codes hold (kmeans,
  optimal); an older config.json (bits=5 stored but unused by kmeans/optimal) still matches."""
  q = configs.base_config().quant
  assert configs.effective_k(q) == 3  # bits unset: quant.k
  q.bits = 2
  assert configs.effective_k(q) == 1  # {0, ±2^e}: 3 values in 2 bits
  q.bits, q.zero_code = 2, False
  assert configs.effective_k(q) == 2  # {±2^a, ±2^b}: 4 values in 2 bits
  q.bits, q.zero_code = 3, True
  assert configs.effective_k(q) == 3
  config = configs.base_config()
  config.mode, config.init_from, config.quant.method = 'quantize', '/run', 'optimal'
  older = configs.semantic_dict(config)
  older['quant']['bits'] = 5
  assert configs.with_new_defaults(older) == configs.semantic_dict(config)
  config.quant.bits = 2  # stored as the k it asks for
  assert configs.semantic_dict(config)['quant']['k'] == 1
  config.quant.method, config.quant.bits = 'inq', None  # inq: None is INQ's 5 bits
  assert configs.semantic_dict(config)['quant']['bits'] == 5
  config.quant.bits = 9
  with pytest.raises(configs.ConfigError, match='quant.bits=9: must be an integer in 2..8'):
    configs.validate(config)
  config.quant.method, config.quant.bits = 'optimal', 6
  with pytest.raises(configs.ConfigError, match='quant.bits=6: must be an integer in 2..5'):
    configs.validate(config)


@pytest.mark.parametrize('mode, fields, overridden, message', [
    ('train', {'quant.k': 2}, (), "quant.k=2: does not apply to mode='train'"),
    ('quantize', {'prune.ratio': 0.3}, (), "prune.ratio=0.3: does not apply to mode='quantize'"),
    ('quantize', {'quant.method': 'inq', 'quant.k': 2}, (), "quant.k=2: does not apply with "
     "quant.method='inq'"),
    ('quantize', {'quant.method': 'kmeans', 'quant.objective': 'l2'}, (), 'quant.objective'),
    ('quantize', {'quant.bits': 3, 'quant.k': 2}, (), 'quant.k=2: does not apply with '
     'quant.bits=3'),
    ('quantize', {'quant.bits': 3, 'quant.bits_budget': 2.5}, (), 'quant.bits=3: does not apply '
     'with quant.bits_budget=2.5'),
    ('quantize', {'quant.bits_budget': 1.5}, (), 'quant.bits_budget=1.5: below 2 bits needs '
     'quant.zero_code=False'),
    ('quantize', {'quant.bits_budget': 1.5, 'quant.zero_code': False, 'quant.method': 'optimal'},
     (), None),
    ('quantize', {'epochs': 3}, ('epochs',), "epochs=3: does not apply to mode='quantize'"),
    ('quantize', {'epochs': 3}, (), None),  # a config file's own epochs (from its base)
    ('prune', {'prune.pretrain_epochs': 2}, (), 'prune.pretrain_epochs=2: does not apply with '
     "prune.stop_rule='early_bird'"),
    ('prune', {'prune.stop_rule': 'fixed', 'prune.pretrain_epochs': 1, 'prune.eb_window': 3},
     (), None),  # the config file's Early-Bird window, unused under 'fixed': fine
    ('prune', {'prune.stop_rule': 'fixed', 'prune.pretrain_epochs': 1, 'prune.eb_window': 3},
     ('prune.eb_window',), 'prune.eb_window=3: does not apply'),
    ('prune', {'prune.stop_rule': 'full', 'prune.snapshots': True, 'prune.eb_window': 5},
     ('prune.eb_window',), None),  # recorded for the Early-Bird decisions replayed from it
    ('prune', {'init_from': '/run', 'prune.eb_window': 3}, ('prune.eb_window',),
     'prune.eb_window=3: does not apply with init_from'),
    ('prune', {'prune.se_reduction': 8}, (), 'prune.se_reduction=8: does not apply without'),
    ('quantize', {'ema_decay': 0.999}, (), "ema_decay=0.999: does not apply to mode='quantize'"),
    ('prune', {'ema_decay': 0.999}, ('ema_decay',), None),
    ('prune', {'prune.score_batches': 4}, ('prune.score_batches',),
     'prune.score_batches=4: does not apply with criteria l1'),
    ('prune', {'prune.score_batches': 4, 'prune.search_criteria': ('l1', 'taylor')},
     ('prune.score_batches',), None),
    ('prune', {'prune.search_method': 'race'}, ('prune.search_method',),
     "prune.search_method='race': does not apply with a single candidate"),
    ('prune', {'prune.search_method': 'race', 'prune.search_ratios': (0.3, 0.5)},
     ('prune.search_method',), None),
    ('prune', {'prune.train_budget': 0.5, 'prune.budget_of': '/run', 'prune.finetune_epochs': 9},
     ('prune.finetune_epochs',), 'prune.finetune_epochs=9: does not apply with '
     'prune.train_budget=0.5'),
    ('prune', {'prune.train_budget': 0.5, 'prune.budget_of': '/run', 'prune.finetune_epochs': 9},
     (), None),  # a config file's fine-tuning epochs, replaced by a command line's budget: fine
    ('quantize', {'quant.distill_temperature': 2.0}, (), 'quant.distill_temperature=2.0'),
    ('quantize', {'quant.distill_temperature': 2.0, 'quant.distill_weight': 0.5}, (), None),
])
def test_a_setting_that_does_not_apply_is_refused(mode, fields, overridden, message):
  config = configs.base_config()
  config.mode, config.init_from = mode, '/run' if mode == 'quantize' else None
  for dotted, value in fields.items():
    *parents, leaf = dotted.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  if message is None:
    configs.validate(config, overridden)
  else:
    with pytest.raises(configs.ConfigError, match=message.replace('(', r'\(')):
      configs.validate(config, overridden)


def test_a_command_line_unsets_every_optional_field_with_an_empty_value():
  """--config.FIELD='' (or None, null; typed in a shell '' arrives as an empty value) reads as
  None for every optional field: paths, numbers and tuples alike."""
  from qprune import cli  # pylint: disable=g-import-not-at-top
  args = [f'--config.{f}={v}' for f, v in (('prune.max_params', "''"), ('init_from', 'None'),
                                           ('prune.search_ratios', ''), ('train_subset', 'null'),
                                           ('epochs', ''))]
  assert cli.unset_spellings(args) == [
      '--config.prune.max_params=0', '--config.init_from=', '--config.prune.search_ratios=()',
      '--config.train_subset=0', '--config.epochs=']  # epochs is not optional: left to the parser
  config = configs.base_config()
  config.mode = 'prune'
  config.prune.search_ratios, config.prune.search_criteria = ('',), (None,)  # ml_collections' ''
  configs.validate(config)
  assert config.prune.search_ratios is None and config.prune.search_criteria is None


@pytest.mark.parametrize('value', [-0.1, 1.0])
def test_ema_decay_is_a_fraction_below_one(value):
  config = configs.base_config()
  config.ema_decay = value
  with pytest.raises(configs.ConfigError, match=r'ema_decay=.*: must be in \[0, 1\)'):
    configs.validate(config)
