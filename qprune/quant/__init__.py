"""Power-of-two quantization: INQ rule and clustered (k-means on log2|w|) target sets, the INQ
incremental schedule, and a small bit-packed export. Pure functions over Flax param pytrees."""
from qprune.quant.export import (FORMAT_VERSION, float32_nbytes, load_quantized, read_targets,
                                 save_quantized)
from qprune.quant.inq import DEFAULT_SCHEDULE, freeze_mask, no_frozen, run_inq, snap, zero_frozen
from qprune.quant.kmeans import (CandidateTable, Clusters, candidate_errors, candidate_table,
                                 cluster_all, exponent_sets, initial_centers, kmeans_targets,
                                 select_by_bit_budget,
                                 select_by_tolerance, select_fixed_k, select_targets)
from qprune.quant.optimal import OBJECTIVES, optimal_sets, optimal_table, optimal_targets
from qprune.quant.report import average_bits, format_table, layer_report
from qprune.quant.targets import (Targets, bits_per_weight, default_path_filter, in_target_set,
                                  inq_exponents, inq_targets, l1_error, layer_name, quantizable_layers,
                                  quantize, quantize_layers, quantize_params, relative_l1_error,
                                  replace_layers)
from qprune.quant.optax_inq import InqOptaxError, InqState, inq_done, inq_optax, inq_params
