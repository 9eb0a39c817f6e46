#!/usr/bin/env bash
# The main job, end to end: synthetic spike data -> DeepSpeed training of the tiny preset -> validation ->
# checkpoints -> last.pth/best.pth -> TensorBoard logs -> deblurred validation frames. Sets up .venv the first time.
# No GPU: 2 CPU ranks (gloo) in fp32. GPUs: all of them, fp16 with dynamic loss scaling.
# Environment: DATA (default data/synth), OUT (default outputs/demo); extra arguments go to train.py,
# e.g. launch/demo.sh --set TRAIN.TOTAL_STEPS=100
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh
DATA=${DATA:-data/synth}
OUT=${OUT:-outputs/demo}
if [ ! -f "$DATA/meta.yaml" ]; then
    echo "[demo] generating synthetic spike-camera data in $DATA"
    ds-deblur synth --out "$DATA"
fi
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -gt 0 ]; then
    RANKS=$NGPU; DS_CONFIG=ds_configs/zero2_fp16.json
else
    RANKS=2; DS_CONFIG=ds_configs/cpu_fp32.json
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per rank: more threads only contend
fi
echo "[demo] training on $RANKS rank(s) with $DS_CONFIG; run directory $OUT"
deepspeed --num_gpus "$RANKS" --master_port "${MASTER_PORT:-29517}" ds_deblur/train.py \
    --config ds_configs/tiny_synth.yaml --deepspeed_config "$DS_CONFIG" \
    --set DATA.ROOT="$DATA" --set LOG.SAVE_DIR="$OUT" "$@"
ds-deblur inspect "$OUT/ckpts/best.pth"
echo "[demo] deblurring the validation sequences with best.pth into $OUT/infer"
ds-deblur infer --ckpt "$OUT/ckpts/best.pth" --root "$DATA" --split val --output "$OUT/infer"
echo "[demo] TensorBoard: tensorboard --logdir $OUT/tb"
