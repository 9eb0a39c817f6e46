#!/usr/bin/env bash
# Several nodes with the deepspeed launcher (passwordless ssh from this node to every host in the hostfile,
# the same repository path and .venv on each, a directory shared by all nodes for LOG.SAVE_DIR).
# Hostfile lines: "node1 slots=4". Usage: HOSTFILE=hostfile launch/train_multinode.sh [CONFIG.yaml] [args...]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-ds_configs/vrt_spike_baseline.yaml}; shift || true
deepspeed --hostfile "${HOSTFILE:-hostfile}" --master_port "${MASTER_PORT:-29500}" ds_deblur/train.py \
    --config "$CONFIG" --deepspeed_config "${DS_CONFIG:-ds_configs/zero2_fp16.json}" "$@"
