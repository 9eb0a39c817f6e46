"""Spike branch: a 3-D convolutional pyramid over the spike clip, then temporal self attention at each scale.

The encoder treats a frame's spike input (voxel bins, TFP images or raw frames) as channels and (T, H, W) as a
3-D volume, so time keeps its length and every scale lines up frame by frame with the VRT encoder stages 1-4
(full, 1/2, 1/4, 1/8 resolution).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ds_deblur.models.fusion import TemporalSelfAttnBlock


class _Conv3d(nn.Conv3d):
    """Conv3d that, on CPU, runs as one 2-D conv over the frames (the temporal taps stacked as output channels) and
    a shifted sum over the taps. PyTorch sends a batch-1 Conv3d to its native kernel, which here is 3-7x slower in
    forward + backward than the 2-D (oneDNN) conv of the same arithmetic; and its bf16 Conv3d kernel returns
    non-finite weight gradients for some shapes (torch 2.13), so bf16/fp16 compute in fp32. GPUs use cuDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.stride[0] != 1 or self.dilation != (1, 1, 1) or self.groups != 1:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return frames_conv3d(x.float(), self.weight.float(), bias, self.stride[1:], self.padding).to(x.dtype)


def frames_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], spatial_stride: Sequence[int],
                  padding: Sequence[int]) -> torch.Tensor:
    """``F.conv3d`` with time stride 1, no dilation, one group, as 2-D convs: (B, C, T, H, W) -> (B, C', T', H', W')."""
    b, c, t, h, w = x.shape
    c_out, _, kt, kh, kw = weight.shape
    pt = padding[0]
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    taps = F.conv2d(frames, weight.permute(2, 0, 1, 3, 4).reshape(kt * c_out, c, kh, kw), None, tuple(spatial_stride),
                    tuple(padding[1:]))
    taps = F.pad(taps.view(b, t, kt, c_out, *taps.shape[-2:]), (0, 0) * 4 + (pt, pt))  # zero frames around time
    t_out = t + 2 * pt - kt + 1
    out = sum(taps[:, i:i + t_out, i] for i in range(kt))  # output frame j takes tap i from input frame j + i - pt
    if bias is not None:
        out = out + bias.view(1, 1, c_out, 1, 1)
    return out.transpose(1, 2)


def _conv3(c_in: int, c_out: int, spatial_stride: int = 1) -> nn.Conv3d:
    return _Conv3d(c_in, c_out, kernel_size=3, stride=(1, spatial_stride, spatial_stride), padding=1)


class ResidualBlock3D(nn.Module):
    """conv3 -> ReLU -> conv3, plus identity, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3(channels, channels)
        self.conv2 = _conv3(channels, channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.act(self.conv1(x))))


def _res_stack(channels: int, num_blocks: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock3D(channels) for _ in range(num_blocks)))


class SpikeEncoder3D(nn.Module):
    """Spike clip ``(B, T, C, H, W)`` (C voxel bins, TFP images or raw frames) -> features
    ``[(B, C_i, T, ceil(H/2^i), ceil(W/2^i)) for i in 0..3]``.

    Scale 0: conv3 C->C_0 + ReLU and ``num_res_blocks`` residual blocks. Each further scale: a stride-(1,2,2)
    conv3 C_{i-1}->C_i + ReLU, then ``num_res_blocks`` residual blocks. Time is never strided.
    """

    def __init__(self, in_bins: int, channels_per_scale: Sequence[int], num_res_blocks: int = 2) -> None:
        super().__init__()
        chans = list(channels_per_scale)
        self.in_bins = in_bins
        self.in_proj = _conv3(in_bins, chans[0])
        self.res0 = _res_stack(chans[0], num_res_blocks)
        self.downs = nn.ModuleList(_conv3(c_in, c_out, spatial_stride=2) for c_in, c_out in zip(chans, chans[1:]))
        self.residuals = nn.ModuleList(_res_stack(c, num_res_blocks) for c in chans[1:])
        self.act = nn.ReLU(inplace=True)

    def forward(self, spike_vox: torch.Tensor) -> list[torch.Tensor]:
        if spike_vox.dim() != 5 or spike_vox.shape[2] != self.in_bins:
            raise ValueError(f"spike_vox must be (B, T, C={self.in_bins}, H, W), got {tuple(spike_vox.shape)}; "
                             "the spike input's channels (DATA.K, or DATA.RAW_WINDOW_LENGTH with SPIKE_REPR "
                             "raw_window) must match the model's")
        x = self.res0(self.act(self.in_proj(spike_vox.transpose(1, 2))))
        feats = [x]
        for down, res in zip(self.downs, self.residuals):
            x = res(self.act(down(x)))
            feats.append(x)
        return feats


class SpikeTemporalSA(nn.Module):
    """One per-pixel temporal self-attention block per scale (pre-LayerNorm, MHA, GELU feed-forward), as
    ``blocks``."""

    def __init__(self, channels_per_scale: Sequence[int], heads: int = 4, mlp_ratio: float = 2.0,
                 chunk_pixels: int = 16384) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TemporalSelfAttnBlock(c, heads, mlp_ratio, chunk_pixels) for c in channels_per_scale)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} spike scales, got {len(feats)}")
        return [block(f) for block, f in zip(self.blocks, feats)]
