#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): copy this checkout to every worker,
# install it, and run the same training command on all workers at once.
#
#   launch/tpu_vm.sh [--dry-run] [--accelerator TYPE] TPU_NAME ZONE CONFIG WORKDIR [overrides...]
#   launch/tpu_vm.sh --dry-run --accelerator v4-32 my-tpu us-central2-b \
#       configs/cifar10_pgd_at.py gs://bucket/runs/pgd_at
#
# WORKDIR must be reachable by all workers (e.g. a GCS path). On each worker
# jax.distributed.initialize() (JAXROBUST_DISTRIBUTED=1) finds the other
# workers by itself; every worker runs its own $PYTHON if set there, else
# `python3`. --dry-run prints the commands (and, with --accelerator, the
# slice's worker and chip counts) without running anything. TPU VMs announce
# maintenance through JAX's preemption sync point: the trainer then saves at a
# step all workers agree on and exits with status 75; rerun this script to
# resume from WORKDIR.
set -euo pipefail

usage="usage: launch/tpu_vm.sh [--dry-run] [--accelerator TYPE] TPU_NAME ZONE CONFIG WORKDIR [overrides...]"
dry_run=0
accelerator=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --accelerator) accelerator=${2:?$usage}; shift 2 ;;
    --accelerator=*) accelerator=${1#*=}; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) break ;;
  esac
done
tpu=${1:?$usage}
zone=${2:?$usage}
config=${3:?$usage}
workdir=${4:?$usage}
shift 4

# "hosts chips devices" of a slice type: v2/v3/v4/v5p-N count TensorCores
# (8 per host: 4 chips x 2 cores); a JAX device is a core on v2/v3 and a chip
# on v4/v5p (megacore). v5litepod/v6e-N count chips, one device each (up to 8
# on one host, 4 per host beyond).
slice_shape() {
  local kind=${1%-*} n=${1##*-}
  [[ $n =~ ^[0-9]+$ ]] || { echo "unknown accelerator type $1" >&2; return 2; }
  case "$kind" in
    v2|v3) echo "$(( (n + 7) / 8 )) $(( n / 2 )) $n" ;;
    v4|v5p) echo "$(( (n + 7) / 8 )) $(( n / 2 )) $(( n / 2 ))" ;;
    v5litepod|v5e|v6e) if (( n <= 8 )); then echo "1 $n $n"; else echo "$(( n / 4 )) $n $n"; fi ;;
    *) echo "unknown accelerator type $1 (v2-N, v3-N, v4-N, v5p-N, v5litepod-N, v6e-N)" >&2
       return 2 ;;
  esac
}

quoted_overrides=""
for o in "$@"; do quoted_overrides+=" $(printf '%q' "$o")"; done
remote_dir='~/jaxrobust'
repo=$(cd "$(dirname "$0")/.." && pwd)
ssh_all=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command)
cmds=(
  "gcloud compute tpus tpu-vm scp --recurse --zone $zone --worker=all $repo $tpu:$remote_dir"
  "${ssh_all[*]} 'cd $remote_dir && \${PYTHON:-python3} -m pip install -q -e \".[tpu]\"'"
  "${ssh_all[*]} 'cd $remote_dir && JAXROBUST_DISTRIBUTED=1 \${PYTHON:-python3} -m jaxrobust.train --config $config --workdir $workdir$quoted_overrides'"
)

if [[ -n $accelerator ]]; then
  shape=$(slice_shape "$accelerator")
  read -r hosts chips devices <<< "$shape"
  echo "# $accelerator: $hosts worker(s), $chips chip(s), $devices JAX device(s); each command runs on every worker"
  echo "# jax.process_count() == $hosts, jax.device_count() == $devices: config.train.batch_size must be a multiple of $devices"
fi
for c in "${cmds[@]}"; do
  if (( dry_run )); then
    echo "$c"
  else
    echo "+ $c" >&2
    bash -c "$c"
  fi
done
