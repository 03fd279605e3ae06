#!/usr/bin/env bash
# Single host, all local accelerators (or CPU):
#   launch/local.sh configs/cifar10_pgd_at.py runs/pgd_at [--config.train.num_epochs=100 ...]
# The interpreter: $PYTHON if set (e.g. a virtualenv's python), else `python` on PATH.
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
exec "${PYTHON:-python}" -m jaxrobust.train --config "$config" --workdir "$workdir" "$@"
