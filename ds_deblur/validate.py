"""Distributed validation: every rank restores its share of the validation clips, the sums are all-reduced, so
every rank gets the same PSNR (RGB, Y), SSIM (Y) and therefore the same decision about "best"."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ds_deblur.metrics import MetricSums
from ds_deblur.run_log import visual_strip
from ds_deblur.tiling import restore


def model_dtype(engine: Any) -> torch.dtype:
    if engine.fp16_enabled():
        return torch.float16
    if engine.bfloat16_enabled():
        return torch.bfloat16
    return torch.float32


@torch.no_grad()
def validate(engine: Any, loader: Any, multiple: int, tile: Optional[int], overlap: int,
             want_visual: bool) -> tuple[dict, Optional[np.ndarray]]:
    """Returns ({'psnr_rgb','psnr_y','ssim_y','frames'}, a blur|restored|sharp strip of the first clip or None)."""
    device, dtype = engine.device, model_dtype(engine)
    was_training = engine.module.training
    engine.eval()
    sums = MetricSums(device=torch.device("cpu"))
    visual = None

    def forward(blur: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        return engine(blur.to(device, dtype), spike.to(device, dtype))

    for batch in loader:
        # Padding clips only even out the ranks' loop lengths (ZeRO-3 gathers need every rank): not scored.
        restored = restore(forward, batch["blur"], batch["spike_vox"], multiple, tile, overlap).cpu()
        keep = ~torch.as_tensor(batch["meta"]["pad"], dtype=torch.bool)
        if keep.any():
            sums.update(restored[keep].flatten(0, 1), batch["sharp"][keep].flatten(0, 1))
        if want_visual and visual is None and keep[0]:
            mid = restored.shape[1] // 2
            visual = visual_strip(batch["blur"][0, mid], restored[0, mid], batch["sharp"][0, mid])
    sums.all_reduce()
    metrics = {**sums.means(), "frames": int(sums.count)}
    engine.train(was_training)
    return metrics, visual


def input_metrics(loader: Any) -> dict:
    """The same metrics for the blurry input itself: the baseline a useful model must beat."""
    sums = MetricSums(device=torch.device("cpu"))
    for batch in loader:
        keep = ~torch.as_tensor(batch["meta"]["pad"], dtype=torch.bool)
        if keep.any():
            sums.update(batch["blur"][keep].flatten(0, 1), batch["sharp"][keep].flatten(0, 1))
    sums.all_reduce()
    return sums.means()
