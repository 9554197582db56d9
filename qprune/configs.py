"""Config schema, defaults and validation for the `qprune.main` binary.

Config files in `configs/` call `base_config()` and change what their experiment needs;
`validate(config)` turns every bad field into one `ConfigError` that names the field, the bad
value and what is allowed, before any work starts.
"""
import dataclasses
import importlib.util
import json
import math
import os

import ml_collections
from ml_collections.config_dict import placeholder

from qprune.data.pipeline import AUGMENTATIONS
from qprune.data.sources import DATASETS
from qprune.errors import UserError
from qprune.models import MODELS
from qprune.models import spec as spec_lib
from qprune.ops import conv as conv_lib
from qprune.prune import criteria, decision
from qprune.prune.search import SEARCH_METHODS
from qprune.quant.inq import DEFAULT_SCHEDULE
from qprune.quant.rules import TARGET_RULES
from qprune.train import optim
from qprune.train.loop import TrainOptions

# The modes of the binary (qprune.modes.MODES dispatches on exactly these; a test checks).
MODES = ('train', 'quantize', 'prune', 'pipeline')
# Every other allowed value comes from the registry that dispatches on it.
QUANT_METHODS = tuple(TARGET_RULES)
STOP_RULES = decision.STOP_RULES
SCHEDULES = optim.LR_SCHEDULES
AUGMENTS = tuple(AUGMENTATIONS)
DTYPES = tuple(spec_lib.DTYPES)
CONV_IMPLS = ('auto', *conv_lib.IMPLS)

# Fields that change how a run looks or where it reads from, not what it computes.
NON_SEMANTIC_FIELDS = ('progress', 'overwrite', 'data_dir', 'cache_dir', 'conv_impl', 'eval_every',
                       'compilation_cache_dir', 'tensorboard')


# Fields where None means "not set". Before None they were spelled '' / 0 / (), and config files,
# command lines (--config.init_from='') and older runs' config.json still may: every falsy value
# of these fields reads as None (validate() normalizes in place; stored configs compare so).
UNSET_FIELDS = ('data_dir', 'cache_dir', 'compilation_cache_dir', 'init_from', 'train_subset',
                'eval_subset', 'prune.max_ratio', 'prune.search_criteria', 'prune.search_ratios',
                'prune.search_selections', 'prune.max_params', 'prune.max_macs',
                'prune.decide_from', 'prune.train_budget', 'prune.budget_of', 'quant.bits',
                'quant.tolerance', 'quant.bits_budget')
# How a command line unsets one of them: --config.FIELD='' (or None/null; the older 0 and ()).
UNSET_SPELLINGS = ('', "''", '""', 'None', 'none', 'null')
# prune.aggregate: 'none' (each producer's own score; '' is its older spelling) or a group rule.
AGGREGATES = ('none', *criteria.AGGREGATES)
SHRINK_WEIGHTS = ('decision', 'final')  # prune.shrink_weights


# What --help and docs/configs.md say of each field of quant.* and prune.* (their defaults come
# from base_config). A test checks every field has one.
FIELD_HELP = {
    'quant.method': "target sets: 'kmeans' (clustered log2|w|), 'optimal' (least error, exact) "
                    "or 'inq' (INQ's rule, Zhou et al. 2017)",
    'quant.objective': "optimal: the error minimized, 'l1' or 'l2'",
    'quant.zero_code': 'False (optimal only): zero-free sets {±2^e}, k=2 is 4 values in 2 bits',
    'quant.bits': 'bits a weight, every method (None: inq 5, kmeans/optimal from quant.k)',
    'quant.k': 'kmeans/optimal: exponents per layer, ceil(log2(2k+1)) bits (k=1: 2, k=3: 3)',
    'quant.tolerance': 'kmeans/optimal: smallest k per layer with relative L1 error <= this',
    'quant.bits_budget': 'kmeans/optimal: average bits a weight over the network',
    'quant.k_max': 'kmeans/optimal: most exponents a layer may get',
    'quant.schedule': "INQ's cumulative fractions of weights snapped per step, ending at 1.0",
    'quant.retrain_epochs': 'epochs of retraining after each schedule step',
    'quant.final_epochs': 'epochs after the last step training only BN and biases',
    'quant.learning_rate': 'learning rate of the retraining',
    'quant.distill_weight': "> 0: retraining also fits the starting model's soft outputs "
                            '(Hinton et al. 2015)',
    'quant.distill_temperature': 'temperature T of that distillation',
    'quant.export_name': 'file name of the bit-packed export in the workdir',
    'quant.exclude': "layers kept in float32, e.g. ('conv1', 'fc2')",
    'quant.entropy_coding': "store each layer's codes xz-compressed where smaller",
    'prune.criterion': 'channel score: l1, bn_gamma, taylor, random, attention, se_* ...',
    'prune.ratio': 'fraction of channels removed',
    'prune.selection': "'uniform' (the ratio per layer) or 'global' (one threshold)",
    'prune.residual': 'ResNets: also prune the residual stream',
    'prune.dense': 'chain models: also prune hidden units of dense layers',
    'prune.ignored_layers': 'layer paths (or prefixes ending in /) never pruned',
    'prune.aggregate': "group score over coupled slices: 'none', 'sum', 'mean', 'max'",
    'prune.round_to': 'kept widths rounded up to a multiple of this',
    'prune.max_ratio': "cap on any layer's removed fraction",
    'prune.slimming_lambda': 'L1 on BN gamma during pretraining (Network Slimming)',
    'prune.se_gates': 'pretrain with squeeze-and-excitation gates (the se_* criteria)',
    'prune.se_reduction': "the SE blocks' channel reduction r",
    'prune.stop_rule': "when masks are decided: 'early_bird' (stable), 'fixed', 'full'",
    'prune.pretrain_epochs': "stop_rule='fixed': pretraining epochs before the decision",
    'prune.eb_window': 'Early-Bird: masks compared',
    'prune.eb_threshold': 'Early-Bird: stable when all pairwise distances <= this',
    'prune.search_criteria': 'search: criteria tried (None: prune.criterion only)',
    'prune.search_ratios': 'search: ratios tried (None: prune.ratio only)',
    'prune.search_selections': 'search: selections tried (None: prune.selection only)',
    'prune.search_method': "'exhaustive' or 'race' (successive elimination)",
    'prune.max_params': 'search budget: params as a fraction of the unpruned model',
    'prune.max_macs': 'search budget: MACs as a fraction of the unpruned model',
    'prune.holdout': 'training examples held out to score candidates',
    'prune.score_batches': 'batches of 100 for data-driven criteria',
    'prune.bn_batches': 'batches of 100 to re-estimate BN statistics per candidate',
    'prune.finetune_epochs': 'epochs of fine-tuning the shrunk model',
    'prune.finetune_learning_rate': 'learning rate of the fine-tuning',
    'prune.snapshots': 'keep the model after every pretraining epoch (for decide_from)',
    'prune.decide_from': "a prune run with snapshots whose pretraining is replayed",
    'prune.shrink_weights': "'decision' or 'final' (decide_from: the last epoch's weights)",
    'prune.train_budget': "fine-tune to this fraction of budget_of's training compute",
    'prune.budget_of': 'a finished prune run whose training MACs set the budget',
}


class ConfigError(UserError):
  """A config field has a bad value."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'train'
  c.dataset = 'mnist'
  c.data_dir = placeholder(str)    # None: $QPRUNE_DATA_DIR if set, else TFDS (download)
  c.cache_dir = placeholder(str)   # None: $QPRUNE_CACHE_DIR or ~/.cache/qprune
  # XLA's persistent compilation cache: repeated runs (sweeps, resumes) load compiled steps
  # instead of compiling them (None: $QPRUNE_COMPILATION_CACHE, else off).
  c.compilation_cache_dir = placeholder(str)
  c.model = 'lenet5'
  c.width = 1.0
  # The training fields and their defaults are TrainOptions' (one place), except epochs: an
  # experiment trains 10 by default, a library `fit` call 1.
  for field in dataclasses.fields(TrainOptions):
    c[field.name] = field.default
  c.epochs = 10
  c.train_subset = placeholder(int)  # first N training examples (None: all)
  c.eval_subset = placeholder(int)   # first N test examples (None: all)
  c.init_from = placeholder(str)     # a previous run's workdir to start from
  c.compute_dtype = 'float32'
  c.conv_impl = 'auto'
  c.overwrite = False      # allow reusing a workdir that holds a finished run of another config
  c.quant = quant_config()
  c.prune = prune_config()
  return c


def prune_config() -> ml_collections.ConfigDict:
  """mode=prune: channel masks decided during (short) pretraining, searched, shrunk, fine-tuned."""
  p = ml_collections.ConfigDict()
  p.criterion = 'l1'       # l1, bn_gamma, taylor, random, attention (see qprune.prune.criteria)
  p.ratio = 0.5            # fraction of channels removed
  p.selection = 'uniform'  # 'uniform' (same ratio per layer) or 'global' (one threshold)
  p.residual = False       # ResNets: also prune the residual stream (one group across stages)
  p.dense = False          # chain models: also prune hidden units of dense layers
  p.ignored_layers = ()    # layer paths (or prefixes ending in '/') whose outputs are not pruned
  # Group scores over every coupled slice (producer filters, BN |gamma|, consumers' inputs),
  # each member normalized by its mean: 'none' (the producer alone), 'sum', 'mean' or 'max'.
  # 'mean': LeNet-5/MNIST, 50 % of every layer from a 2-epoch model, 2 fine-tune epochs:
  # 98.95 % (3 seeds) vs 98.88 % ('none').
  p.aggregate = 'mean'
  p.round_to = 1           # kept widths rounded up to a multiple of this
  p.max_ratio = placeholder(float)  # cap on any layer's removed fraction (None: no cap)
  p.slimming_lambda = 0.0  # L1 penalty on BatchNorm gamma during pretraining (Network Slimming)
  # Learned channel attention: pretrain with squeeze-and-excitation gates (Hu et al. 2018) at
  # every group's gate point, dropped before shrinking; the se_* criteria score with them
  # (qprune.prune.attention). se_reduction: the SE blocks' channel reduction r.
  p.se_gates = False
  p.se_reduction = 4
  p.stop_rule = 'early_bird'  # 'early_bird' (masks stable), 'fixed' (pretrain_epochs), 'full'
  p.pretrain_epochs = 0    # 'fixed': epochs of pretraining before the decision
  p.eb_window = 5          # Early-Bird: masks compared (FIFO)
  p.eb_threshold = 0.1     # Early-Bird: stable when all pairwise Hamming distances <= this
  # Candidates: criteria x ratios x selections (None: the criterion, ratio, selection above).
  p.search_criteria = placeholder(tuple)
  p.search_ratios = placeholder(tuple)
  p.search_selections = placeholder(tuple)
  # 'exhaustive': every candidate on every held-out example (one vmapped evaluation); 'race':
  # successive elimination, clearly worse candidates dropped after a few batches and those
  # outside the budget never scored (qprune.prune.search; the choice for large holdouts).
  p.search_method = 'exhaustive'
  p.max_params = placeholder(float)  # budget as a fraction of the unpruned model (None: none)
  p.max_macs = placeholder(float)
  p.holdout = 1000         # training examples held out (from the end) to score candidates
  p.score_batches = 2      # training batches of 100 for data-driven criteria (taylor, attention)
  p.bn_batches = 4         # training batches of 100 to re-estimate BN statistics per candidate
  p.finetune_epochs = 2
  p.finetune_learning_rate = 0.01
  # Decision studies: `snapshots` keeps the model after every pretraining epoch (in
  # pretrain/epochs/<E>/, the saved-model format); `decide_from` (the workdir of such a run, same
  # model, data, seed and training; same mask settings unless stop_rule='fixed') replays its
  # pretraining instead of repeating it and takes the decision at the epoch this run's stop rule
  # picks, from that epoch's snapshot.
  p.snapshots = False
  p.decide_from = placeholder(str)
  # Which weights the decided masks cut: the decision epoch's ('decision', the method) or, with
  # decide_from, those after the last recorded pretraining epoch ('final'): a control that keeps
  # an early decision's masks but gives them the full training, separating what the early mask
  # costs from what the shorter training costs.
  p.shrink_weights = 'decision'
  # Early-Bird's protocol (You et al. 2020: find the masks early, then train the pruned network):
  # `train_budget` fine-tunes for as many whole epochs as fit in that fraction of the training
  # compute (forward MACs x images, pretraining plus fine-tuning: results.json `train_macs`) of
  # the finished prune run `budget_of`, e.g. the decision after full pretraining; it replaces
  # finetune_epochs, so runs deciding at different epochs are compared at equal compute.
  p.train_budget = placeholder(float)
  p.budget_of = placeholder(str)
  return p


def quant_config() -> ml_collections.ConfigDict:
  """mode=quantize: power-of-two targets per layer, applied with INQ's incremental schedule."""
  q = ml_collections.ConfigDict()
  q.method = 'kmeans'      # 'kmeans' (clustered log2|w| targets), 'optimal' (the sets
                           # of least error, exact) or 'inq' (INQ's rule)
  q.objective = 'l1'       # optimal: the error minimized, 'l1' (sum |W - Wq|) or 'l2'
  q.zero_code = True       # False (optimal only): zero-free sets {±2^e}, ceil(log2(2k)) bits, so
                           # k=2 is 4 values at 2 bits where {0, ±2^e} (k=1) has 3
  # Bits per weight of every layer's codes, whatever the method (None: inq 5, INQ's default;
  # kmeans/optimal: quant.k decides). inq: INQ's rule at b bits (2^(b-2) exponents); kmeans and
  # optimal: the most exponents b-bit codes hold, k = 2^(b-1) - 1 with the zero code (b=2: 1,
  # b=3: 3) or 2^(b-1) zero-free (quant.zero_code=False).
  q.bits = placeholder(int)
  q.k = 3                  # kmeans/optimal: exponents per layer (unless bits, tolerance or
                           # bits_budget decide): ceil(log2(2k+1)) bits, zero-free ceil(log2(2k))
  q.tolerance = placeholder(float)    # kmeans/optimal: smallest k per layer with relative L1
                                      # error <= tolerance
  q.bits_budget = placeholder(float)  # kmeans/optimal: average bits per weight over the network
  q.k_max = 8
  q.schedule = DEFAULT_SCHEDULE
  q.retrain_epochs = 1     # per schedule step
  q.final_epochs = 0       # after the last snap: epochs training only what stays float (BN, biases)
  q.learning_rate = 0.01
  q.distill_weight = 0.0   # > 0: retraining also fits the soft outputs of the model it starts
                           # from: (1 - w) * CE + w * T^2 * KL (Hinton et al. 2015); 1: soft only
  q.distill_temperature = 1.0  # T of that KL
  q.export_name = 'model.qpq'
  q.exclude = ()           # layers kept in float32, e.g. ('conv1', 'fc2'): first and last
  q.entropy_coding = False  # store each layer's codes xz-compressed where that is smaller
  return q


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
  """get_config() of `<name>.py` beside `config_file`, so a config can extend another by path
  (config files are loaded by path, not as an importable package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'qprune_config_{name}', path)
  assert spec is not None and spec.loader is not None  # a .py path: a source file loader
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def config_file_argument(argv) -> str:
  """The value of --config in an argv list ('' when absent)."""
  for i, arg in enumerate(argv):
    for prefix in ('--config=', '-config='):
      if arg.startswith(prefix):
        return arg[len(prefix):]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def check_config_file(path: str) -> None:
  """Loads a config file as ml_collections does (`FILE.py` or `FILE.py:ARG`); ConfigError naming
  the file and what is wrong when it is missing, does not parse, lacks get_config or it fails."""
  arg = None
  if not os.path.exists(path) and ':' in path:
    path, arg = path.split(':', 1)
  if not path:
    raise ConfigError('--config is empty: pass a config file, '
                      'e.g. --config=configs/mnist_lenet5.py')
  if not os.path.isfile(path):
    what = 'a folder' if os.path.isdir(path) else 'not found'
    raise ConfigError(f'config file {path}: {what} (pass an existing configs/*.py file)')
  try:
    spec = importlib.util.spec_from_file_location('qprune_checked_config', path)
    if spec is None or spec.loader is None:
      raise ConfigError(f'config file {path}: not a Python file (configs are FILE.py)')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except ConfigError:
    raise
  except SyntaxError as e:
    raise ConfigError(f'config file {path}, line {e.lineno}: syntax error: {e.msg}') from None
  except Exception as e:  # pylint: disable=broad-except  (the file's own code failed)
    raise ConfigError(f'config file {path}: loading it raised {type(e).__name__}: {e}') from None
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ConfigError(f'config file {path} defines no get_config() (it must return a '
                      f'ConfigDict, e.g. base_config() with changes; see configs/mnist_lenet5.py)')
  try:
    config = get_config() if arg is None else get_config(arg)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'config file {path}: get_config() raised {type(e).__name__}: '
                      f'{e}') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'config file {path}: get_config() returned a {type(config).__name__}, '
                      f'not a ConfigDict (start from qprune.configs.base_config())')


def _check(problems, ok, field, value, allowed):
  if not ok:
    problems.append(f'{field}={value!r}: {allowed}')


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _non_finite(tree, prefix=''):
  """'field=value' of every NaN or infinite number in a (nested) config dict."""
  out = []
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out += _non_finite(value, f'{name}.')
    elif isinstance(value, (list, tuple)):
      if any(isinstance(v, float) and not math.isfinite(v) for v in value):
        out.append(name)
    elif isinstance(value, float) and not math.isfinite(value):
      out.append(name)
  return out


# Run files and folders a quantized export must not overwrite (quant.export_name is written into
# the workdir), and the default outputs of `python -m qprune.export`.
_RUN_FILES = ('config.json', 'results.json', 'model.json', 'metrics.jsonl', 'report.md',
              'search.json', '.qprune.lock', 'model', 'checkpoints', 'inq_final', 'pretrain',
              'finetune', 'prune', 'quantize', 'plots', 'model.onnx', 'model_codes.npz')


def _normalize_unset(tree) -> None:
  """In place, on a ConfigDict or a nested dict: the older spellings of "not set" in
  UNSET_FIELDS become None, prune.aggregate='' becomes 'none'."""
  for path in UNSET_FIELDS + ('prune.aggregate',):
    *parents, leaf = path.split('.')
    node = tree
    for name in parents:
      node = node.get(name) if hasattr(node, 'get') else None
    if not hasattr(node, 'get') or leaf not in node:
      continue
    value = node[leaf]
    if leaf == 'aggregate':
      if value == '':
        node[leaf] = 'none'
    elif value is not None and (not value or _all_unset(value)):
      node[leaf] = None


def _all_unset(value) -> bool:
  """('',) or (None,): how ml_collections reads --config.TUPLE_FIELD='' (or =None)."""
  return isinstance(value, (tuple, list)) and all(v in UNSET_SPELLINGS or v is None
                                                  for v in value)


def normalize(config) -> None:
  """In place: every "not set" spelling of UNSET_FIELDS becomes None (what --print_config and
  config.json show as null)."""
  _normalize_unset(config)


def k_for_bits(bits: int, zero: bool = True) -> int:
  """The most exponents whose codes fit `bits` bits: 2k + 1 values with the zero code,
  2k zero-free (quant.bits for kmeans/optimal)."""
  return 2 ** (bits - 1) - 1 if zero else 2 ** (bits - 1)


def effective_k(q) -> int:
  """The exponents per layer a fixed-k quantization uses: from quant.bits when set, else
  quant.k."""
  return k_for_bits(q.bits, q.zero_code is not False) if q.bits else q.k


INQ_DEFAULT_BITS = 5  # quant.bits=None with method inq (INQ, Zhou et al. 2017: 5 bits)


def validate(config, overridden=()) -> None:
  """Normalizes the older "not set" spellings (UNSET_FIELDS) to None in place, then raises
  ConfigError listing every bad field, and every setting that does not apply to this config
  (`inapplicable`): one that differs from base_config's default, or any of `overridden` (the
  dotted fields a command line set)."""
  _normalize_unset(config)
  p = []
  for name in _non_finite(config.to_dict()):
    p.append(f'{name}: must be a finite number (not NaN or infinite)')
  if p:  # the range checks below would only repeat these
    raise ConfigError('bad config: ' + '; '.join(p))
  _check(p, config.mode in MODES, 'mode', config.mode, f'must be one of {", ".join(MODES)}')
  _check(p, config.dataset in DATASETS, 'dataset', config.dataset,
         f'must be one of {", ".join(sorted(DATASETS))}')
  _check(p, config.model in MODELS, 'model', config.model,
         f'must be one of {", ".join(sorted(MODELS))}')
  _check(p, isinstance(config.width, (int, float)) and config.width > 0, 'width', config.width,
         'must be > 0')
  _check(p, _is_int(config.epochs) and config.epochs >= 0, 'epochs', config.epochs,
         'must be an integer >= 0')
  for field in ('batch_size', 'eval_batch_size', 'eval_every'):
    _check(p, _is_int(config[field]) and config[field] >= 1, field, config[field],
           'must be an integer >= 1')
  for field in ('train_subset', 'eval_subset'):
    _check(p, config[field] is None or (_is_int(config[field]) and config[field] >= 1), field,
           config[field], 'must be an integer >= 1, or None for the whole split')
  _check(p, _is_int(config.seed) and 0 <= config.seed < 2 ** 32, 'seed', config.seed,
         'must be an integer in 0..2^32-1')
  _check(p, config.width <= 64, 'width', config.width, 'must be <= 64 (a width multiplier)')
  _check(p, config.learning_rate > 0, 'learning_rate', config.learning_rate, 'must be > 0')
  _check(p, 0 <= config.momentum < 1, 'momentum', config.momentum, 'must be in [0, 1)')
  _check(p, config.weight_decay >= 0, 'weight_decay', config.weight_decay, 'must be >= 0')
  _check(p, 0 <= config.label_smoothing < 1, 'label_smoothing', config.label_smoothing,
         'must be in [0, 1)')
  _check(p, 0 <= config.ema_decay < 1, 'ema_decay', config.ema_decay,
         'must be in [0, 1) (0: no moving average; e.g. 0.999)')
  _check(p, 0 <= config.warmup_epochs <= max(config.epochs, 0), 'warmup_epochs',
         config.warmup_epochs, f'must be in [0, epochs] ({config.epochs})')
  _check(p, config.lr_schedule in SCHEDULES, 'lr_schedule', config.lr_schedule,
         f'must be one of {", ".join(SCHEDULES)}')
  _check(p, config.augment in AUGMENTS, 'augment', config.augment,
         f'must be one of {", ".join(AUGMENTS)}')
  _check(p, config.compute_dtype in DTYPES, 'compute_dtype', config.compute_dtype,
         f'must be one of {", ".join(DTYPES)}')
  _check(p, config.conv_impl in CONV_IMPLS, 'conv_impl', config.conv_impl,
         f'must be one of {", ".join(CONV_IMPLS)}')
  if config.mode in ('quantize', 'pipeline'):
    _validate_quant(config.quant, p)
  if config.mode in ('prune', 'pipeline'):
    _validate_prune(config, p)
  if config.mode == 'quantize' and not config.init_from:
    p.append('init_from is not set: mode=quantize needs the workdir of a trained run to quantize')
  if not p:  # (a bad value is named once, not also as not applying)
    default = base_config()
    for field, reason, always in inapplicable(config):
      value = _get(config, field)
      if field in overridden or (always and value != _get(default, field)):
        p.append(f'{field}={value!r}: does not apply {reason}')
  if p:
    raise ConfigError('bad config: ' + '; '.join(p))


def _get(config, dotted: str):
  node = config
  for name in dotted.split('.'):
    node = node[name]
  return node


def inapplicable(config) -> list:
  """[(dotted field, why it does not apply, always)] of every field this config's mode and
  methods do not read. always: refused when it differs from base_config's default (config files
  never set it in such a config); otherwise only when a command line sets it (a config file may
  keep, e.g., its Early-Bird window while a run switches to stop_rule=fixed)."""
  out = []
  mode, q, r = config.mode, config.quant, config.prune
  for section, modes in (('quant', ('quantize', 'pipeline')), ('prune', ('prune', 'pipeline'))):
    if mode not in modes:
      out += [(f'{section}.{k}', f"to mode={mode!r} ({section}.* is read by mode "
               f"{' and '.join(modes)})", True) for k in config[section].keys()]
  if mode in ('quantize', 'pipeline'):
    # (INQ's frozen weights are powers of two; an average of them and their float neighbours
    # would not be)
    out.append(('ema_decay', f'to mode={mode!r} (INQ retraining keeps no moving average)', True))
  if mode == 'quantize':
    out += [('epochs', "to mode='quantize' (it retrains quant.retrain_epochs per schedule step "
             'and quant.final_epochs after it: set those)', False),
            ('learning_rate', "to mode='quantize' (retraining uses quant.learning_rate)", False)]
  if mode in ('quantize', 'pipeline'):
    if q.method == 'inq':
      out += [(f'quant.{k}', "with quant.method='inq' (INQ's rule takes its exponents from "
               'quant.bits)', True) for k in ('k', 'tolerance', 'bits_budget', 'objective')]
    else:
      if q.method != 'optimal':
        out.append(('quant.objective', f"with quant.method={q.method!r} (the error the "
                    "'optimal' sets minimize)", True))
      chooser = next((k for k in ('tolerance', 'bits_budget') if q[k]), None)
      if chooser:
        out += [(f'quant.{k}', f'with quant.{chooser}={q[chooser]!r} set (it decides the '
                 f'exponents per layer; set one of them)', True) for k in ('k', 'bits')]
      elif q.bits:
        out.append(('quant.k', f'with quant.bits={q.bits!r} set (bits decide k: '
                    f'{effective_k(q)} exponents per layer; set one of them)', True))
    if not q.distill_weight:
      out.append(('quant.distill_temperature', 'without distillation (quant.distill_weight=0)',
                  True))
  if mode in ('prune', 'pipeline'):
    if r.stop_rule != 'fixed':
      out.append(('prune.pretrain_epochs', f'with prune.stop_rule={r.stop_rule!r} (the epochs '
                  "of stop_rule='fixed')", True))
    # (a run that keeps snapshots records the rule's verdict per epoch for the decisions
    # replayed from it: its window is theirs)
    if r.stop_rule != 'early_bird' and not r.snapshots:
      out += [(f'prune.{k}', f"with prune.stop_rule={r.stop_rule!r} (the Early-Bird rule's)",
               False) for k in ('eb_window', 'eb_threshold')]
    if config.init_from and r.stop_rule != 'fixed':
      why = (f'with init_from and prune.stop_rule={r.stop_rule!r} (the masks are decided from '
             "init_from's trained model without pretraining; stop_rule='fixed' with "
             'pretrain_epochs trains first)')
      out += [(k, why, False) for k in ('epochs', 'prune.eb_window', 'prune.eb_threshold')]
    chosen = r.search_criteria or (r.criterion,)
    if all(c in criteria.DATA_FREE for c in chosen):
      out.append(('prune.score_batches', f'with criteria {", ".join(chosen)} (computed from the '
                  'weights alone; score_batches feeds taylor, attention and se_*)', False))
    sizes = [len(chosen), len(r.search_ratios or (r.ratio,)),
             len(r.search_selections or (r.selection,))]
    if math.prod(sizes) == 1:
      out.append(('prune.search_method', 'with a single candidate (no search_criteria, '
                  'search_ratios or search_selections with more than one value: nothing to '
                  'search)', False))
    if r.train_budget:
      out.append(('prune.finetune_epochs', f'with prune.train_budget={r.train_budget!r} (the '
                  'budget sets the fine-tuning epochs)', False))
    if not r.se_gates:
      out.append(('prune.se_reduction', 'without prune.se_gates=True (the SE gates\' reduction)',
                  True))
  return out


def _validate_prune(config, p):
  from qprune.prune import CRITERIA, SELECTIONS  # pylint: disable=g-import-not-at-top
  r = config.prune
  for field, values, allowed in (('criterion', (r.criterion,), CRITERIA),
                                 ('search_criteria', r.search_criteria or (), CRITERIA),
                                 ('selection', (r.selection,), SELECTIONS),
                                 ('search_selections', r.search_selections or (), SELECTIONS)):
    bad = [v for v in values if v not in allowed]
    _check(p, not bad, f'prune.{field}', bad[0] if bad else None,
           f'must be one of {", ".join(sorted(allowed))}')
  for field, values in (('ratio', (r.ratio,)), ('search_ratios', r.search_ratios or ())):
    bad = [v for v in values if not 0 <= v < 1]
    _check(p, not bad, f'prune.{field}', bad[0] if bad else None,
           'must be in [0, 1) (the fraction of channels removed)')
  _check(p, r.search_method in SEARCH_METHODS, 'prune.search_method', r.search_method,
         f'must be one of {", ".join(SEARCH_METHODS)}')
  _check(p, r.stop_rule in STOP_RULES, 'prune.stop_rule', r.stop_rule,
         f'must be one of {", ".join(STOP_RULES)}')
  _check(p, r.stop_rule != 'fixed' or (_is_int(r.pretrain_epochs) and
                                        0 <= r.pretrain_epochs <= config.epochs),
         'prune.pretrain_epochs', r.pretrain_epochs,
         f'with stop_rule=fixed must be an integer in 0..epochs ({config.epochs})')
  _check(p, _is_int(r.eb_window) and r.eb_window >= 2, 'prune.eb_window', r.eb_window,
         'must be an integer >= 2')
  _check(p, 0 <= r.eb_threshold <= 1, 'prune.eb_threshold', r.eb_threshold, 'must be in [0, 1]')
  for field in ('max_params', 'max_macs'):
    _check(p, r[field] is None or 0 < r[field] <= 1, f'prune.{field}', r[field],
           'must be a fraction of the unpruned model in (0, 1], or None for no budget')
  for field in ('holdout', 'score_batches', 'bn_batches'):
    _check(p, _is_int(r[field]) and r[field] >= 1, f'prune.{field}', r[field],
           'must be an integer >= 1')
  _check(p, _is_int(r.finetune_epochs) and r.finetune_epochs >= 0, 'prune.finetune_epochs',
         r.finetune_epochs, 'must be an integer >= 0')
  _check(p, r.slimming_lambda >= 0, 'prune.slimming_lambda', r.slimming_lambda, 'must be >= 0')
  _check(p, r.aggregate in AGGREGATES, 'prune.aggregate', r.aggregate,
         f'must be one of {", ".join(AGGREGATES)}')
  _check(p, _is_int(r.round_to) and r.round_to >= 1, 'prune.round_to', r.round_to,
         'must be an integer >= 1')
  _check(p, r.max_ratio is None or 0 < r.max_ratio < 1, 'prune.max_ratio', r.max_ratio,
         'must be in (0, 1), or None for no cap')
  _check(p, all(isinstance(x, str) and x for x in r.ignored_layers), 'prune.ignored_layers',
         r.ignored_layers, 'must be layer paths, e.g. conv1 or stage1_block1/conv1')
  _check(p, r.finetune_learning_rate > 0, 'prune.finetune_learning_rate',
         r.finetune_learning_rate, 'must be > 0')
  from qprune.prune import SE_CRITERIA  # pylint: disable=g-import-not-at-top
  chosen = set(r.search_criteria or (r.criterion,))
  # (se_gates with a criterion that ignores the gates is the learned variants' control.)
  _check(p, r.se_gates or not chosen & set(SE_CRITERIA), 'prune.criterion',
         sorted(chosen & set(SE_CRITERIA)), 'a learned-attention criterion needs '
         'prune.se_gates=True (SE gates trained during pretraining)')
  _check(p, _is_int(r.se_reduction) and r.se_reduction >= 1, 'prune.se_reduction',
         r.se_reduction, 'must be an integer >= 1')
  _check(p, not r.decide_from or r.stop_rule != 'fixed' or r.pretrain_epochs >= 1,
         'prune.pretrain_epochs', r.pretrain_epochs,
         'with decide_from and stop_rule=fixed must be >= 1 (a decision from a snapshot)')
  _check(p, r.shrink_weights in SHRINK_WEIGHTS, 'prune.shrink_weights', r.shrink_weights,
         f'must be one of {", ".join(SHRINK_WEIGHTS)}')
  _check(p, r.train_budget is None or r.train_budget > 0, 'prune.train_budget', r.train_budget,
         "must be > 0 (a fraction of prune.budget_of's training compute), or None")
  _check(p, bool(r.train_budget) == bool(r.budget_of), 'prune.budget_of' if r.train_budget
         else 'prune.train_budget', r.budget_of if r.train_budget else r.train_budget,
         'prune.train_budget and prune.budget_of go together: the fraction, and the finished '
         'prune run whose training compute it is a fraction of')
  _check(p, r.shrink_weights != 'final' or r.decide_from, 'prune.shrink_weights',
         r.shrink_weights, "'final' needs prune.decide_from (the recorded run whose last "
         'pretraining snapshot is shrunk)')


def _validate_quant(q, p):
  _check(p, q.method in QUANT_METHODS, 'quant.method', q.method,
         f'must be one of {", ".join(QUANT_METHODS)}')
  from qprune.quant import OBJECTIVES  # pylint: disable=g-import-not-at-top
  _check(p, q.objective in OBJECTIVES, 'quant.objective', q.objective,
         f'must be one of {", ".join(OBJECTIVES)}')
  if q.method == 'inq':
    _check(p, q.bits is None or (_is_int(q.bits) and 2 <= q.bits <= 8), 'quant.bits', q.bits,
           'must be an integer in 2..8 with inq (INQ at b bits has 2^(b-2) exponents; beyond 8 '
           'bits they leave float32\'s exponent range), or None for 5')
  else:
    low = 1 if q.zero_code is False else 2
    _check(p, q.bits is None or (_is_int(q.bits) and low <= q.bits <= 5), 'quant.bits', q.bits,
           f'must be an integer in {low}..5 with {q.method} (b bits hold '
           f'{"2^(b-1)" if low == 1 else "2^(b-1) - 1"} exponents, at most 16), or None for '
           'quant.k')
  _check(p, q.bits_budget is None or q.zero_code is False or q.bits_budget >= 2,
         'quant.bits_budget', q.bits_budget, 'below 2 bits needs quant.zero_code=False (a set '
         'with the zero code has at least 3 values: 2 bits a weight)')
  name = q.export_name
  _check(p, isinstance(name, str) and name not in ('', '.', '..') and '/' not in name and
         '\\' not in name and name == name.strip() and name not in _RUN_FILES,
         'quant.export_name', name,
         'must be a plain file name in the workdir (no folders, no ..), e.g. model.qpq, and not '
         'one of the run\'s own files')
  _check(p, _is_int(q.k_max) and 1 <= q.k_max <= 16, 'quant.k_max', q.k_max, 'must be in 1..16')
  _check(p, _is_int(q.k) and 1 <= q.k <= max(q.k_max, 1), 'quant.k', q.k,
         f'must be an integer in 1..quant.k_max ({q.k_max})')
  _check(p, q.tolerance is None or 0 < q.tolerance < 1, 'quant.tolerance', q.tolerance,
         'must be in (0, 1) (relative L1 error), or None (unused)')
  _check(p, q.bits_budget is None or 1 <= q.bits_budget <= 32, 'quant.bits_budget',
         q.bits_budget, 'must be in [1, 32] bits per weight, or None (unused)')
  _check(p, not (q.tolerance and q.bits_budget), 'quant.tolerance/bits_budget',
         (q.tolerance, q.bits_budget), 'set at most one of them')
  schedule = tuple(q.schedule)
  _check(p, bool(schedule) and all(0 < f <= 1 for f in schedule) and
         list(schedule) == sorted(set(schedule)) and schedule[-1] == 1.0, 'quant.schedule',
         schedule, 'must be increasing fractions in (0, 1] ending at 1.0')
  _check(p, all(isinstance(n, str) and n for n in q.exclude), 'quant.exclude', q.exclude,
         "must be layer names, e.g. ('conv1', 'fc2')")
  for field in ('retrain_epochs', 'final_epochs'):
    _check(p, _is_int(q[field]) and q[field] >= 0, f'quant.{field}', q[field],
           'must be an integer >= 0')
  _check(p, q.learning_rate > 0, 'quant.learning_rate', q.learning_rate, 'must be > 0')
  _check(p, 0 <= q.distill_weight <= 1, 'quant.distill_weight', q.distill_weight,
         'must be in [0, 1] (0: no distillation, 1: the teacher\'s soft outputs only)')
  _check(p, q.distill_temperature > 0, 'quant.distill_temperature', q.distill_temperature,
         'must be > 0')
  _check(p, isinstance(q.zero_code, bool), 'quant.zero_code', q.zero_code, 'must be True or False')
  _check(p, q.zero_code is not False or q.method == 'optimal', 'quant.zero_code', q.zero_code,
         f"False (zero-free sets) needs quant.method='optimal', not {q.method!r}")


def semantic_dict(config) -> dict:
  """The config fields that define what a run computes (to detect a reused workdir), in the
  form they take in config.json (tuples become lists), so a stored copy compares equal."""
  d = json.loads(json.dumps(config.to_dict()))
  for field in NON_SEMANTIC_FIELDS:
    d.pop(field, None)
  _normalize_unset(d)
  _canonical_quant(d)
  return d


def _canonical_quant(d: dict, stored: bool = False) -> None:
  """quant.bits in the one form a run's identity uses: inq's resolved width; for kmeans/optimal
  the exponents it asks for, as quant.k. stored: a config.json, where kmeans/optimal's bits were
  ignored before they meant bits (older files hold INQ's 5 there)."""
  q = d.get('quant')
  if not isinstance(q, dict):
    return
  if q.get('method') == 'inq':
    q['bits'] = q.get('bits') or INQ_DEFAULT_BITS
  elif stored:
    q['bits'] = None
  elif q.get('bits'):
    q['k'], q['bits'] = k_for_bits(q['bits'], q.get('zero_code') is not False), None


def with_new_defaults(stored: dict) -> dict:
  """A stored config.json with the fields added to the schema since it was written filled in at
  their defaults, so a run started by an older qprune still matches its own command."""
  def fill(old, default):
    if not isinstance(old, dict) or not isinstance(default, dict):
      return old
    out = dict(old)
    for key, value in default.items():
      out[key] = fill(old[key], value) if key in old else value
    return out
  out = fill(stored, semantic_dict(base_config()))
  _normalize_unset(out)
  _canonical_quant(out, stored=True)
  return out
