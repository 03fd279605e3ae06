#!/usr/bin/env bash
# Cloud TPU VM pod slice: run the same command on every worker.
#   launch/tpu_vm.sh TPU_NAME ZONE configs/cifar10_pgd_at.py gs://bucket/runs/pgd_at [overrides...]
# WORKDIR must be reachable by all workers (e.g. a GCS path).
# Each worker runs its own $PYTHON if set there, else `python` on its PATH.
set -euo pipefail
tpu=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
zone=${2:?}
config=${3:?}
workdir=${4:?}
shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/jaxrobust && JAXROBUST_DISTRIBUTED=1 \${PYTHON:-python} -m jaxrobust.train --config $config --workdir $workdir $*"
