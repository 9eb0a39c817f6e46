#!/usr/bin/env bash
# One node, 4 GPUs, ZeRO-2 fp16: the original project's model on GoPro-spike.
# Usage: launch/train_4gpu.sh [CONFIG.yaml] [extra train.py arguments, e.g. --resume auto]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-ds_configs/vrt_spike_baseline.yaml}; shift || true
deepspeed --num_gpus 4 --master_port "${MASTER_PORT:-29500}" ds_deblur/train.py \
    --config "$CONFIG" --deepspeed_config "${DS_CONFIG:-ds_configs/zero2_fp16.json}" "$@"
