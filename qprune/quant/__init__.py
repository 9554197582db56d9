"""Power-of-two quantization: target sets per layer (INQ's rule, k-means on log2|w|, or the
exactly error-optimal sets), the INQ incremental schedule (Zhou et al. 2017), and a bit-packed
export. Pure functions over Flax param pytrees.

  targets = optimal_targets(quantizable_layers(params), k=3)   # {layer: exponents}
  params, mask = run_inq(params, targets, retrain_fn)           # quantize-freeze-retrain
  save_quantized('model.qpq', variables, targets, spec)         # load_quantized reads it back

Zero-free sets {±2^e} (no zero code, every code of ceil(log2(2k)) bits used): pass zero=False to
optimal_targets, quantize, run_inq, layer_report and save_quantized alike.
"""
from qprune.quant.export import (
                                 FORMAT_VERSION,
                                 float32_nbytes,
                                 load_quantized,
                                 read_targets,
                                 save_quantized,
)
from qprune.quant.inq import DEFAULT_SCHEDULE, freeze_mask, no_frozen, run_inq, snap, zero_frozen
from qprune.quant.kmeans import (
                                 CandidateTable,
                                 candidate_table,
                                 cluster_all,
                                 exponent_sets,
                                 initial_centers,
                                 kmeans_targets,
                                 select_by_bit_budget,
                                 select_by_tolerance,
                                 select_fixed_k,
                                 select_targets,
)
from qprune.quant.optax_inq import InqOptaxError, InqState, inq_done, inq_optax, inq_params
from qprune.quant.optimal import OBJECTIVES, optimal_sets, optimal_table, optimal_targets
from qprune.quant.report import average_bits, format_table, layer_report
from qprune.quant.rules import TARGET_RULES, choose_targets
from qprune.quant.targets import (
                                 Targets,
                                 bits_per_weight,
                                 default_path_filter,
                                 in_target_set,
                                 inq_exponents,
                                 inq_targets,
                                 l1_error,
                                 layer_name,
                                 quantizable_layers,
                                 quantize,
                                 quantize_layers,
                                 quantize_params,
                                 relative_l1_error,
                                 replace_layers,
)

__all__ = [
    # target sets per layer
    'choose_targets', 'TARGET_RULES',
    'quantizable_layers', 'default_path_filter', 'layer_name', 'Targets', 'inq_targets',
    'inq_exponents', 'kmeans_targets', 'optimal_targets', 'OBJECTIVES', 'select_targets',
    'select_fixed_k', 'select_by_tolerance', 'select_by_bit_budget', 'CandidateTable',
    'candidate_table', 'optimal_table', 'optimal_sets', 'cluster_all', 'exponent_sets',
    'initial_centers',
    # the quantizer and its error
    'quantize', 'quantize_layers', 'quantize_params', 'replace_layers', 'in_target_set',
    'l1_error', 'relative_l1_error', 'bits_per_weight', 'average_bits', 'layer_report',
    'format_table',
    # the INQ schedule, as a loop or as an optax transform
    'run_inq', 'freeze_mask', 'snap', 'no_frozen', 'zero_frozen', 'DEFAULT_SCHEDULE',
    'inq_optax', 'InqState', 'inq_params', 'inq_done', 'InqOptaxError',
    # export
    'save_quantized', 'load_quantized', 'read_targets', 'float32_nbytes', 'FORMAT_VERSION',
]
