#!/usr/bin/env bash
# Does channel attention improve a pruning criterion? Every criterion, with and without
# attention, and random, from the same pretraining, at two ratios and several seeds; then the
# table (mean ± std over seeds) written to results/<dataset>_<model>/attention_ablation.json for
# RESULTS.md.
#
#   bash configs/sweeps/prune_attention_ablation.sh DATA_DIR OUT [mnist|cifar|tiny|tiny_cifar] [SEEDS]
#
#   mnist  configs/experiments/mnist_lenet5_prune_ablation.py: LeNet-5 on all of MNIST, masks
#          after 2 pretraining epochs, 1 fine-tuning epoch (about 15 minutes per seed on 2 cores)
#   cifar  configs/experiments/cifar10_resnet20_prune_ablation.py: ResNet-20 on CIFAR-10, masks
#          after 2 of 10 pretraining epochs, block-internal channels only, ratios 0.5 and 0.7,
#          1 fine-tuning epoch; by default only random, l1, attention and se_l1 (and l1 on the
#          SE-gated network): about 45 minutes per seed on 2 cores
#   tiny / tiny_cifar  a smoke test of mnist / cifar on 1,400 images (not published)
#   SEEDS  default "0 1 2"
#   $PLAIN / $LEARNED / $GATED  the criteria to run (defaults below: every base, attention and
#          SE one, and as the SE variants' control every base criterion on the SE-gated
#          pretraining, in gated_<criterion>_r<ratio>/)
#
# Per seed, two pretraining runs keep a snapshot of every epoch: a plain one, and one with learned
# squeeze-and-excitation gates (prune.se_gates). Every decision replays one of them
# (prune.decide_from, stop_rule=fixed): the base criteria (random, l1, bn_gamma, taylor) and the
# training-free attention variants from the plain run, the learned se_* variants and their
# control (the base criteria on the same gated network) from the gated one. Reruns skip
# finished runs; each ratio of a seed joins the table as soon as it is done (a run replaces its
# own criterion, ratio and seed there): SEEDS "3 4" later adds seeds, PLAIN=... criteria.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 2 ]] || { sed -n '2,27p' "$0"; exit 2; }
data="$1"; out="$2"; kind="${3:-mnist}"; seeds="${4:-0 1 2}"
python="${QPRUNE_PYTHON:-python}"
config=configs/experiments/mnist_lenet5_prune_ablation.py
ratios="0.6 0.8"
plain="${PLAIN:-random l1 bn_gamma taylor attention attention_bn_gamma attention_taylor}"
learned="${LEARNED:-se_l1 se_bn_gamma se_taylor}"
gated="${GATED:-l1 bn_gamma taylor}"
if [[ "$kind" == cifar || "$kind" == tiny_cifar ]]; then
  config=configs/experiments/cifar10_resnet20_prune_ablation.py
  ratios="0.5 0.7"
  plain="${PLAIN:-random l1 attention}"
  learned="${LEARNED:-se_l1}"
  gated="${GATED:-l1}"
fi
tiny=(--config.train_subset=1400 --config.eval_subset=500 --config.batch_size=64
      --config.prune.holdout=300)
case "$kind" in
  mnist) extra=(); group=results/mnist_lenet5 ;;
  cifar) extra=(); group=results/cifar10_resnet20 ;;
  tiny|tiny_cifar) extra=("${tiny[@]}"); group= ;;
  *) echo "unknown kind '$kind': mnist, cifar, tiny or tiny_cifar" >&2; exit 2 ;;
esac
mkdir -p "$out/logs"
run() {  # run WORKDIR OVERRIDES...: one run, skipped when finished, its log in $out/logs
  local workdir="$1"; shift
  local log="$out/logs/$(echo "${workdir#"$out"/}" | tr / _).log"
  [[ -f "$workdir/results.json" ]] && return 0
  "$python" -m qprune.main --config="$config" --workdir="$workdir" --config.data_dir="$data" \
      --config.progress=False "${extra[@]}" "$@" > "$log" 2>&1 ||
    { echo "failed: see $log" >&2; return 1; }
}
publish() {  # publish SEED: its finished runs join the committed table, RESULTS.md regenerated
  # Called after each ratio, so a machine lost mid-seed keeps the ratios already done; --merge
  # keeps the seeds already in the table, also those of machines whose workdirs are gone.
  "$python" -m qprune.report.ablation --runs="$out/seed$1" \
      --command="bash configs/sweeps/prune_attention_ablation.sh DATA OUT $kind" \
      ${group:+--out="$group/attention_ablation.json" --merge}
  [[ -z "$group" ]] || "$python" -m qprune.report.results write
}
for seed in $seeds; do
  s=(--config.seed="$seed")
  echo "== seed $seed: pretraining" >&2
  run "$out/seed$seed/pretrain" "${s[@]}" --config.prune.snapshots=True \
      --config.prune.finetune_epochs=0
  run "$out/seed$seed/pretrain_se" "${s[@]}" --config.prune.snapshots=True \
      --config.prune.finetune_epochs=0 --config.prune.se_gates=True --config.prune.criterion=se_l1
  for ratio in $ratios; do
    echo "== seed $seed: ratio $ratio" >&2
    for criterion in $plain; do
      run "$out/seed$seed/${criterion}_r$ratio" "${s[@]}" --config.prune.criterion="$criterion" \
          --config.prune.ratio="$ratio" --config.prune.decide_from="$out/seed$seed/pretrain"
    done
    for criterion in $learned; do
      run "$out/seed$seed/${criterion}_r$ratio" "${s[@]}" --config.prune.criterion="$criterion" \
          --config.prune.ratio="$ratio" --config.prune.se_gates=True \
          --config.prune.decide_from="$out/seed$seed/pretrain_se"
    done
    for criterion in $gated; do  # the same network as the se_* runs, scored without excitation
      run "$out/seed$seed/gated_${criterion}_r$ratio" "${s[@]}" \
          --config.prune.criterion="$criterion" --config.prune.ratio="$ratio" \
          --config.prune.se_gates=True --config.prune.decide_from="$out/seed$seed/pretrain_se"
    done
    publish "$seed"
  done
done
