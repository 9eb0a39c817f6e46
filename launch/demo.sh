#!/usr/bin/env bash
# The main job, end to end: synthetic spike data -> DeepSpeed training of the tiny preset -> validation ->
# checkpoints -> last.pth/best.pth -> TensorBoard logs -> deblurred validation frames. Sets up .venv the first time.
# No GPU: 2 CPU ranks (gloo), fp32 (bf16 autocast forward where the CPU has bf16). GPUs: all of them, fp16 with
# dynamic loss scaling.
# Environment: DATA (default data/synth), OUT (default outputs/demo); extra arguments go to train.py,
# e.g. launch/demo.sh --set TRAIN.TOTAL_STEPS=100
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh
DATA=${DATA:-data/synth}
OUT=${OUT:-outputs/demo}
synth_data "$DATA"
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -gt 0 ]; then
    RANKS=$NGPU; ENGINE=(--deepspeed_config ds_configs/zero2_fp16.json); SAID=ds_configs/zero2_fp16.json
else
    # The built-in CPU engine config: fp32, with the forward under bf16 autocast on CPUs with bf16 instructions
    # (1.12x faster there at the same result; docs/training.md). The trainer's first [train] line says which.
    RANKS=2; ENGINE=(); SAID="the built-in CPU engine config"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per rank: more threads only contend
fi
echo "[demo] training on $RANKS rank(s) with $SAID; run directory $OUT"
deepspeed --num_gpus "$RANKS" --master_port "${MASTER_PORT:-29517}" ds_deblur/train.py \
    --config ds_configs/tiny_synth.yaml "${ENGINE[@]}" \
    --set DATA.ROOT="$DATA" --set LOG.SAVE_DIR="$OUT" "$@"
ds-deblur inspect "$OUT/ckpts/best.pth"
echo "[demo] deblurring the validation sequences with best.pth into $OUT/infer"
ds-deblur infer --ckpt "$OUT/ckpts/best.pth" --root "$DATA" --split val --output "$OUT/infer"
echo "[demo] TensorBoard: tensorboard --logdir $OUT/tb"
