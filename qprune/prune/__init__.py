"""Structured (channel) pruning: groups -> criteria scores -> selection -> masks -> shrink.

Typical use (see each module's docstring for shapes and math):

  groups = derive_groups(variables, model=model, example_input=x)  # traced from any Flax model
  groups = derive_groups(nnx_module, example_input=x)           # Flax NNX: the same, and every
                                                                # function below takes the module
  groups = derive_groups(variables, residual=True)             # zoo only: by layer names
  masks = make_masks(variables, groups, 'attention', 0.5, 'global', model=model,
                     batches=(images, labels))                  # {group: bool[C]}, True = keep
  state, info = early_bird_step(state, masks)                   # after each pretraining epoch
  found = search(model, variables, groups, candidate_grid(...), input_shape,
                 bn_images, eval_images, eval_labels, max_macs=...)  # SearchResult
  small_model, small_variables = shrink(model, variables, groups, found.best_masks)
"""
from qprune.prune.attention import (
                                    SE_CRITERIA,
                                    WithSqueezeExcite,
                                    attach_se,
                                    detach_se,
                                    gate_variables,
                                    learned_attention_scores,
                                    mean_excitation,
                                    with_gates,
)
from qprune.prune.criteria import (
                                    AGGREGATES,
                                    CRITERIA,
                                    attention_scores,
                                    bn_gamma_scores,
                                    channel_attention,
                                    l1_gamma_penalty,
                                    l1_scores,
                                    random_scores,
                                    register_criterion,
                                    score,
                                    taylor_scores,
)
from qprune.prune.decision import (
                                    STOP_RULES,
                                    EarlyBirdRule,
                                    EarlyBirdState,
                                    early_bird_step,
                                    mask_distance,
)
from qprune.prune.groups import (
                                    RESIDUAL,
                                    ChannelGroup,
                                    IgnoredLayersError,
                                    Slot,
                                    derive_groups,
                                    group_sizes,
                                    ignore_layers,
)
from qprune.prune.masks import (
                                    MaskError,
                                    apply_masks,
                                    apply_with_gates,
                                    check_masks,
                                    full_masks,
                                    kept_counts,
                                    stack_masks,
)
from qprune.prune.search import (
                                    SEARCH_METHODS,
                                    Candidate,
                                    SearchResult,
                                    batched,
                                    candidate_grid,
                                    candidate_masks,
                                    choose_best,
                                    evaluate_candidates,
                                    evaluate_masks,
                                    evaluate_masks_jit,
                                    race,
                                    reestimate_bn_stats,
                                    search,
)
from qprune.prune.selection import (
                                    SELECTIONS,
                                    SelectionError,
                                    make_masks,
                                    register_selection,
                                    select,
)
from qprune.prune.shrink import (
                                    ShrunkModel,
                                    mask_cost,
                                    model_cost,
                                    shrink,
                                    shrink_report,
                                    shrunk_widths,
)
from qprune.prune.trace import (
                                    NoPrunableChannelsError,
                                    PruningTraceWarning,
                                    TraceError,
                                    TraceResult,
                                    trace_model,
                                    traced_groups,
)
from qprune.prune.tracker import EarlyBirdTracker, TrackerError, tracker_step

__all__ = [
    # channel groups: traced from any Flax model, or the zoo's naming rules
    'derive_groups', 'trace_model', 'traced_groups', 'TraceResult', 'ChannelGroup', 'Slot',
    'RESIDUAL', 'group_sizes', 'ignore_layers', 'TraceError', 'NoPrunableChannelsError',
    'PruningTraceWarning', 'IgnoredLayersError',
    # criteria (one registry) and the network-slimming penalty
    'CRITERIA', 'AGGREGATES', 'register_criterion', 'score', 'l1_scores', 'bn_gamma_scores',
    'taylor_scores', 'random_scores', 'attention_scores', 'channel_attention', 'l1_gamma_penalty',
    # learned channel attention: SE gates trained during pretraining, dropped before shrinking
    'SE_CRITERIA', 'WithSqueezeExcite', 'attach_se', 'detach_se', 'gate_variables', 'with_gates',
    'mean_excitation', 'learned_attention_scores',
    # selection (one registry) -> masks
    'SELECTIONS', 'register_selection', 'select', 'SelectionError', 'make_masks', 'full_masks',
    'apply_masks', 'MaskError', 'check_masks',
    'apply_with_gates', 'kept_counts', 'stack_masks',
    # the early decision
    'STOP_RULES', 'EarlyBirdRule', 'EarlyBirdState', 'early_bird_step', 'mask_distance',
    'EarlyBirdTracker',
    'TrackerError', 'tracker_step',
    # candidate search
    'Candidate', 'SearchResult', 'candidate_grid', 'candidate_masks', 'search', 'choose_best',
    'race', 'SEARCH_METHODS',
    'evaluate_candidates', 'evaluate_masks', 'evaluate_masks_jit', 'reestimate_bn_stats',
    'batched',
    # shrinking
    'shrink', 'ShrunkModel', 'shrunk_widths', 'shrink_report', 'model_cost', 'mask_cost',
]
