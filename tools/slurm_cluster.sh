#!/usr/bin/env bash
# tools/slurm_cluster.sh: a one-node SLURM cluster on this machine, for the tests and CI.
#
# Usage (as root):
#   tools/slurm_cluster.sh start    # install slurm-wlm + munge if missing (apt-get), start munged,
#                                   # slurmctld, slurmd; wait until the node is idle. Idempotent:
#                                   # a running cluster is reused (and not stopped by `stop`).
#   tools/slurm_cluster.sh stop     # stop the daemons THIS script started (by their pids)
#   tools/slurm_cluster.sh status   # exit 0 when the cluster answers
#
# The node is this host (hostname -s) with all its CPUs, oversubscribed (several 1-CPU tasks
# and the test itself share the cores), in partition `debug`; no cgroups and no systemd are
# needed (proctrack/linuxproc, task/none). State lives under /var/spool/slurmctld,
# /var/spool/slurmd and /var/log/slurm; the pids of the daemons it started in
# ${QPRUNE_SLURM_STATE:-/var/run/qprune-slurm}/*.pid.
# Exit status: 0 ok, 2 usage, 3 cannot install (not root, no apt-get, no package source),
# 4 a daemon did not come up (its log is printed).
set -u

STATE="${QPRUNE_SLURM_STATE:-/var/run/qprune-slurm}"
LOG=/var/log/slurm

say() { echo "slurm_cluster: $*" >&2; }

answers() { command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h -o %T 2>/dev/null | grep -q .; }

node_ready() {  # the node is up (idle, mixed or allocated)
  timeout 10 sinfo -h -N -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

install() {
  if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
      && command -v munged >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1; then
    return 0
  fi
  [[ "$(id -u)" == 0 ]] || { say "slurm-wlm/munge missing and not root: cannot install them"; exit 3; }
  command -v apt-get >/dev/null 2>&1 || { say "slurm-wlm/munge missing and no apt-get"; exit 3; }
  say "installing slurm-wlm and munge (apt-get; about a minute)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get update -qq >"$STATE/apt.log" 2>&1 \
      || ! apt-get install -y -qq slurm-wlm munge >>"$STATE/apt.log" 2>&1; then
    tail -n 5 "$STATE/apt.log" >&2
    say "apt-get could not install slurm-wlm and munge (log: $STATE/apt.log)"
    exit 3
  fi
}

write_config() {
  local host cpus mem
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)"
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG"
  cat > /etc/slurm/slurm.conf <<EOF
# Written by qprune's tools/slurm_cluster.sh: a one-node cluster for tests.
ClusterName=qprune
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobRequeue=1
KillWait=30
MinJobAge=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start_munge() {
  if [[ -S /run/munge/munge.socket.2 ]] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0  # running (ours or not)
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  # 9>&-: the daemons must not inherit the start lock's descriptor, or they hold the lock for
  # as long as they run and every later start waits on it forever.
  su -s /bin/sh munge -c /usr/sbin/munged 9>&- || { say "munged did not start"; exit 4; }
  cp /run/munge/munged.pid "$STATE/munged.pid" 2>/dev/null  # (munged cannot write into $STATE)
  echo munged >> "$STATE/started"
}

start_daemon() {  # name
  local name="$1"
  if [[ -f "$STATE/$name.pid" ]] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
    return 0
  fi
  "/usr/sbin/$name" 9>&- || { tail -n 20 "$LOG/$name.log" >&2; say "$name did not start"; exit 4; }
  echo "$name" >> "$STATE/started"
}

start() {
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"  # one start at a time (parallel test workers)
  flock 9
  if answers && node_ready; then
    say "a running cluster answers: reusing it"
    return 0
  fi
  install
  [[ "$(id -u)" == 0 ]] || { say "starting the daemons needs root"; exit 3; }
  if [[ ! -f /etc/slurm/slurm.conf ]] || grep -q "^# Written by qprune" /etc/slurm/slurm.conf; then
    write_config  # never over a slurm.conf someone else wrote
  fi
  start_munge
  start_daemon slurmctld
  start_daemon slurmd
  local i
  for ((i = 0; i < 60; i++)); do
    if node_ready; then
      scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
      say "cluster up: $(sinfo -h -o '%P %D %T %C' | head -n 1)"
      return 0
    fi
    # a node left down/drained by an earlier run comes back
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2
  say "the node did not become idle within 60 s"
  exit 4
}

stop() {
  [[ -f "$STATE/started" ]] || { say "no daemons of this script to stop"; return 0; }
  local name pid i
  for name in slurmd slurmctld munged; do
    grep -qx "$name" "$STATE/started" || continue
    [[ -f "$STATE/$name.pid" ]] || continue
    pid="$(cat "$STATE/$name.pid")"
    kill "$pid" 2>/dev/null || continue
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    rm -f "$STATE/$name.pid"
  done
  rm -f "$STATE/started"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers && node_ready ;;
  *) sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//; /^set -u/d' >&2; exit 2 ;;
esac
