#!/usr/bin/env bash
# The three ways to run one job on two processes, next to one process with two devices, on real
# MNIST (LeNet-5, 16,384 training images, 2 epochs, the full test split, global batch 128):
#
#   bash reproduce/benchmarks/multiprocess.sh DATA OUT     # needs a SLURM cluster (tools/slurm_cluster.sh)
#
# prints one markdown row per way: test accuracy, the largest relative parameter difference from
# the one-process run, wall time (results.json) and devices. Run from the checkout's root.
set -euo pipefail
[[ $# -eq 2 ]] || { sed -n '2,9p' "$0"; exit 2; }
data="$1"; out="$2"
rm -rf "$out"; mkdir -p "$out"
flags=(--config.train_subset=16384 --config.epochs=2 --config.progress=False --config.seed=0
       --config.data_dir="$data")
run() { python -m qprune.main --config=configs/mnist_lenet5.py --workdir="$1" "${flags[@]}"; }
XLA_FLAGS=--xla_force_host_platform_device_count=2 run "$out/local2" > "$out/local2.log" 2>&1
port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \
  run "$out/vars" > "$out/vars.1.log" 2>&1 &
JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
  run "$out/vars" > "$out/vars.0.log" 2>&1
wait
srun --ntasks=2 --output="$out/srun.%t.log" python -m qprune.main --config=configs/mnist_lenet5.py \
  --workdir="$out/srun" "${flags[@]}"
./launch.sh --configs configs/mnist_lenet5.py --set "${flags[*]}" --out "$out/launch" \
  --scheduler slurm --sbatch "--ntasks=2" --wait --no-plots > "$out/launch.out" 2>&1
PYTHONPATH=tests python - "$out" <<'PY'
import json, os, sys
from multiprocess import largest_relative_difference
out = sys.argv[1]
ref = f'{out}/local2'
print('| way | test accuracy | largest relative param difference | wall | devices |')
print('|---|---|---|---|---|')
for name, w in (('1 process x 2 devices', ref), ('2 processes, explicit variables', f'{out}/vars'),
                ('srun --ntasks=2', f'{out}/srun'),
                ('launch.sh --scheduler slurm --sbatch --ntasks=2', f'{out}/launch/mnist_lenet5_s0')):
  r = json.load(open(os.path.join(w, 'results.json')))
  print(f"| {name} | {r['test_accuracy'] * 100:.2f} % | {largest_relative_difference(ref, w):.3g} | "
        f"{r['wall_time_s']:.1f} s | {r['devices']} |")
PY
