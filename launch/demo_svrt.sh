#!/usr/bin/env bash
# S-VRT's fusion family end to end on CPU: synthetic spike data -> DeepSpeed training of the option file
# ds_configs/svrt_middle_gated_cpu.json (a small VRT whose stage 1 and 7 outputs take in 16 TFP images per frame
# through S-VRT's gated operator) -> validation -> checkpoints -> last.pth/best.pth -> deblurred validation frames.
# As the main demo, the model starts as the identity and SpyNet (no pretrained weights) stays as initialised.
# Environment: DATA (default data/synth), OUT (default outputs/demo_svrt); extra arguments go to train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh
DATA=${DATA:-data/synth}
OUT=${OUT:-outputs/demo_svrt}
synth_data "$DATA"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per rank: more threads only contend
export CUDA_VISIBLE_DEVICES=""  # a CPU demo, on a GPU machine too
echo "[demo_svrt] training ds_configs/svrt_middle_gated_cpu.json on 2 CPU ranks; run directory $OUT"
deepspeed --num_gpus 2 --master_port "${MASTER_PORT:-29518}" ds_deblur/train.py \
    --config ds_configs/svrt_middle_gated_cpu.json --deepspeed_config ds_configs/cpu_fp32.json \
    --set DATA.ROOT="$DATA" --set LOG.SAVE_DIR="$OUT" \
    --set MODEL.IDENTITY_INIT=true --set 'TRAIN.FREEZE=[spynet.]' "$@"
ds-deblur inspect "$OUT/ckpts/best.pth"
echo "[demo_svrt] deblurring the validation sequences with best.pth into $OUT/infer"
ds-deblur infer --ckpt "$OUT/ckpts/best.pth" --root "$DATA" --split val --output "$OUT/infer"
