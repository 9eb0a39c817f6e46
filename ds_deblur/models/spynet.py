"""SpyNet optical flow (Ranjan & Black, "Optical Flow Estimation using a Spatial Pyramid Network").

Coarse-to-fine over a 6-level pyramid; each level refines the upsampled flow with a small conv net. Layer and buffer
names match the released ``spynet_sintel_final`` weights (``basic_module.{level}.basic_module.{0,2,4,6,8}``) and
VRT's embedded copy (which adds the ``mean``/``std`` buffers).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ds_deblur.errors import WeightsNotFoundError
from ds_deblur.models.deform_conv import flow_warp

NUM_LEVELS = 6


def check_size(h: int, w: int) -> None:
    """The coarsest pyramid level of a frame padded to a multiple of 32 must still halve: H, W > 32."""
    if min(h, w) <= 32:
        raise ValueError(f"SpyNet needs frames larger than 32x32 (6-level pyramid), got H={h}, W={w}")


class _BasicModule(nn.Module):
    """One pyramid level: (reference, warped support, flow) -> flow residual."""

    def __init__(self) -> None:
        super().__init__()
        chans = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=7, stride=1, padding=3), nn.ReLU()]
        self.basic_module = nn.Sequential(*layers[:-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Flow from ``ref`` to ``supp``: ``flow_warp(supp, flow)`` aligns ``supp`` to ``ref``.

    ``forward`` returns one flow (N, 2, H / s, W / s) per entry of ``return_levels`` (level 5 is full resolution,
    level 5 - k is 1 / 2**k), finest first. ``load_path``: optional local weights file (official ``params`` key or a
    plain state dict); nothing is ever downloaded.
    """

    def __init__(self, load_path: str | os.PathLike | None = None, return_levels: Sequence[int] = (5,)) -> None:
        super().__init__()
        self.return_levels = tuple(return_levels)
        self.basic_module = nn.ModuleList([_BasicModule() for _ in range(NUM_LEVELS)])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        if load_path:
            load_spynet_weights(self, load_path)

    def forward(self, ref: Tensor, supp: Tensor) -> list[Tensor]:
        if ref.shape != supp.shape or ref.dim() != 4 or ref.shape[1] != 3:
            raise ValueError(f"SpyNet expects two RGB batches of equal shape (N, 3, H, W), got "
                             f"{tuple(ref.shape)} and {tuple(supp.shape)}")
        h, w = ref.shape[-2:]
        check_size(h, w)
        # The pyramid needs sizes divisible by 2**5: run at the next multiple of 32, rescale the flows back.
        h32, w32 = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        if (h32, w32) != (h, w):
            ref = F.interpolate(ref, size=(h32, w32), mode="bilinear", align_corners=False)
            supp = F.interpolate(supp, size=(h32, w32), mode="bilinear", align_corners=False)
        return self._pyramid_flows(ref, supp, (h, w))

    def _pyramid_flows(self, ref: Tensor, supp: Tensor, out_hw: tuple[int, int]) -> list[Tensor]:
        h32, w32 = ref.shape[-2:]
        # The buffers stay fp32 under DeepSpeed's fp16/bf16 (it casts parameters only): compute in the input's dtype.
        mean, std = self.mean.to(ref.dtype), self.std.to(ref.dtype)
        refs, supps = [(ref - mean) / std], [(supp - mean) / std]
        for _ in range(NUM_LEVELS - 1):
            refs.insert(0, F.avg_pool2d(refs[0], kernel_size=2, stride=2, count_include_pad=False))
            supps.insert(0, F.avg_pool2d(supps[0], kernel_size=2, stride=2, count_include_pad=False))

        coarse = refs[0]
        flow = coarse.new_zeros(coarse.shape[0], 2, coarse.shape[2] // 2, coarse.shape[3] // 2)
        flows: list[Tensor] = []
        for level, (r, s) in enumerate(zip(refs, supps)):
            up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            if up.shape[-2:] != r.shape[-2:]:  # odd sizes: one pixel short, repeat the last row/column
                up = F.pad(up, [0, r.shape[3] - up.shape[3], 0, r.shape[2] - up.shape[2]], mode="replicate")
            warped = flow_warp(s, up, "bilinear", padding_mode="border")
            flow = self.basic_module[level](torch.cat((r, warped, up), dim=1)) + up
            if level in self.return_levels:
                flows.insert(0, _resize_flow(flow, out_hw, (h32, w32), 2 ** (NUM_LEVELS - 1 - level)))
        return flows


def _resize_flow(flow: Tensor, out_hw: tuple[int, int], work_hw: tuple[int, int], scale: int) -> Tensor:
    h, w = out_hw[0] // scale, out_hw[1] // scale
    out = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
    gain = out.new_tensor([w / (work_hw[1] // scale), h / (work_hw[0] // scale)]).view(1, 2, 1, 1)
    return out * gain


def load_spynet_weights(spynet: SpyNet, path: str | os.PathLike) -> None:
    """Load SpyNet weights from a local file (``{'params': state_dict}`` as released, or a plain state dict).

    Every ``basic_module`` weight must be present; ``mean``/``std`` are optional (the release omits them).
    """
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"SpyNet weights not found: {path} (give a local spynet_sintel_final file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("params", state)
    try:
        result = spynet.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"SpyNet weights {path} do not fit: {err}") from err
    missing = [k for k in result.missing_keys if k not in ("mean", "std")]
    if missing or result.unexpected_keys:
        raise ValueError(f"SpyNet weights {path} do not match: missing keys {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected keys {result.unexpected_keys[:8]}")
