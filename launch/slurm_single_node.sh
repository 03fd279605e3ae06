#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (controller and compute node on
# localhost), to run launch/slurm.sbatch for real without a cluster: the
# launcher's tests use it, and so can a developer.
#
#   launch/slurm_single_node.sh install      # apt: slurm-wlm + munge (root, Debian/Ubuntu)
#   launch/slurm_single_node.sh start DIR    # config, state and logs under DIR
#   launch/slurm_single_node.sh stop DIR
#
# `start` writes DIR/slurm.conf (one node with this machine's CPUs, one
# partition, requeue allowed; job credentials expire after 10 s, so a requeued
# job starts again after ~10 s instead of Slurm's default 120 s), starts
# munged, slurmctld and slurmd as the
# current user, and waits until the node is idle. It prints the line to source
# for the client commands:   export SLURM_CONF=DIR/slurm.conf
# Daemons run without systemd; `stop` kills them. Needs root for munged's key
# and for slurmd (it launches tasks as the submitting user).
set -euo pipefail

cmd=${1:?usage: launch/slurm_single_node.sh install|start DIR|stop DIR}

case "$cmd" in
  install)
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
      echo "slurm: already installed ($(slurmctld -V))"
      exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    echo "slurm: installed $(slurmctld -V)"
    ;;
  start)
    dir=$(mkdir -p "${2:?usage: start DIR}" && cd "$2" && pwd)
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
    mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
    # munge: a fresh key and socket under DIR, so a system munged is not touched.
    dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
    chmod 700 "$dir/munge"
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
      --seed-file="$dir/munge/munge.seed"
    user=$(id -un)
    cat > "$dir/slurm.conf" <<EOF
ClusterName=jaxrobust-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=$(( 6817 + RANDOM % 1000 ))
SlurmdPort=$(( 7817 + RANDOM % 1000 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
MessageTimeout=30
KillWait=30
InactiveLimit=0
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 60); do
      if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
      fi
      sleep 1
    done
    echo "slurm: the node did not come up within 60 s; see $dir/log" >&2
    exit 1
    ;;
  stop)
    dir=${2:?usage: stop DIR}
    for f in slurmd.pid slurmctld.pid munge/munged.pid; do
      if [[ -f $dir/$f ]]; then
        kill "$(cat "$dir/$f")" 2>/dev/null || true
      fi
    done
    ;;
  *)
    echo "usage: launch/slurm_single_node.sh install|start DIR|stop DIR" >&2
    exit 2
    ;;
esac
