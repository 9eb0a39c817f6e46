"""Distributed validation: every rank restores its share of the validation clips, the sums are all-reduced, so
every rank gets the same PSNR (RGB, Y), SSIM (Y) and therefore the same decision about "best"."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ds_deblur.inference.tiling import restore
from ds_deblur.metrics import MetricSums
from ds_deblur.run_log import visual_strip


def scored_frames(batch: dict) -> torch.Tensor:
    """(B, T) mask of the frames metrics count: not in a padding clip (those only even out the ranks' loop
    lengths, which ZeRO-3 gathers need) and not already scored in an overlapping clip."""
    not_pad = ~torch.as_tensor(batch["meta"]["pad"], dtype=torch.bool)
    return batch["meta"]["scored"] & not_pad[:, None]


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

    def forward(blur: torch.Tensor, spike: torch.Tensor, flow_spike: Optional[torch.Tensor]) -> torch.Tensor:
        flow_spike = None if flow_spike is None else flow_spike.to(device, dtype)
        return engine(blur.to(device, dtype), spike.to(device, dtype), flow_spike)

    for batch in loader:
        restored = restore(forward, batch["blur"], batch["spike_vox"], multiple, tile, overlap,
                           batch.get("flow_spike")).cpu()
        keep = scored_frames(batch)
        if keep.any():
            sums.update(restored[keep], batch["sharp"][keep])
        if want_visual and visual is None and keep[0].any():
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
        keep = scored_frames(batch)
        if keep.any():
            sums.update(batch["blur"][keep], batch["sharp"][keep])
    sums.all_reduce()
    return sums.means()
