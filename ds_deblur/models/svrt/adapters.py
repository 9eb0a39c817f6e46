"""Where S-VRT's fusion operator sits: before the backbone (early), inside it (middle) or both (hybrid).

Parameter names are S-VRT's: ``fusion_adapter.operator.*``, ``fusion_adapter.spike_upsample.refine.*``, and for
hybrid ``fusion_adapter.early_adapter.*`` / ``fusion_adapter.middle_adapter.*``.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class SpikeUpsample(nn.Module):
    """Spike channels at a lower resolution than the RGB frames: bilinear up, then two refining convs."""

    def __init__(self, spike_chans: int) -> None:
        super().__init__()
        self.refine = nn.Sequential(nn.Conv2d(spike_chans, spike_chans, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(spike_chans, spike_chans, 3, padding=1))

    def forward(self, spike: Tensor, size: tuple[int, int]) -> Tensor:
        return self.refine(F.interpolate(spike, size=size, mode="bilinear", align_corners=False))


class EarlyAdapter(nn.Module):
    """``(rgb (B,T,3,H,W), spike (B,T,S,h,w)) -> (backbone frames, frames per exposure)``.

    ``collapsed``: the operator sees each frame's S spike channels at once and gives T frames. ``expanded``: each
    spike channel becomes a sub-frame paired with its frame's RGB, so the backbone restores T*S frames.
    """

    def __init__(self, operator: nn.Module, spike_chans: int, contract: str) -> None:
        super().__init__()
        self.operator = operator
        self.spike_upsample = SpikeUpsample(spike_chans)
        self.contract = contract

    def forward(self, rgb: Tensor, spike: Tensor) -> tuple[Tensor, int]:
        b, t, c, h, w = rgb.shape
        s = spike.shape[2]
        if spike.shape[-2:] != (h, w):
            spike = self.spike_upsample(spike.flatten(0, 1), (h, w)).unflatten(0, (b, t))
        if self.contract == "collapsed":
            return self.operator(rgb, spike), 1
        rgb = rgb.unsqueeze(2).expand(b, t, s, c, h, w).reshape(b, t * s, c, h, w)
        return self.operator(rgb, spike.reshape(b, t * s, 1, h, w)), s


class MiddleAdapter(nn.Module):
    """After each of ``inject_stages`` (1-7), the stage output (B,C,T,H,W) fused with the spike context
    (B,S,T,H,W): replaced by the operator's output, or that output added (mode ``residual``)."""

    def __init__(self, operator: nn.Module, inject_stages: Sequence[int], mode: str) -> None:
        super().__init__()
        self.operator = operator
        self.inject_stages = frozenset(inject_stages)
        self.mode = mode

    def forward(self, stage: int, x: Tensor, spike_ctx: Tensor) -> Tensor:
        if stage not in self.inject_stages:
            return x
        if (x.shape[0],) + tuple(x.shape[2:]) != (spike_ctx.shape[0],) + tuple(spike_ctx.shape[2:]):
            raise ValueError(f"middle fusion after stage {stage}: the stage output {tuple(x.shape)} and the spike "
                             f"input {tuple(spike_ctx.shape)} differ in frames or size (B,C,T,H,W); inject only "
                             f"into full-resolution stages (netG.fusion.inject_stages 1 or 7)")
        fused = self.operator(x.transpose(1, 2), spike_ctx.transpose(1, 2)).transpose(1, 2)
        return fused if self.mode == "replace" else x + fused


class HybridAdapter(nn.Module):
    """Early fusion (expanded to sub-frames) plus middle fusion of the stage outputs, each its own operator."""

    def __init__(self, early: EarlyAdapter, middle: MiddleAdapter) -> None:
        super().__init__()
        self.early_adapter = early
        self.middle_adapter = middle
