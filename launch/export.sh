#!/usr/bin/env bash
# Export a run's newest checkpoint: full single file (last.pth) and fp32 weights (model.safetensors).
# Usage: launch/export.sh [RUN_DIR (default outputs)] [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh
RUN=${1:-outputs}; TAG=${2:-}
ds-deblur convert "$RUN/ckpts" ${TAG:+--tag "$TAG"} --out "$RUN/export/last.pth"
ds-deblur convert "$RUN/ckpts" ${TAG:+--tag "$TAG"} --weights-only --out "$RUN/export/model.safetensors"
ds-deblur inspect "$RUN/export/last.pth"
