#!/usr/bin/env bash
# launch.sh: run a batch of qprune jobs (configs x override variants x seeds) and collect them.
#
# Usage:
#   ./launch.sh --configs configs/a.py,configs/b.py [--override "--config.x=1"]... \
#               [--seeds 0,1] [--set "--config.epochs=1 --config.data_dir=DATA"] \
#               [--out runs/sweep1] [--gpus 0,1] [--dry-run [--no-check]] [--no-plots]
#   ./launch.sh ... --multi-host [--hosts N] [--coordinator HOST:PORT]   # print per-host commands
#   ./launch.sh --sweep sweep.txt [--seeds 0,1] [--set "..."] [--out DIR]
#   ./launch.sh ... --scheduler slurm [--sbatch "SBATCH ARGS"] [--wait]   # one SLURM job array
#
# Jobs. Every config (--configs, comma-separated) runs once per override variant (--override,
# repeatable; none given = one variant without overrides) and once per seed (--seeds, default
# 0; passed as --config.seed=S). A sweep file (--sweep) adds one job line per line:
# `config [--config.field=value ...]` (blank lines and lines whose first character other than
# blanks is # are skipped; a # elsewhere is part of a value; Windows line ends are fine), each
# run once per seed. --set adds overrides to every job (before the variant's own, so a variant
# wins). Sweep lines, --override and --set are split into words as a shell would, without
# expanding anything: quote a value with spaces ("--config.prune.search_ratios=(0.5, 0.7)"); the
# job and --dry-run get the same words.
#
# Each job runs `$QPRUNE_PYTHON -m qprune.main --config=CONFIG --workdir=WORKDIR <overrides>`
# with workdir <out>/<config-stem>[_<override-tag>]_s<seed> (tag: the variant's overrides
# without "--config.", "=" -> "-", e.g. learning_rate-0.02) and log <out>/logs/<name>.log
# (exit status in <out>/logs/<name>.rc; each attempt is appended to the log, so a rerun keeps
# the earlier output). <out>/jobs.tsv lists the jobs. Rerunning the same launch resumes
# unfinished jobs from their checkpoints and skips finished ones (the binary does that per
# workdir). One launch at a time writes into an <out>: a second one is refused (the lock is
# <out>/.launch.lock, released at exit). Ctrl-C (or SIGTERM) stops the running job(s) at their
# safe point (a checkpoint) and starts no other; exit status 130 (143); rerun to resume.
#
# --dry-run runs nothing: it checks every job (its config file loads, every --config.* override
# names a real field with a valid value, qprune.configs.validate accepts the result; all jobs in
# one $QPRUNE_PYTHON process, exit status 2 naming the bad jobs) and prints the commands, as a
# script that can be run as printed (it starts with the mkdir of the log folder). --no-check
# skips the check (e.g. on a machine without qprune installed).
#
# Scheduling. When `nvidia-smi -L` lists GPUs, jobs run in parallel, one per GPU
# (CUDA_VISIBLE_DEVICES=<i>; --gpus 0,2 picks the GPUs); otherwise one after another. A failed
# job does not stop the others. At the end the results are collected into <out>/summary.md and
# <out>/summary.csv (`python qprune/report/collect.py <out> --plots`, also
# <out>/plots/accuracy_vs_{bits,macs}.png unless --no-plots); jobs that differ only in their
# seed are also aggregated (mean ± sample std, n) in a second table of summary.md and in
# <out>/summary_seeds.csv. The exit status is 1 when a job failed, and the failed jobs are
# named on stderr.
#
# Several hosts (TPU VM pods, multi-node GPU). One job then spans all hosts: every host runs
# the SAME command at the same time, and the binary joins one jax.distributed job: under any
# cluster jax detects (SLURM srun tasks, Open MPI, TPU pods, Kubernetes) by itself, elsewhere
# from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (docs/clusters.md).
# `--multi-host` (with --hosts N)
# prints, for every job, the per-host command instead of running anything:
#   * TPU VM pod slice: JAX_NUM_PROCESSES=N (TPU metadata supplies the coordinator and each
#     host's id), launched on all workers at once, e.g.
#       gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all --command "cd qprune && <cmd>"
#   * GPU hosts: JAX_COORDINATOR_ADDRESS=HOST0:PORT (--coordinator) JAX_NUM_PROCESSES=N
#     JAX_PROCESS_ID=<0..N-1> on each host (SLURM / Open MPI environments are auto-detected).
#   The workdir (--out) must be on storage every host sees (NFS, GCS fuse): checkpoints are
#   written collectively. Run the jobs of a multi-host batch one after another.
#
# SLURM (--scheduler slurm; the default is local): the whole batch is submitted as ONE sbatch
# job array, one array task per job (tools/slurm_batch.py writes <out>/slurm_batch.sh). --sbatch
# passes options on, e.g. "--partition=gpu --time=4:00:00", or "--nodes=2 --ntasks-per-node=1"
# to make every job one multi-process run under srun (each task joins the job by itself).
# Preempted tasks are requeued and resume from their checkpoints. Logs: <out>/logs/<name>.log
# (appended on every restart) and <name>.rc as above. --wait returns when SLURM holds none of
# the batch's tasks, then collects as above; without it a dependent job collects. --dry-run
# prints the sbatch script. See docs/clusters.md.
#
# Environment: QPRUNE_PYTHON (interpreter for the jobs; default: $VIRTUAL_ENV/bin/python of an
# active virtualenv, else python, else python3),
# QPRUNE_COLLECT_PYTHON (for the collector; default: the same), QPRUNE_NVIDIA_SMI (default:
# nvidia-smi).
set -u

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {  # the comment block at the top of this file, without the '# '
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
}

die() { echo "launch.sh: error: $*" >&2; exit 2; }

split_words() {  # STRING -> its words, one a line, split and unquoted as a shell would (no
  # expansion of $, *, ~); exit status 1 on an unmatched quote
  [[ "$1" =~ [^[:space:]] ]] || return 0
  printf '%s\n' "$1" | xargs printf '%s\n' 2>/dev/null
}

default_python() {
  if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then echo "$VIRTUAL_ENV/bin/python"
  elif command -v python >/dev/null 2>&1; then echo python; else echo python3; fi
}

CONFIGS=()
VARIANTS=()
SEEDS="0"
SET=""
OUT=""
SWEEP=""
DRY_RUN=0
CHECK=1
PLOTS="--plots"
MULTI_HOST=0
HOSTS="N"
COORDINATOR="HOST0:8476"
GPUS=""
SCHEDULER="local"
SBATCH_ARGS=""
WAIT=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --configs) [[ $# -ge 2 ]] || die "--configs needs a value"
      IFS=',' read -r -a _c <<< "$2"; CONFIGS+=("${_c[@]}"); shift 2 ;;
    --configs=*) IFS=',' read -r -a _c <<< "${1#*=}"; CONFIGS+=("${_c[@]}"); shift ;;
    --override) [[ $# -ge 2 ]] || die "--override needs a value"
      _w="$(split_words "$2")" || die "unmatched quote in --override '$2'"
      VARIANTS+=("$_w"); shift 2 ;;
    --override=*) _w="$(split_words "${1#*=}")" || die "unmatched quote in '$1'"
      VARIANTS+=("$_w"); shift ;;
    --seeds) [[ $# -ge 2 ]] || die "--seeds needs a value"; SEEDS="$2"; shift 2 ;;
    --seeds=*) SEEDS="${1#*=}"; shift ;;
    --set) [[ $# -ge 2 ]] || die "--set needs a value"
      _w="$(split_words "$2")" || die "unmatched quote in --set '$2'"
      SET="${SET:+$SET$'\n'}$_w"; shift 2 ;;
    --set=*) _w="$(split_words "${1#*=}")" || die "unmatched quote in '$1'"
      SET="${SET:+$SET$'\n'}$_w"; shift ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    --sweep) [[ $# -ge 2 ]] || die "--sweep needs a value"; SWEEP="$2"; shift 2 ;;
    --sweep=*) SWEEP="${1#*=}"; shift ;;
    --gpus) [[ $# -ge 2 ]] || die "--gpus needs a value"; GPUS="$2"; shift 2 ;;
    --gpus=*) GPUS="${1#*=}"; shift ;;
    --scheduler) [[ $# -ge 2 ]] || die "--scheduler needs local or slurm"; SCHEDULER="$2"; shift 2 ;;
    --scheduler=*) SCHEDULER="${1#*=}"; shift ;;
    --sbatch) [[ $# -ge 2 ]] || die "--sbatch needs a value"; SBATCH_ARGS="$SBATCH_ARGS $2"; shift 2 ;;
    --sbatch=*) SBATCH_ARGS="$SBATCH_ARGS ${1#*=}"; shift ;;
    --wait) WAIT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-check) CHECK=0; shift ;;
    --no-plots) PLOTS=""; shift ;;
    --multi-host) MULTI_HOST=1; shift ;;
    --hosts) [[ $# -ge 2 ]] || die "--hosts needs a number"; HOSTS="$2"; shift 2 ;;
    --hosts=*) HOSTS="${1#*=}"; shift ;;
    --coordinator) [[ $# -ge 2 ]] || die "--coordinator needs HOST:PORT"; COORDINATOR="$2"; shift 2 ;;
    --coordinator=*) COORDINATOR="${1#*=}"; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ "$HOSTS" == N || "$HOSTS" =~ ^[1-9][0-9]*$ ]] || die "--hosts takes a number, got '$HOSTS'"
[[ "$SCHEDULER" == local || "$SCHEDULER" == slurm ]] \
  || die "--scheduler takes local or slurm, got '$SCHEDULER'"
if [[ "$SCHEDULER" == local ]]; then
  [[ -z "${SBATCH_ARGS// /}" && $WAIT -eq 0 ]] || die "--sbatch and --wait need --scheduler slurm"
else
  [[ $MULTI_HOST -eq 0 && -z "$GPUS" ]] \
    || die "--multi-host and --gpus do not apply to --scheduler slurm (use --sbatch \"--nodes=N ...\")"
fi
[[ ${#CONFIGS[@]} -gt 0 || -n "$SWEEP" ]] || die "give --configs or --sweep (see --help)"
[[ -z "$SWEEP" || -f "$SWEEP" ]] || die "no sweep file $SWEEP"
IFS=',' read -r -a SEED_LIST <<< "$SEEDS"
for s in "${SEED_LIST[@]}"; do [[ "$s" =~ ^[0-9]+$ ]] || die "bad seed '$s' in --seeds"; done
[[ ${#VARIANTS[@]} -gt 0 ]] || VARIANTS=("")
OUT="${OUT:-runs/sweep_$(date +%Y%m%d_%H%M%S)}"
PY="${QPRUNE_PYTHON:-$(default_python)}"
COLLECT_PY="${QPRUNE_COLLECT_PYTHON:-${QPRUNE_PYTHON:-$(default_python)}}"

# ---------------------------------------------------------------------------------------------
# The job list: parallel arrays of name, config, overrides (variant part), seed.

tag_of() {  # words "--config.learning_rate=0.02" "--config.width=0.5" (one a line)
  #           -> learning_rate-0.02_width-0.5
  local tag="" word
  while IFS= read -r word; do
    [[ -n "$word" ]] || continue
    word="${word#--config.}"; word="${word#--}"; word="${word//=/-}"
    word="$(printf '%s' "$word" | tr -c 'A-Za-z0-9._-' '_')"
    tag="${tag:+${tag}_}$word"
  done <<< "$1"
  if [[ ${#tag} -gt 60 ]]; then
    tag="${tag:0:40}_$(printf '%s' "$1" | cksum | cut -d' ' -f1)"
  fi
  printf '%s' "$tag"
}

J_NAME=(); J_CONFIG=(); J_OVR=(); J_SEED=()
add_jobs() {  # config, variant overrides
  local config="$1" variant="$2" stem tag seed name
  stem="$(basename "$config")"; stem="${stem%.py}"
  tag="$(tag_of "$variant")"
  for seed in "${SEED_LIST[@]}"; do
    name="${stem}${tag:+_$tag}_s${seed}"
    for other in "${J_NAME[@]+"${J_NAME[@]}"}"; do
      [[ "$other" != "$name" ]] || die "two jobs would share the workdir $OUT/$name"
    done
    J_NAME+=("$name"); J_CONFIG+=("$config"); J_OVR+=("$variant"); J_SEED+=("$seed")
  done
}

for config in "${CONFIGS[@]+"${CONFIGS[@]}"}"; do
  [[ -n "$config" ]] || continue
  for variant in "${VARIANTS[@]}"; do add_jobs "$config" "$variant"; done
done
if [[ -n "$SWEEP" ]]; then
  lineno=0
  while IFS= read -r line || [[ -n "$line" ]]; do
    lineno=$((lineno + 1))
    line="${line%$'\r'}"
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    words="$(split_words "$line")" || die "$SWEEP, line $lineno: unmatched quote"
    config="${words%%$'\n'*}"
    variant=""; [[ "$words" == *$'\n'* ]] && variant="${words#*$'\n'}"
    add_jobs "$config" "$variant"
  done < "$SWEEP"
fi
[[ ${#J_NAME[@]} -gt 0 ]] || die "no jobs"
for config in "${J_CONFIG[@]}"; do
  [[ $DRY_RUN -eq 1 || -f "$config" ]] || die "no config file $config"
done

job_args() {  # index -> the binary's arguments, one a line (the words of --set and the variant)
  local i="$1"
  printf '%s\n' "-m" "qprune.main" "--config=${J_CONFIG[$i]}" "--workdir=$OUT/${J_NAME[$i]}"
  [[ -z "$SET" ]] || printf '%s\n' "$SET"
  [[ -z "${J_OVR[$i]}" ]] || printf '%s\n' "${J_OVR[$i]}"
  printf '%s\n' "--config.seed=${J_SEED[$i]}"
}

job_command() {  # printable command line of job i
  local args
  mapfile -t args < <(job_args "$1")
  printf '%s' "$PY"
  printf ' %q' "${args[@]}"
}

# ---------------------------------------------------------------------------------------------
# Multi-host: print the per-host commands and stop.

if [[ $MULTI_HOST -eq 1 ]]; then
  echo "# ${#J_NAME[@]} job(s) for $HOSTS hosts; run each job on ALL hosts at once, jobs one after another."
  echo "# --out ($OUT) must be shared storage. TPU VM pod slice (coordinator and ids from TPU metadata):"
  for i in "${!J_NAME[@]}"; do
    echo "JAX_NUM_PROCESSES=$HOSTS $(job_command "$i")"
  done
  echo "#   e.g. gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all --command \"cd qprune && JAX_NUM_PROCESSES=$HOSTS ...\""
  last="$HOSTS-1"; [[ "$HOSTS" == N ]] || last=$((HOSTS - 1))
  echo "# GPU hosts: on host h = 0..$last (host 0 = the coordinator, reachable by all):"
  for i in "${!J_NAME[@]}"; do
    echo "JAX_COORDINATOR_ADDRESS=$COORDINATOR JAX_NUM_PROCESSES=$HOSTS JAX_PROCESS_ID=\$h $(job_command "$i")"
  done
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Devices.

GPU_LIST=()
if [[ -n "$GPUS" ]]; then
  IFS=',' read -r -a GPU_LIST <<< "$GPUS"
else
  SMI="${QPRUNE_NVIDIA_SMI:-nvidia-smi}"
  if command -v "$SMI" >/dev/null 2>&1; then
    count="$("$SMI" -L 2>/dev/null | grep -c '^GPU ')"
    for ((g = 0; g < count; g++)); do GPU_LIST+=("$g"); done
  fi
fi

check_jobs() {  # every job's flags and config, in one python process; exit 2 naming bad jobs
  local list i status
  list="$(mktemp "${TMPDIR:-/tmp}/qprune-jobs.XXXXXX")" || die "cannot create a temporary file"
  for i in "${!J_NAME[@]}"; do
    { printf '%s' "${J_NAME[$i]}"; job_args "$i" | tail -n +3 | while IFS= read -r word; do
        printf '\t%s' "$word"; done; printf '\n'; } >> "$list"
  done
  "$PY" -c 'import sys; from qprune import cli; sys.exit(cli.check_jobs_main(sys.argv[1:]))' \
    "$list"
  status=$?
  rm -f "$list"
  case $status in
    0) ;;
    2) echo "launch.sh: error: bad job(s) above; nothing printed (--no-check skips this check)" >&2
       exit 2 ;;
    *) die "could not check the jobs with $PY (exit $status; set QPRUNE_PYTHON to an interpreter with qprune installed, or pass --no-check)" ;;
  esac
}

if [[ "$SCHEDULER" == slurm ]]; then  # the batch as one SLURM job array: tools/slurm_batch.py
  [[ $DRY_RUN -eq 0 || $CHECK -eq 0 ]] || check_jobs
  [[ $DRY_RUN -eq 1 ]] || mkdir -p "$OUT/logs" || die "cannot create $OUT/logs"
  JOBS_LIST="$(mktemp "${TMPDIR:-/tmp}/qprune-slurm.XXXXXX")" || die "cannot create a temporary file"
  for i in "${!J_NAME[@]}"; do
    { printf '%s' "${J_NAME[$i]}"; job_args "$i" | tail -n +3 | while IFS= read -r word; do
        printf '\t%s' "$word"; done; printf '\n'; } >> "$JOBS_LIST"
  done
  [[ $DRY_RUN -eq 1 ]] || {
    echo "# name	config	seed	overrides	workdir	log"
    for i in "${!J_NAME[@]}"; do
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${J_NAME[$i]}" "${J_CONFIG[$i]}" "${J_SEED[$i]}" \
        "$(echo ${J_OVR[$i]})" "$OUT/${J_NAME[$i]}" "$OUT/logs/${J_NAME[$i]}.log"
    done
  } > "$OUT/jobs.tsv"
  "$PY" "$SCRIPT_DIR/tools/slurm_batch.py" --out "$OUT" --jobs "$JOBS_LIST" --python "$PY" \
    --collect-python "$COLLECT_PY" --sbatch "$SBATCH_ARGS" ${PLOTS:+--plots} \
    $([[ $WAIT -eq 1 ]] && echo --wait) $([[ $DRY_RUN -eq 1 ]] && echo --dry-run)
  status=$?
  rm -f "$JOBS_LIST"
  exit $status
fi

if [[ $DRY_RUN -eq 1 ]]; then
  [[ $CHECK -eq 0 ]] || check_jobs
  if [[ ${#GPU_LIST[@]} -gt 0 ]]; then
    echo "# ${#J_NAME[@]} job(s), in parallel on GPUs ${GPU_LIST[*]} (one job per GPU)"
  else
    echo "# ${#J_NAME[@]} job(s), one after another (no GPU found)"
  fi
  echo "mkdir -p $(printf '%q' "$OUT/logs")"
  for i in "${!J_NAME[@]}"; do
    if [[ ${#GPU_LIST[@]} -gt 0 ]]; then
      printf 'CUDA_VISIBLE_DEVICES=%s ' "${GPU_LIST[$((i % ${#GPU_LIST[@]}))]}"
    fi
    echo "$(job_command "$i") >> $(printf '%q' "$OUT/logs/${J_NAME[$i]}.log") 2>&1"
  done
  echo "$COLLECT_PY $(printf '%q %q' "$SCRIPT_DIR/qprune/report/collect.py" "$OUT")${PLOTS:+ $PLOTS}"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Run.

mkdir -p "$OUT/logs" || die "cannot create $OUT/logs"
LOCK="$OUT/.launch.lock"
take_lock() {  # one launch per <out>: a second one would truncate and misreport the first's jobs
  local owner pid host since me="${HOSTNAME:-$(uname -n)}"
  if ! mkdir "$LOCK" 2>/dev/null; then
    owner="$(cat "$LOCK/owner" 2>/dev/null)"
    read -r pid host since <<< "$owner"
    if [[ -z "$pid" ]]; then
      die "$OUT is locked by another launch.sh ($LOCK has no owner yet); if none runs, remove $LOCK"
    fi
    if [[ "$host" != "$me" ]] || kill -0 "$pid" 2>/dev/null; then
      die "$OUT is in use by launch.sh pid $pid on $host since $since: wait for it to end, or use another --out"
    fi
    rm -rf "$LOCK"  # its launch ended without releasing it (killed): stale
    mkdir "$LOCK" 2>/dev/null || die "cannot lock $OUT ($LOCK)"
  fi
  echo "$$ $me $(date '+%F_%T')" > "$LOCK/owner"
  trap 'rm -rf "$LOCK"' EXIT
}
take_lock
{
  echo "# name	config	seed	overrides	workdir	log"
  for i in "${!J_NAME[@]}"; do
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${J_NAME[$i]}" "${J_CONFIG[$i]}" "${J_SEED[$i]}" \
      "${J_OVR[$i]//$'\n'/ }" "$OUT/${J_NAME[$i]}" "$OUT/logs/${J_NAME[$i]}.log"
  done
} > "$OUT/jobs.tsv"

INTERRUPTED=""
on_signal() {  # Ctrl-C / SIGTERM: the running job(s) stop at their safe point; no other starts
  local f
  INTERRUPTED="$1"
  for f in "$OUT"/logs/*.pid; do
    [[ -f "$f" ]] && kill -TERM "$(cat "$f")" 2>/dev/null
  done
}
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM

run_job() {  # index, gpu ('' = none); appends to logs/<name>.log, exit status in logs/<name>.rc
  local i="$1" gpu="$2" name="${J_NAME[$1]}" args rc pid
  local log="$OUT/logs/$name.log"
  mapfile -t args < <(job_args "$i")
  rm -f "$OUT/logs/$name.rc"
  echo "# $(date '+%F %T') ${gpu:+CUDA_VISIBLE_DEVICES=$gpu }$(job_command "$i")" >> "$log"
  # In the background, so that a signal to launch.sh is handled at once (on_signal passes it on).
  if [[ -n "$gpu" ]]; then
    CUDA_VISIBLE_DEVICES="$gpu" "$PY" "${args[@]}" >> "$log" 2>&1 &
  else
    "$PY" "${args[@]}" >> "$log" 2>&1 &
  fi
  pid=$!
  echo "$pid" > "$OUT/logs/$name.pid"
  while :; do
    wait "$pid"; rc=$?
    kill -0 "$pid" 2>/dev/null || break  # (a trapped signal ends `wait` early)
  done
  rm -f "$OUT/logs/$name.pid"
  echo "$rc" > "$OUT/logs/$name.rc"
  return $rc
}

report_done() {  # index
  local name="${J_NAME[$1]}" rc
  rc="$(cat "$OUT/logs/$name.rc" 2>/dev/null || echo '?')"
  if [[ "$rc" == "0" ]]; then
    echo "[launch] done   $name"
  elif [[ "$rc" == 130 || "$rc" == 143 ]]; then
    echo "[launch] STOPPED $name (exit $rc; rerun to resume it from its checkpoint)"
  else
    echo "[launch] FAILED $name (exit $rc; log $OUT/logs/$name.log)"
  fi
}

START=$SECONDS
if [[ ${#GPU_LIST[@]} -eq 0 ]]; then
  echo "[launch] ${#J_NAME[@]} job(s) one after another (no GPU found); logs in $OUT/logs"
  for i in "${!J_NAME[@]}"; do
    [[ -z "$INTERRUPTED" ]] || break
    echo "[launch] start  ${J_NAME[$i]}"
    run_job "$i" ""
    report_done "$i"
  done
else
  echo "[launch] ${#J_NAME[@]} job(s) on GPUs ${GPU_LIST[*]}, one job per GPU; logs in $OUT/logs"
  declare -A SLOT_PID=() SLOT_JOB=()
  next=0
  while [[ ( $next -lt ${#J_NAME[@]} && -z "$INTERRUPTED" ) || ${#SLOT_PID[@]} -gt 0 ]]; do
    for gpu in "${GPU_LIST[@]}"; do  # reap finished jobs, fill free GPUs
      if [[ -n "${SLOT_PID[$gpu]:-}" ]] && ! kill -0 "${SLOT_PID[$gpu]}" 2>/dev/null; then
        wait "${SLOT_PID[$gpu]}" 2>/dev/null
        report_done "${SLOT_JOB[$gpu]}"
        unset "SLOT_PID[$gpu]" "SLOT_JOB[$gpu]"
      fi
      if [[ -z "${SLOT_PID[$gpu]:-}" && $next -lt ${#J_NAME[@]} && -z "$INTERRUPTED" ]]; then
        echo "[launch] start  ${J_NAME[$next]} on GPU $gpu"
        run_job "$next" "$gpu" &
        SLOT_PID[$gpu]=$!; SLOT_JOB[$gpu]=$next
        next=$((next + 1))
      fi
    done
    [[ ${#SLOT_PID[@]} -eq 0 ]] || wait -n 2>/dev/null || sleep 1
  done
fi

if [[ -n "$INTERRUPTED" ]]; then
  echo "launch.sh: interrupted: $INTERRUPTED: stopped the batch, no further job started; rerun the same command to resume" >&2
  [[ "$INTERRUPTED" == SIGTERM ]] && exit 143
  exit 130
fi
echo "[launch] all jobs ended after $((SECONDS - START)) s; collecting"
"$COLLECT_PY" "$SCRIPT_DIR/qprune/report/collect.py" "$OUT" $PLOTS \
  || echo "launch.sh: warning: collecting the results failed" >&2

FAILED=()
for name in "${J_NAME[@]}"; do
  [[ "$(cat "$OUT/logs/$name.rc" 2>/dev/null)" == "0" ]] || FAILED+=("$name")
done
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "launch.sh: error: ${#FAILED[@]} of ${#J_NAME[@]} job(s) failed: ${FAILED[*]} (logs in $OUT/logs)" >&2
  exit 1
fi
echo "[launch] all ${#J_NAME[@]} job(s) ok; summary: $OUT/summary.md"
