#!/usr/bin/env bash
# The whole CIFAR-10 ResNet-20 quantization table in one command: the full-precision model, then
# every target rule of cifar10_resnet20_quant.txt from it (launch.sh, one job per GPU), then the
# runs published under results/cifar10_resnet20/ (cpu) or results/cifar10_resnet20_gpu/ (gpu) and
# RESULTS.md regenerated.
#
#   bash configs/sweeps/cifar10_resnet20.sh DATA_DIR OUT [gpu|cpu|tiny]
#
#   gpu   configs/cifar10_resnet20_gpu.py (160 epochs, batch 256) - the paper's schedule
#   cpu   configs/cifar10_resnet20_cpu.py (30 epochs, about 1.5 h on 2 cores), then one
#         retraining epoch per INQ step (~12 min per quantized variant)
#   tiny  a smoke test of the whole command on 512 images (minutes on a CPU; not published)
#
# DATA_DIR holds cifar10/ or cifar10.tar.gz (image-folder layout). Reruns resume every run
# from its checkpoints and skip finished ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 2 ]] || { sed -n '2,15p' "$0"; exit 2; }
data="$1"; out="$2"; kind="${3:-gpu}"
python="${QPRUNE_PYTHON:-python}"
extra=()        # every run
quant_extra=()  # the quantized variants only
case "$kind" in
  gpu) fp_config=configs/cifar10_resnet20_gpu.py ;;
  cpu) fp_config=configs/cifar10_resnet20_cpu.py
       quant_extra=(--config.quant.retrain_epochs=1) ;;   # ~12 min per variant on 2 cores
  tiny) fp_config=configs/cifar10_resnet20_cpu.py
        extra=(--config.epochs=1 --config.train_subset=512 --config.eval_subset=256
               --config.batch_size=64 --config.quant.retrain_epochs=1 --config.quant.final_epochs=0) ;;
  *) echo "unknown kind '$kind': gpu, cpu or tiny" >&2; exit 2 ;;
esac
"$python" -m qprune.main --config="$fp_config" --workdir="$out/fp" --config.data_dir="$data" \
    "${extra[@]}"
QPRUNE_PYTHON="$python" ./launch.sh --sweep configs/sweeps/cifar10_resnet20_quant.txt \
    --out "$out/quant" --no-plots \
    --set "--config.init_from=$out/fp --config.data_dir=$data ${extra[*]} ${quant_extra[*]}"
[[ "$kind" != tiny ]] || { echo "tiny run finished: $out (not published)"; exit 0; }
group=results/cifar10_resnet20; [[ "$kind" == cpu ]] || group="${group}_$kind"
"$python" -m qprune.report.results publish --workdir="$out/fp" --to="$group/fp"
"$python" -m qprune.report.results publish_sweep --sweep="$out/quant" --to="$group"
"$python" -m qprune.report.results write
