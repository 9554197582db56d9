"""Structured (channel) pruning: groups -> criteria scores -> selection -> masks -> shrink.

Typical use (see each module's docstring for shapes and math):

  groups = derive_groups(variables, model=model, example_input=x)  # traced from any Flax model
  groups = derive_groups(variables, residual=True)             # zoo only: by layer names
  masks = make_masks(variables, groups, 'attention', 0.5, 'global', model=model,
                     batches=(images, labels))                  # {group: bool[C]}, True = keep
  state, info = early_bird_step(state, masks)                   # after each pretraining epoch
  best, rows, all_masks = search(model, variables, groups, candidate_grid(...), input_shape,
                                 bn_images, eval_images, eval_labels, max_macs=...)
  small_model, small_variables = shrink(model, variables, groups, all_masks[best])
"""
from qprune.prune.criteria import (AGGREGATES, CRITERIA, attention_scores, bn_gamma_scores,
                                   channel_attention, group_l1_parts, l1_gamma_penalty, l1_scores,
                                   random_scores, register_criterion, score, taylor_scores)
from qprune.prune.decision import (EarlyBirdRule, EarlyBirdState, early_bird_step,
                                   mask_distance, max_pairwise_distance)
from qprune.prune.groups import (RESIDUAL, ChannelGroup, Slot, derive_groups, group_sizes,
                                 ignore_layers)
from qprune.prune.masks import (apply_masks, apply_with_gates, full_masks, kept_counts,
                                stack_masks, unstack_masks)
from qprune.prune.search import (Candidate, batched, candidate_grid, candidate_masks, choose_best,
                                 evaluate_candidates, evaluate_masks, evaluate_masks_jit,
                                 reestimate_bn_stats, search)
from qprune.prune.selection import SELECTIONS, make_masks, register_selection, select
from qprune.prune.shrink import (ShrunkModel, mask_cost, model_cost, shrink, shrink_report,
                                 shrunk_model, shrunk_widths, slice_variables, width_overrides)
from qprune.prune.trace import (NoPrunableChannelsError, PruningTraceWarning, TraceError,
                                TraceResult, trace_model, traced_groups)
from qprune.prune.tracker import EarlyBirdTracker, TrackerError, tracker_step
