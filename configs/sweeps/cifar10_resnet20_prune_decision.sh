#!/usr/bin/env bash
# The CIFAR-10 ResNet-20 pruning decision study in one command: per criterion, one pretraining
# run that records the masks and a snapshot of every epoch (stop_rule=full), then decisions
# taken from it at 10 %, 20 % and 50 % of the pretraining epochs and by the Early-Bird rule
# (prune.decide_from: no pretraining is repeated), each shrunk and fine-tuned with the same
# budget; then published under results/cifar10_resnet20/prune_<criterion>_<decision>/ (cpu) or
# results/cifar10_resnet20_gpu/... (gpu) and RESULTS.md regenerated.
#
#   bash configs/sweeps/cifar10_resnet20_prune_decision.sh DATA_DIR OUT [gpu|cpu|tiny] [CRITERIA]
#
#   cpu   configs/experiments/cifar10_resnet20_prune_decision.py: 10 pretraining epochs,
#         2 fine-tuning epochs (about 1 hour per criterion on 2 cores)
#   gpu   the paper's schedule: 160 pretraining epochs, Early-Bird window 5, 40 fine-tuning epochs
#   tiny  a smoke test of the whole command on 512 images (minutes on a CPU; not published)
#   CRITERIA  default "l1 bn_gamma" (bn_gamma pretrains with the Network Slimming penalty on
#             BatchNorm gamma, lambda 1e-5 as Liu et al. 2017 use for ResNets)
#   CONTROL_EPOCHS (environment) decision epochs whose masks also cut the fully pretrained
#             weights (prune.shrink_weights=final), e.g. CONTROL_EPOCHS="2 4"; default none
#   LONG_FINETUNE (environment) "EPOCHS LR", e.g. "6 0.1": the decisions after all pretraining
#             epochs, at 20 % and by the Early-Bird rule again, fine-tuned for EPOCHS at LR
#             (named <decision>_ft<EPOCHS>): does the early decision catch up when the pruned
#             network is trained longer? default none
#
# DATA_DIR holds cifar10/ or cifar10.tar.gz. Reruns resume every run and skip finished ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 2 ]] || { sed -n '2,22p' "$0"; exit 2; }
data="$1"; out="$2"; kind="${3:-gpu}"; criteria="${4:-l1 bn_gamma}"
CONTROL_EPOCHS="${CONTROL_EPOCHS:-}"
read -r long_epochs long_lr <<< "${LONG_FINETUNE:-}" || true
[[ -z "$long_epochs" || -n "$long_lr" ]] ||
  { echo "LONG_FINETUNE must be \"EPOCHS LR\", e.g. \"6 0.1\"" >&2; exit 2; }
python="${QPRUNE_PYTHON:-python}"
config=configs/experiments/cifar10_resnet20_prune_decision.py
case "$kind" in
  cpu) extra=() ;;
  gpu) extra=(--config.epochs=160 --config.weight_decay=1e-4 --config.prune.eb_window=5
              --config.prune.finetune_epochs=40 --config.batch_size=256 --config.learning_rate=0.2) ;;
  tiny) extra=(--config.epochs=4 --config.train_subset=1024 --config.eval_subset=256
               --config.batch_size=64 --config.prune.holdout=300 --config.prune.finetune_epochs=1) ;;
  *) echo "unknown kind '$kind': gpu, cpu or tiny" >&2; exit 2 ;;
esac
epochs=$("$python" -m qprune.main --config="$config" "${extra[@]}" --print_config 2>/dev/null |
         "$python" -c 'import json, sys; print(json.load(sys.stdin)["epochs"])')
[[ -n "$epochs" ]] || { echo "cannot read epochs from $config" >&2; exit 1; }
# 10 %, 20 % and 50 % of the pretraining epochs (at least 1), deduplicated.
decisions=$(for pct in 10 20 50; do e=$(( epochs * pct / 100 )); echo $(( e < 1 ? 1 : e )); done |
            sort -n -u)
group=results/cifar10_resnet20; [[ "$kind" == cpu ]] || group="${group}_$kind"
for criterion in $criteria; do
  crit=(--config.prune.criterion="$criterion")
  [[ "$criterion" != bn_gamma ]] || crit+=(--config.prune.slimming_lambda=1e-5)
  run() {  # run NAME OVERRIDES...: one run of the study, its log beside its workdir
    local name="$1"; shift
    mkdir -p "$out/logs"
    echo "== $criterion $name" >&2
    "$python" -m qprune.main --config="$config" --workdir="$out/$criterion/$name" \
        --config.data_dir="$data" "${extra[@]}" "${crit[@]}" "$@" \
        > "$out/logs/${criterion}_$name.log" 2>&1 ||
      { echo "failed: see $out/logs/${criterion}_$name.log" >&2; return 1; }
  }
  run full
  source_dir="$out/$criterion/full"
  for e in $decisions; do
    run "epoch$e" --config.prune.decide_from="$source_dir" --config.prune.stop_rule=fixed \
        --config.prune.pretrain_epochs="$e"
  done
  run early_bird --config.prune.decide_from="$source_dir" --config.prune.stop_rule=early_bird
  # Controls: the same early masks cutting the weights after all pretraining epochs, then the
  # same fine-tuning; what is left of the gap to the full-training decision is the mask's.
  controls=()
  for e in $CONTROL_EPOCHS; do
    run "epoch${e}_final_weights" --config.prune.decide_from="$source_dir" \
        --config.prune.stop_rule=fixed --config.prune.pretrain_epochs="$e" \
        --config.prune.shrink_weights=final
    controls+=("epoch${e}_final_weights")
  done
  # Longer fine-tuning: the last epoch, 20 % and the Early-Bird rule, each trained EPOCHS more.
  long=()
  if [[ -n "$long_epochs" ]]; then
    ft=(--config.prune.finetune_epochs="$long_epochs" --config.prune.finetune_learning_rate="$long_lr")
    early=$(( epochs / 5 < 1 ? 1 : epochs / 5 ))
    for e in "$epochs" "$early"; do
      name="epoch${e}_ft$long_epochs"; [[ "$e" != "$epochs" ]] || name="full_ft$long_epochs"
      run "$name" --config.prune.decide_from="$source_dir" --config.prune.stop_rule=fixed \
          --config.prune.pretrain_epochs="$e" "${ft[@]}"
      long+=("$name")
    done
    run "early_bird_ft$long_epochs" --config.prune.decide_from="$source_dir" \
        --config.prune.stop_rule=early_bird "${ft[@]}"
    long+=("early_bird_ft$long_epochs")
  fi
  if [[ "$kind" != tiny ]]; then
    for name in full $(for e in $decisions; do echo "epoch$e"; done) early_bird "${controls[@]}" \
                "${long[@]}"; do
      "$python" -m qprune.report.results publish --workdir="$out/$criterion/$name" \
          --to="$group/prune_${criterion}_$name"
    done
  fi
done
[[ "$kind" != tiny ]] || { echo "tiny run finished: $out (not published)"; exit 0; }
"$python" -m qprune.report.results write
