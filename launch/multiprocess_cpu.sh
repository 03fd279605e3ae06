#!/usr/bin/env bash
# Multi-host code path on one machine: N local CPU processes, each with D fake
# devices, coordinated through jax.distributed (explicit address).
#   launch/multiprocess_cpu.sh 2 4 configs/cifar10_pgd_at.py:smoke runs/mp
# The interpreter: $PYTHON if set (e.g. a virtualenv's python), else `python` on PATH.
set -euo pipefail
n=${1:?usage: launch/multiprocess_cpu.sh NUM_PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [overrides...]}
d=${2:?}
config=${3:?}
workdir=${4:?}
shift 4
port=$((20000 + RANDOM % 20000))
pids=()
for ((i = 0; i < n; i++)); do
  JAXROBUST_DISTRIBUTED=1 JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" \
  JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=$d" \
    "${PYTHON:-python}" -m jaxrobust.train --config "$config" --workdir "$workdir" "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
